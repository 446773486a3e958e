"""Attention of packed rows path by path, with no tree mask: the ``blocks`` form of ``training.packed_forward``.

The dense tree mask (``packed_forward.dense_tree_mask``) makes attention cost R x W^2 on packed rows of width W: a
row holding several trees, or a tree with many sibling branches, pays for every masked pair, and the mask itself
(boolean, turned into a float mask of the same size by the CPU kernels) is W^2 per row and layer. Here attention runs
once per *path* instead: the queries and keys of a block are the packed positions of one path (prompt + its nodes,
in order), with a plain causal kernel (``is_causal``, no mask), so every path's attention is exactly what its
flattened row computes and nothing crosses a tree or a sibling branch. Each packed token takes its output from one
block, the path that placed it (``training.packed.segments``: the first path of a segment owns the prompt); the
queries of the other positions of a block (the shared prefix it repeats) are computed and dropped. Everything outside
attention (embeddings, projections, MLPs, norms, the LM head) still runs once per packed token.

Blocks of similar length share one padded batch (right padding: with a causal kernel a real query never sees a pad
key), so a forward makes a few kernel calls per layer, not one per path.

The blocks reach the model's attention through the keyword argument ``tree_blocks`` of the forward (transformers
passes unknown keyword arguments down to its attention functions); :func:`install` wraps the registered ``sdpa``
attention function so that a call carrying ``tree_blocks`` runs :func:`block_attention` and any other call is passed
to the original function unchanged (the same arguments to the same function: bit-identical results).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PAD_SLACK = 1.25
"""A bucket of blocks may pad to at most this many times the (query x key) pairs of its blocks."""


@dataclass
class BlockPlan:
    """Path blocks of packed rows with P positions (R x W, flattened): buckets of padded blocks and where each
    position's output comes from."""

    buckets: list[torch.Tensor]
    """(B, L) long per bucket: flat packed positions of B paths, in path order, right-padded with position 0."""
    out_index: torch.Tensor
    """(P,) long: the row of the concatenated bucket outputs (bucket-major, then block, then column) giving each
    position's output; the extra last row (zeros) for padding positions."""
    calls: list = field(default_factory=list)
    """One entry per attention call that used the plan (a forward that never used it did not route through it)."""

    def to(self, device: torch.device) -> "BlockPlan":
        return BlockPlan([b.to(device) for b in self.buckets], self.out_index.to(device), self.calls)


def bucket_blocks(lengths: list[int], slack: float = PAD_SLACK) -> list[list[int]]:
    """Groups of block indices (longest first) whose padded area, blocks x longest^2, stays within `slack` x the sum of
    their squared lengths (each group at least one block)."""
    order = sorted(range(len(lengths)), key=lambda b: -lengths[b])
    groups: list[list[int]] = []
    area = 0
    for b in order:
        if groups:
            longest = lengths[groups[-1][0]]
            if (len(groups[-1]) + 1) * longest ** 2 <= slack * (area + lengths[b] ** 2):
                groups[-1].append(b)
                area += lengths[b] ** 2
                continue
        groups.append([b])
        area = lengths[b] ** 2
    return groups


def block_plan(blocks: list[tuple[torch.Tensor, int]], positions: int) -> BlockPlan:
    """The plan of `blocks`: (flat packed positions of one path (L,), how many of its last positions it owns) each;
    `positions` = R x W. Every non-padding position must be owned by exactly one block."""
    groups = bucket_blocks([int(cols.numel()) for cols, _ in blocks])
    buckets, offset = [], 0
    out_index = torch.full((positions,), -1, dtype=torch.long)
    for group in groups:
        width = int(blocks[group[0]][0].numel())
        index = torch.zeros((len(group), width), dtype=torch.long)
        for i, b in enumerate(group):
            cols, owned = blocks[b]
            n = cols.numel()
            index[i, :n] = cols
            out_index[cols[n - owned:]] = offset + i * width + torch.arange(n - owned, n)
        buckets.append(index)
        offset += len(group) * width
    out_index[out_index < 0] = offset  # padding: the zero row
    return BlockPlan(buckets, out_index)


def block_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: BlockPlan,
                    scaling: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """(R, H, W, D) queries, (R, Hkv, W, D) keys/values of packed rows -> (R, W, H, D) outputs (the layout of
    transformers' attention functions), each position attending causally along the path that owns it."""
    rows, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(rows * width, heads, dim)
    k = key.transpose(1, 2).reshape(rows * width, kv_heads, dim)
    v = value.transpose(1, 2).reshape(rows * width, kv_heads, dim)
    outs = []
    for index in plan.buckets:
        qb, kb, vb = (t[index].transpose(1, 2) for t in (q, k, v))  # (B, heads, L, D)
        if kv_heads != heads:
            kb = kb.repeat_interleave(heads // kv_heads, dim=1)
            vb = vb.repeat_interleave(heads // kv_heads, dim=1)
        o = F.scaled_dot_product_attention(qb, kb, vb, dropout_p=dropout, is_causal=True, scale=scaling)
        outs.append(o.transpose(1, 2).reshape(-1, heads, dim))
    outs.append(q.new_zeros((1, heads, dim)))
    plan.calls.append(len(plan.buckets))
    return torch.cat(outs)[plan.out_index].view(rows, width, heads, dim)


_ORIGINAL: dict = {}


def install() -> None:
    """Wrap transformers' registered ``sdpa`` attention function (once per process): calls with ``tree_blocks`` run
    :func:`block_attention`, every other call goes to the original function with the same arguments."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if "sdpa" in _ORIGINAL:
        return
    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    _ORIGINAL["sdpa"] = original

    def sdpa_or_blocks(module, query, key, value, attention_mask, *args, tree_blocks: BlockPlan | None = None,
                       **kwargs):
        if tree_blocks is None:
            return original(module, query, key, value, attention_mask, *args, **kwargs)
        dropout = kwargs.get("dropout", 0.0)
        return block_attention(query, key, value, tree_blocks, kwargs.get("scaling"), dropout), None

    AttentionInterface.register("sdpa", sdpa_or_blocks)
