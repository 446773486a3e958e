"""IIB-LPO's pure pieces (arXiv 2601.05870, METHOD.md section 8): fork-point candidates, the IB trajectory score,
the top-N filter and the self-reward. Model-facing code: ``sampler.py`` and
``ib_filter.py`` (scoring with the policy).

Reconstructed, since neither METHOD.md nor the authors' released code pins them down (docs/methods/iib_lpo.md):
- candidates are positions 1..len-1 of a rollout (position 0 would be an independent sample, as the authors' code
  also skips the first token) that leave ``min_room`` tokens under the cap; the top ``top_frac`` of them by entropy,
  at least one;
- the IB score of a trajectory is ``I(r; a) - beta * I(q; r)`` with pointwise estimates in nats (see
  ``ib_filter.py``); the filter keeps the N best per question, ties to the earlier leaf.
"""

from __future__ import annotations

import math
import random

import torch

from ibtpo.core.group_std import POPULATION, group_std


def fork_candidates(entropies: list[float], top_frac: float, last_position: int) -> list[int]:
    """Candidate fork positions of one rollout: the ceil(top_frac * n) highest-entropy positions among 1..last.

    entropies: per generated token, the entropy of the distribution it was drawn from (n tokens).
    last_position: the last position with room left under the cap (min(n - 1, cap - min_room)).
    A fork at position t keeps tokens [0, t) and draws a new token t. Returns positions, highest entropy first
    (ties: the earlier position); [] when the rollout has no position with room.
    """
    positions = list(range(1, min(len(entropies) - 1, last_position) + 1))
    if not positions:
        return []
    count = max(1, math.ceil(top_frac * len(entropies)))
    positions.sort(key=lambda t: (-entropies[t], t))
    return positions[:count]


def draw_fork_positions(candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """k fork positions drawn uniformly (with replacement) from the candidates; [] if there are none."""
    return [rng.choice(candidates) for _ in range(k)] if candidates else []


def ib_trajectory_score(answer_gain: torch.Tensor, question_info: torch.Tensor, beta: float) -> torch.Tensor:
    """IB score of each trajectory, I(r; a) - beta * I(q; r) (all (n,) tensors, nats).

    answer_gain: log p(a* | q, r) - log p(a* | q), how much the reasoning r raises the reference answer's likelihood;
    question_info: log p(r | q) - log p(r), how much of the question the reasoning spells out (a compression cost).
    """
    return answer_gain - beta * question_info


def keep_top_n(scores: torch.Tensor, group_ids: torch.Tensor, n: int) -> torch.Tensor:
    """(bs,) bool mask keeping the n highest scores of every group (all of a group with <= n members).

    Ties go to the earlier row; NaN scores rank last. n <= 0 keeps everything.
    """
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if n <= 0:
        return torch.ones_like(keep)
    clean = torch.nan_to_num(scores.double(), nan=-math.inf)
    for g in torch.unique(group_ids):
        rows = (group_ids == g).nonzero().flatten()
        order = sorted(rows.tolist(), key=lambda i: (-float(clean[i]), i))
        keep[order[:n]] = True
    return keep


def group_zscore(values: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(bs,) values standardised within their group; 0 for groups of one or constant values (std <= eps).

    The std is the *population* one (``core.group_std`` with ``ddof=POPULATION``), not the package's unbiased
    reward std: this project's choice for the self-reward [choice], not the paper's (its standardisation could not be
    recovered, docs/methods/iib_lpo.md), kept as the runs so far have it.
    """
    out = torch.zeros_like(values, dtype=torch.float)
    for g in torch.unique(group_ids):
        rows = group_ids == g
        v = values[rows].float()
        std = group_std(v, ddof=POPULATION)
        out[rows] = (v - v.mean()) / std if float(std) > eps else torch.zeros_like(v)
    return out
