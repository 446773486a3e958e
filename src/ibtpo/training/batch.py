"""The training-batch layout: how trees become tensors.

Today's layout is *flattened paths*: every leaf's root-to-leaf path is one right-padded sequence (prompt + completion);
leaves an IB filter dropped (``leaf.info["dropped"]``) get no row.
It is the reference layout: estimators, losses and selections always see these per-path tensors. The packed layout
(``training.packed``: each tree's prompt and nodes once, with a tree attention mask) only changes how the model's
forward passes compute the per-path log-probs; it reads the same batch.

Per-token tensors are aligned with *predicted* tokens: column t refers to ``input_ids[:, t + 1]``, so they have
width L - 1 for sequences of length L.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ibtpo.algos.advantages import NodeStats
from ibtpo.core.lm import token_logprobs
from ibtpo.core.sampling import right_pad
from ibtpo.core.tree import Node, Tree


@dataclass
class TrainBatch:
    """Tensors of one rollout batch, N sequences of padded length L."""

    input_ids: torch.Tensor
    """(N, L) long, right-padded prompt + completion."""
    attention_mask: torch.Tensor
    """(N, L) long, 1 on real tokens."""
    response_mask: torch.Tensor
    """(N, L-1) float, 1 where the predicted token is a generated one."""
    old_logp: torch.Tensor
    """(N, L-1) float, behaviour log-probs of the predicted tokens (0 off the response)."""
    rewards: torch.Tensor
    """(N,) float, outcome reward of each sequence."""
    group_ids: torch.Tensor
    """(N,) long, index of the tree each sequence comes from."""
    leaves: list[Node]
    """The leaf of each sequence, in row order."""
    node_index: torch.Tensor | None = None
    """(N, L-1) long: index into ``nodes`` of the tree node each predicted token belongs to (-1 off the response)."""
    nodes: NodeStats | None = None
    """Per-node tensors of every non-root node of the batch's trees (step-level estimators read them)."""
    ancestor_index: torch.Tensor | None = None
    """(N, D) long: indices into ``nodes`` of each sequence's strict non-root ancestors (-1 padded)."""
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-row tensors (first dimension N) a method's trainer extension adds (e.g. IIB-LPO's latent codes)."""
    prompt_lengths: torch.Tensor | None = None
    """(N,) long, prompt tokens of each sequence (the packed layout, ``training.packed``, reads it)."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        """The sub-batch of the given rows (a mini-batch)."""
        idx = rows.tolist()
        pick = (lambda t: None if t is None else t[rows])  # noqa: E731
        return TrainBatch(self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows],
                          self.old_logp[rows], self.rewards[rows], self.group_ids[rows], [self.leaves[i] for i in idx],
                          pick(self.node_index), self.nodes, pick(self.ancestor_index),
                          {k: v[rows] for k, v in self.extras.items()}, pick(self.prompt_lengths))


def node_stats(trees: list[Tree]) -> tuple[list[Node], NodeStats]:
    """Every non-root node of the trees (tree by tree, depth-first) and their per-node tensors, from each tree's
    kept statistics (``Tree.statistics``)."""
    nodes, rows = [], []
    for g, tree in enumerate(trees):
        kept = tree.statistics()
        std, value = kept.reward_std, kept.values
        for node in kept.nodes:
            nodes.append(node)
            rows.append((node.p_hat, node.parent.p_hat, tree.root.p_hat, value[id(node)], std, sum(node.logprobs),
                         len(node.logprobs), node.n_leaves, g, value[id(tree.root)]))
    cols = list(zip(*rows)) if rows else [()] * 10
    f = lambda i: torch.tensor(cols[i], dtype=torch.float)  # noqa: E731
    return nodes, NodeStats(p_hat=f(0), parent_p_hat=f(1), root_p_hat=f(2), value=f(3), tree_reward_std=f(4),
                            logp_sum=f(5), length=f(6), n_leaves=f(7), tree=torch.tensor(cols[8], dtype=torch.long),
                            root_value=f(9))


def flatten_paths(trees: list[Tree], pad_id: int,
                  row_extras: Callable[[list[tuple[int, list[Node]]]], dict[str, torch.Tensor]] | None = None,
                  ) -> TrainBatch:
    """One sequence per leaf: prompt + path tokens, right-padded; rewards, behaviour log-probs and, for step-level
    estimators, the node of every token and the ancestors of every sequence attached. `row_extras` maps each row's
    (prompt length, leaf lineage) to per-row tensors (``TrainBatch.extras``; trainer extensions)."""
    nodes, stats = node_stats(trees)
    index = {id(n): i for i, n in enumerate(nodes)}
    rows, lineages = [], []
    for g, tree in enumerate(trees):
        kept = tree.statistics()
        for leaf, lineage, (ids, lps) in zip(kept.leaves, kept.lineages, kept.completions):
            if leaf.info.get("dropped"):
                continue
            rows.append((tree.prompt_ids, ids, lps, float(leaf.reward or 0.0), g, leaf))
            lineages.append(lineage)
    input_ids, attention = right_pad([p + c for p, c, *_ in rows], pad_id)
    n, width = input_ids.shape
    resp = torch.zeros((n, width - 1))
    old = torch.zeros((n, width - 1))
    node_index = torch.full((n, width - 1), -1, dtype=torch.long)
    ancestor_index = torch.full((n, max(1, max(len(lin) for lin in lineages) - 1)), -1, dtype=torch.long)
    for i, (prompt, comp, lps, *_rest) in enumerate(rows):
        start = len(prompt) - 1  # column predicting the first completion token
        resp[i, start: start + len(comp)] = 1.0
        old[i, start: start + len(comp)] = torch.tensor(lps, dtype=torch.float)
        for d, node in enumerate(lineages[i]):
            node_index[i, start + node.offset: start + node.end] = index[id(node)]
            if d < len(lineages[i]) - 1:
                ancestor_index[i, d] = index[id(node)]
    extras = row_extras([(len(row[0]), lineage) for row, lineage in zip(rows, lineages)]) if row_extras else {}
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=resp,
        old_logp=old,
        rewards=torch.tensor([r[3] for r in rows], dtype=torch.float),
        group_ids=torch.tensor([r[4] for r in rows], dtype=torch.long),
        leaves=[r[5] for r in rows],
        node_index=node_index,
        nodes=stats,
        ancestor_index=ancestor_index,
        extras=extras,
        prompt_lengths=torch.tensor([len(r[0]) for r in rows], dtype=torch.long),
    )


def padded_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                    temperature: float, device: torch.device, chunk_tokens: int = 0,
                    **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` of batch rows `rows` on `device`, run on the columns that are not padding in every one
    of them (right padding), and padded back with zeros to the batch's width: ((n, L-1) logp, (n, L-1) entropy)."""
    width = int(attention_mask[rows].sum(-1).max())
    logp, entropy = token_logprobs(model, input_ids[rows, :width].to(device), attention_mask[rows, :width].to(device),
                                   temperature, chunk_tokens=chunk_tokens, **kwargs)
    pad = input_ids.shape[1] - 1 - logp.shape[1]
    return torch.nn.functional.pad(logp, (0, pad)), torch.nn.functional.pad(entropy, (0, pad))


