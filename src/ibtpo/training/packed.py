"""The packed training layout: each tree's prompt and each node's tokens once, with a tree attention mask.

The flattened layout (``training.batch.flatten_paths``) runs a shared prefix forward and backward once per leaf under
it. Here a set of paths (rows of a :class:`~ibtpo.training.batch.TrainBatch`) becomes *segments*, each holding one
tree's prompt and the nodes of some of its paths once, depth-first; segments fill *packed rows* of at most
``row_tokens`` tokens (several small trees share a row). In a segment

- a token sees the prompt, the tokens of its node's ancestors and the earlier tokens of its own node, never a sibling
  branch: with nodes laid out depth-first a node's subtree is contiguous, so the key at position k is seen by the
  queries k .. ``visible_end[k]`` (the last position of its node's subtree; the segment's end for prompt tokens), and
  nothing else;
- a token's position id is its position along its own path (prompt + completion), as when it was sampled.

The model runs once over the packed rows; the log-prob of every (path, column) is then *gathered* from the packed
token that predicts it (a node's last token predicts a different first token for each child: one entry per distinct
(position, target) pair). Losses, advantages, Clip-Cov/KL-Cov selections and every denominator are computed on those
per-path tensors exactly as in the flattened layout, so a shared token's gradient is the sum of its per-path terms:
the same loss and gradient to float tolerance, whatever the loss is (nonlinear in the advantage or not).

A tree too large for one row is split into several segments along its depth-first leaf order (the prompt and the
common ancestors are then repeated, once per segment).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ibtpo.training.batch import TrainBatch

LAYOUTS = ("auto", "packed", "flattened")
"""Values of ``train_layout``."""
SHARED_TOKEN_WEIGHTS = ("per_path", "per_node", "sqrt_leaves")
"""Values of ``shared_token_weight``: the gradient weight of a token shared by n paths of the batch, on each path."""


@dataclass
class PackedRows:
    """Packed rows of some paths of a batch: R rows of width W; n paths, T = the batch's predicted columns."""

    input_ids: torch.Tensor
    """(R, W) long, prompt + nodes once per segment, segments back to back, right-padded."""
    position_ids: torch.Tensor
    """(R, W) long, position of each token along its own path (0 on padding)."""
    visible_end: torch.Tensor
    """(R, W) long, the key at k is seen by queries k .. visible_end[k] (k itself on padding)."""
    entry_pos: torch.Tensor
    """(E,) long, flat index (row * W + column) of the packed token whose output predicts entry e."""
    entry_target: torch.Tensor
    """(E,) long, the token entry e predicts."""
    path_entry: torch.Tensor
    """(n, T) long, the entry giving each path column's log-prob (-1 where it is not a response column)."""
    tokens: int
    """Real (non-padding) tokens of the rows."""
    blocks: list
    """[(flat positions of one path (L,) long, tokens it placed)]: each path's positions in order; a path placed its
    last `owned` positions (the ``blocks`` attention of ``training.tree_attention``)."""

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)


@dataclass
class _Segment:
    group: int
    ids: list[int]
    pos: list[int]
    ends: list[int]  # per token: the node whose subtree end applies ("p" for prompt), resolved at close
    last_lineage: list
    placed: dict  # id(node) -> [start, subtree_end]
    rows: list  # (j, prompt length, [(node, start)], tokens it placed: the prompt (if first) + its new nodes)


def _lineage_cost(lineage: list, prev: list) -> tuple[int, int]:
    """(shared ancestors with `prev`, tokens of the nodes of `lineage` below them)."""
    shared = 0
    while shared < min(len(lineage), len(prev)) and lineage[shared] is prev[shared]:
        shared += 1
    return shared, sum(len(n.token_ids) for n in lineage[shared:])


