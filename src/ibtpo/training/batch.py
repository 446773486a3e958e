"""The training-batch layout: how trees become tensors.

Today's layout is *flattened paths*: every leaf's root-to-leaf path is one right-padded sequence (prompt + completion).
It is the only place that knows the layout; a packed layout (one sequence per tree with a tree attention mask) can
replace :func:`flatten_paths` without touching estimators, losses or the trainer loop.

Per-token tensors are aligned with *predicted* tokens: column t refers to ``input_ids[:, t + 1]``, so they have
width L - 1 for sequences of length L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ibtpo.rollout.tree import Node, Tree


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
    """The leaf of each sequence, in row order (tree-aware estimators read the structure from it)."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> "TrainBatch":
        """The sub-batch of the given rows (a mini-batch)."""
        idx = rows.tolist()
        return TrainBatch(self.input_ids[rows], self.attention_mask[rows], self.response_mask[rows],
                          self.old_logp[rows], self.rewards[rows], self.group_ids[rows], [self.leaves[i] for i in idx])


def flatten_paths(trees: list[Tree], pad_id: int) -> TrainBatch:
    """One sequence per leaf: prompt + path tokens, right-padded; rewards and behaviour log-probs attached."""
    rows = []
    for g, tree in enumerate(trees):
        for leaf in tree.leaves():
            ids, lps, _ = Tree.completion(leaf)
            rows.append((tree.prompt_ids, ids, lps, float(leaf.reward or 0.0), g, leaf))
    width = max(len(p) + len(c) for p, c, *_ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    resp = torch.zeros((n, width - 1))
    old = torch.zeros((n, width - 1))
    for i, (prompt, comp, lps, *_rest) in enumerate(rows):
        seq = prompt + comp
        input_ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        start = len(prompt) - 1  # column predicting the first completion token
        resp[i, start: start + len(comp)] = 1.0
        old[i, start: start + len(comp)] = torch.tensor(lps, dtype=torch.float)
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention,
        response_mask=resp,
        old_logp=old,
        rewards=torch.tensor([r[3] for r in rows], dtype=torch.float),
        group_ids=torch.tensor([r[4] for r in rows], dtype=torch.long),
        leaves=[r[5] for r in rows],
    )


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each predicted token and the entropy of each next-token distribution, at `temperature`.

    (N, L) ids -> ((N, L-1) logp, (N, L-1) entropy). Gradients flow through both.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1, :].float() / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