def logprobs_in_chunks(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                       rows_per_pass: int, device: torch.device, extra: Callable[[torch.Tensor], dict] | None = None,
                       chunk_tokens: int = 0, lockstep: Callable[[int], int] | None = None) -> torch.Tensor:
    """No-grad token log-probs (N, L-1) of a whole batch, `rows_per_pass` rows per forward (0 = all), on CPU.

    extra(rows) returns more keywords of :func:`token_logprobs` for those rows (a trainer extension's).
    `lockstep(n)` -> the passes every rank runs over a sharded model (``training.world``), so its all-gathers pair
    up: the extra passes re-run row 0 and are dropped, and the LM head runs inside the model's own forward; None =
    this process's own passes."""
    chunks = list(torch.arange(input_ids.shape[0]).split(rows_per_pass or input_ids.shape[0]))
    passes = len(chunks) if lockstep is None else lockstep(len(chunks))
    chunk_tokens = chunk_tokens if lockstep is None else 2**62
    out = []
    with torch.no_grad():
        for i in range(passes):
            rows = chunks[i] if i < len(chunks) else torch.zeros(1, dtype=torch.long)
            logp = padded_logprobs(model, input_ids, attention_mask, rows, temperature, device, chunk_tokens,
                                   **(extra(rows) if extra is not None else {}))[0]
            if i < len(chunks):
                out.append(logp.float().cpu())
    return torch.cat(out)