def segments(batch: TrainBatch, rows: torch.Tensor, row_tokens: int) -> list[_Segment]:
    """Segments of the paths `rows` (batch row indices): each tree's paths in depth-first (row) order, a new segment
    when the next path's new nodes would take the current one past `row_tokens` (a path longer than that alone)."""
    prompt_len = batch.prompt_lengths
    order = sorted(range(len(rows)), key=lambda j: int(rows[j]))
    out: list[_Segment] = []
    for j in order:
        i = int(rows[j])
        g, plen, lineage = int(batch.group_ids[i]), int(prompt_len[i]), batch.leaves[i].lineage()
        seg = out[-1] if out else None
        if seg is not None and seg.group == g:
            shared, cost = _lineage_cost(lineage, seg.last_lineage)
            if len(seg.ids) + cost > row_tokens:
                seg = None
        else:
            seg = None
        if seg is None:
            seg = _Segment(g, batch.input_ids[i, :plen].tolist(), list(range(plen)), ["p"] * plen, [], {}, [])
            out.append(seg)
            shared = 0
        before = len(seg.ids) if seg.rows else 0
        for node in lineage[shared:]:
            seg.placed[id(node)] = [len(seg.ids), 0]
            seg.ids += node.token_ids
            seg.pos += range(plen + node.offset, plen + node.end)
            seg.ends += [id(node)] * len(node.token_ids)
        for node in lineage:  # every ancestor's subtree now reaches the segment's end
            seg.placed[id(node)][1] = len(seg.ids) - 1
        seg.last_lineage = lineage
        seg.rows.append((j, plen, [(node, seg.placed[id(node)][0]) for node in lineage], len(seg.ids) - before))
    return out


def _place(sizes: list[int], row_tokens: int, one_row: bool) -> tuple[list[tuple[int, int]], list[int]]:
    """((packed row, start column) of each segment, tokens of each row): first fit in order, or all in one row."""
    placement: list[tuple[int, int]] = []
    fill: list[int] = []
    for n in sizes:
        if fill and (one_row or fill[-1] + n <= row_tokens):
            placement.append((len(fill) - 1, fill[-1]))
            fill[-1] += n
        else:
            placement.append((len(fill), 0))
            fill.append(n)
    return placement, fill


def pack_paths(batch: TrainBatch, rows: torch.Tensor, row_tokens: int, pad_id: int = 0,
               one_row: bool = False) -> PackedRows:
    """The packed rows of the paths `rows` (batch row indices; the result's paths follow this order). `one_row`: all
    segments back to back in a single row, no padding (for per-path attention, ``training.tree_attention``; the row
    width then needs no bound); else segments fill rows of `row_tokens`, first fit in order."""
    segs = segments(batch, rows, row_tokens)
    placement, fill = _place([len(seg.ids) for seg in segs], row_tokens, one_row)
    n_rows, width = len(fill), max(fill) if fill else 1
    ids = [[pad_id] * width for _ in range(n_rows)]
    pos = [[0] * width for _ in range(n_rows)]
    vis = [list(range(width)) for _ in range(n_rows)]
    n_cols = batch.input_ids.shape[1] - 1
    path_q = [[-1] * n_cols for _ in range(len(rows))]
    blocks: list[tuple[torch.Tensor, int]] = []  # (flat packed positions of a path, how many of its last it placed)
    for seg, (r, start) in zip(segs, placement):
        n = len(seg.ids)
        ids[r][start:start + n] = seg.ids
        pos[r][start:start + n] = seg.pos
        vis[r][start:start + n] = [start + (n - 1 if e == "p" else seg.placed[e][1]) for e in seg.ends]
        base = start + r * width
        for j, plen, placed, owned in seg.rows:
            # packed position of every path position: prompt, then each node's tokens
            path_cols = list(range(base, base + plen))
            for node, s in placed:
                path_cols += range(base + s, base + s + len(node.token_ids))
            if owned:
                blocks.append((torch.tensor(path_cols, dtype=torch.long), owned))
            path_q[j][plen - 1: len(path_cols) - 1] = path_cols[plen - 1: len(path_cols) - 1]
    ids, pos, vis = (torch.tensor(t, dtype=torch.long) for t in (ids, pos, vis))
    path_q = torch.tensor(path_q, dtype=torch.long).reshape(len(rows), n_cols)
    targets = batch.input_ids[rows, 1:]
    on = path_q >= 0
    keys = path_q[on] * (int(targets.max()) + 1 if targets.numel() else 1) + targets[on]
    uniq, inverse = torch.unique(keys, return_inverse=True)
    path_entry = torch.full_like(path_q, -1)
    path_entry[on] = inverse
    # an entry's position and target, read back from any path column that uses it
    entry_pos = torch.zeros(uniq.numel(), dtype=torch.long).scatter_(0, inverse, path_q[on])
    entry_target = torch.zeros(uniq.numel(), dtype=torch.long).scatter_(0, inverse, targets[on])
    return PackedRows(ids, pos, vis, entry_pos, entry_target, path_entry, sum(fill), blocks)


