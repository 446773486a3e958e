"""Key/value bookkeeping of the static backend: per-node segments, slot allocation, shape buckets.

A segment is one tensor (layers, 2, kv_heads, tokens, head_dim) (index 0 of dim 1 = keys, 1 = values), so that a
node's cache is copied into or out of a slot with one kernel per direction whatever the number of layers.
"""

from __future__ import annotations

import bisect
import heapq

import torch

from ibtpo.rollout.tree import Node, Tree


class SegmentStore:
    """Per-node key/value segments of the trees being grown (the static backend's ``engine.KVStore``).

    budget_bytes > 0 bounds what is kept (as ``SamplingParams.kv_budget_bytes`` does for the eager store): a segment
    that would exceed it is not stored, and a later fork below it prefills its prefix instead.
    """

    def __init__(self, budget_bytes: int = 0):
        self._kv: dict[int, torch.Tensor] = {}
        self.budget = budget_bytes
        self.bytes = 0
        self.peak_bytes = 0
        self.refused = 0
        """Segments not kept because of the budget."""

    def has_room(self, nbytes: int = 0) -> bool:
        return not self.budget or self.bytes + nbytes <= self.budget

    def put(self, node: Node, seg: torch.Tensor) -> None:
        old = self._kv.pop(id(node), None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        size = seg.numel() * seg.element_size()
        if not self.has_room(size):
            self.refused += 1
            return
        self._kv[id(node)] = seg
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def length(self, node: Node) -> int:
        seg = self._kv.get(id(node))
        return 0 if seg is None else seg.shape[-2]

    def split(self, head: Node, tail: Node, at: int) -> None:
        """`head` was cut after `at` tokens; its segment is cut the same way (views, no copy)."""
        seg = self._kv.get(id(head))
        if seg is None:
            return
        self._kv[id(head)] = seg[..., :at, :]
        if seg.shape[-2] > at:
            self._kv[id(tail)] = seg[..., at:, :]

    def complete(self, node: Node, want: int, last: torch.Tensor) -> None:
        """Append `last` (one token's segment) to `node`'s segment when it holds `want` - 1 tokens."""
        seg = self._kv.get(id(node))
        if seg is not None and seg.shape[-2] == want - 1:
            self.put(node, torch.cat([seg, last], dim=-2))

    def prefix(self, tree: Tree, node: Node) -> list[torch.Tensor] | None:
        """Segments covering prompt + path up to `node` minus its last token, in order; None if a piece is missing."""
        pieces = [tree.root] + node.lineage()
        out = []
        for i, n in enumerate(pieces):
            want = len(tree.prompt_ids) if n is tree.root else len(n.token_ids)
            have = self.length(n)
            last = i == len(pieces) - 1
            if have != want and not (last and have == want - 1):
                return None
            seg = self._kv.get(id(n))
            if last and have == want:
                seg = seg[..., :want - 1, :]
            if seg is not None and seg.shape[-2]:
                out.append(seg)
        return out

    def clear(self) -> None:
        self._kv.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._kv)


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
