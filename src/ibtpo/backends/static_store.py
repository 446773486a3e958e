"""Key/value bookkeeping of the static backend: per-node segments, slot allocation, shape buckets.

A segment is one tensor (layers, 2, kv_heads, tokens, head_dim) (index 0 of dim 1 = keys, 1 = values), so that a
node's cache is copied into or out of a slot with one kernel per direction whatever the number of layers.
"""

from __future__ import annotations

import bisect
import heapq

import torch

from ibtpo.backends.node_store import NodeStore
from ibtpo.core.tree import Node, Tree


class SegmentStore(NodeStore[torch.Tensor]):
    """Per-node key/value segments of the trees being grown (the static backend's ``engine.KVStore``): each value is
    one (layers, 2, kv_heads, tokens, head_dim) tensor; budget and bookkeeping in ``node_store.NodeStore``."""

    def nbytes(self, value: torch.Tensor) -> int:
        return value.numel() * value.element_size()

    def tokens(self, value: torch.Tensor) -> int:
        return value.shape[-2]

    def cut(self, value: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        return value[..., start:stop, :]

    def join(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.cat([first, second], dim=-2)

    def prefix(self, tree: Tree, node: Node) -> list[torch.Tensor] | None:
        """Segments covering prompt + path up to `node` minus its last token, in order; None if a piece is missing."""
        segs = self.lineage(tree, node)
        if segs is None:
            return None
        total = len(tree.prompt_ids) + node.end - 1
        out, have = [], 0
        for seg in segs:
            take = min(seg.shape[-2], total - have)
            if take > 0:
                out.append(seg[..., :take, :])
                have += take
        return out


class SlotPool:
    """Free slot ids, lowest first (so that the live rows stay packed at the low slots a small batch bucket covers)."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = list(range(slots))
        heapq.heapify(self._free)
        self.owner: list[int] = [-1] * slots
        """Row id held by each slot (-1 = free)."""

    def take(self, row: int) -> int:
        s = heapq.heappop(self._free)
        self.owner[s] = row
        return s

    def give(self, slot: int) -> None:
        if self.owner[slot] < 0:
            raise ValueError(f"slot {slot} is already free")
        self.owner[slot] = -1
        heapq.heappush(self._free, slot)

    def move(self, src: int, dst: int) -> None:
        """The row in slot `src` moves to the free slot `dst`."""
        if self.owner[src] < 0 or self.owner[dst] >= 0:
            raise ValueError(f"cannot move slot {src} (owner {self.owner[src]}) "
                             f"to slot {dst} (owner {self.owner[dst]})")
        self.owner[dst], self.owner[src] = self.owner[src], -1
        self._free.remove(dst)
        self._free.append(src)
        heapq.heapify(self._free)

    @property
    def n_free(self) -> int:
        return len(self._free)

    def used(self) -> list[int]:
        return [s for s, r in enumerate(self.owner) if r >= 0]

    def high_water(self) -> int:
        """1 + the highest used slot (0 when none is used)."""
        used = self.used()
        return used[-1] + 1 if used else 0


def batch_buckets(slots: int) -> list[int]:
    """Batch sizes graphs are captured for: 1, 2, 4, 8, then x1.5 / x1.33 steps (12, 16, 24, 32, 48, ...), `slots`."""
    out, b = [1, 2, 4], 8
    while b < slots:
        out += [b, b * 3 // 2]
        b *= 2
    return sorted({x for x in out if x < slots} | {slots})


def bucket_at_least(buckets: list[int], n: int) -> int:
    """The smallest bucket >= n (the largest if none is)."""
    i = bisect.bisect_left(buckets, n)
    return buckets[min(i, len(buckets) - 1)]


def ctx_bucket(need: int, step: int, max_ctx: int) -> int:
    """Columns attention reads: `need` rounded up to a multiple of `step`, at most `max_ctx`."""
    return min(max_ctx, -(-max(need, 1) // step) * step)