def plan_parts(batch: TrainBatch, rows: torch.Tensor, row_tokens: int, micro_tokens: int,
               one_row: bool = False) -> list[torch.Tensor]:
    """Micro-batches of a mini-batch (batch rows `rows`): lists of positions in `rows` whose packed rows hold at most
    `micro_tokens` tokens (rows x padded width; 0 = no limit), packed as ``pack_paths(..., one_row)`` packs them.
    Every path is in exactly one part, a segment's paths in the same part; a part of one segment may exceed the
    budget when a segment alone does."""
    segs = segments(batch, rows, row_tokens)
    parts: list[list[int]] = []
    rows_fill: list[int] = []  # the current part's packed rows (first fit in order, as pack_paths does)
    for seg in segs:
        n = len(seg.ids)
        trial = list(rows_fill)
        if trial and (one_row or trial[-1] + n <= row_tokens):
            trial[-1] += n
        else:
            trial.append(n)
        if parts and (not micro_tokens or len(trial) * max(trial) <= micro_tokens):
            rows_fill = trial
            parts[-1] += [j for j, *_ in seg.rows]
        else:
            rows_fill = [n]
            parts.append([j for j, *_ in seg.rows])
    return [torch.tensor(sorted(p), dtype=torch.long) for p in parts]


NO_SPLIT = 2**62
"""A segment bound that splits no tree."""


def row_budget(batch: TrainBatch, row_tokens: int, micro_batch_size: int, one_row: bool = False) -> tuple[int, int]:
    """(tokens per packed row / segment, tokens per micro-batch) of a batch: `row_tokens` (0 = auto: 4 x the longest
    path; with `one_row` (per-path attention, where a long row costs no extra attention) no split beyond the
    micro-batch budget; at least one path) and ``micro_batch_size`` x the batch's padded width, the tokens a
    flattened micro-batch may hold (0 = no limit)."""
    width = int(batch.attention_mask.sum(-1).max()) if batch.size else 1
    micro = micro_batch_size * width
    if row_tokens <= 0:
        row_tokens = NO_SPLIT if one_row else 4 * width
    row_tokens = max(row_tokens, width)
    if micro:
        row_tokens = min(row_tokens, micro)
    return row_tokens, micro


def paths_through(batch: TrainBatch) -> torch.Tensor:
    """(N, T) float: the number of the batch's paths through each response token's node (0 off the response)."""
    idx = batch.node_index
    n_nodes = int(idx.max()) + 1 if idx.numel() and int(idx.max()) >= 0 else 0
    counts = torch.zeros(max(n_nodes, 1))
    for i in range(idx.shape[0]):
        nodes = idx[i][idx[i] >= 0].unique()
        counts[nodes] += 1
    return torch.where(idx >= 0, counts[idx.clamp(min=0)], torch.zeros(idx.shape)) * batch.response_mask


def shared_token_weights(batch: TrainBatch, mode: str) -> torch.Tensor | None:
    """(N, T) gradient weight of each (path, token) under ``shared_token_weight`` `mode`; None for per_path (1).

    A token shared by n paths of the batch gets 1/n on each (per_node: its node counted once, prime-rl's choice) or
    1/sqrt(n) (sqrt_leaves: TreeRL's down-weighting), so the token's total weight is 1 or sqrt(n) instead of n."""
    if mode == "per_path":
        return None
    if mode not in SHARED_TOKEN_WEIGHTS:
        raise ValueError(f"shared_token_weight must be one of {', '.join(SHARED_TOKEN_WEIGHTS)}; got {mode!r}")
    n = paths_through(batch).clamp(min=1)
    return (1.0 / n) if mode == "per_node" else n.rsqrt()


def scale_gradient(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`values` unchanged in the forward, with its gradient multiplied by `weights` (same shape)."""
    return values.detach() + (values - values.detach()) * weights
