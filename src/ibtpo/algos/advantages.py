"""Advantage estimators, registered by name (verl's ``@register_adv_est`` pattern).

Every estimator is a pure tensor function called with keyword arguments and returning advantages of shape (bs, T):

- ``rewards``: (bs,) float, the outcome reward of each sequence.
- ``response_mask``: (bs, T) float/bool, 1 on generated (trained) tokens.
- ``group_ids``: (bs,) long, sequences with the same id answer the same question (one tree / one group).
- ``cfg``: the run config (estimator options are read from it).
Tree-aware estimators (added with tree rollouts) receive the tree structure as extra keyword arguments.
"""

from __future__ import annotations

from typing import Callable

import torch

from ibtpo.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
ADV_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
register_adv_est = ADV_ESTIMATORS.register
get_adv_estimator = ADV_ESTIMATORS.get


def group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence mean and unbiased std of `values` (bs,) over the sequences sharing its group id.

    A group of one sequence has std 0. Returns two (bs,) tensors.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    ngroups = counts.numel()
    sums = torch.zeros(ngroups, dtype=values.dtype).index_add_(0, inverse, values)
    means = sums / counts
    sq = torch.zeros(ngroups, dtype=values.dtype).index_add_(0, inverse, (values - means[inverse]) ** 2)
    std = torch.where(counts > 1, (sq / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return means[inverse], std[inverse]


@register_adv_est("grpo")
def grpo_advantage(*, rewards: torch.Tensor, response_mask: torch.Tensor, group_ids: torch.Tensor,
                   scale_rewards: str = "group", eps: float = 1e-4, **_) -> torch.Tensor:
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

    A_i = (R_i - mean_group(R)) / (std + eps), broadcast to every response token. `scale_rewards` (TRL's name):
    "group" divides by the group's std, "batch" by the std of the whole batch, "none" does not divide (Dr. GRPO,
    arXiv 2503.20783). Std is unbiased (torch.std), as in TRL and verl. A group whose rewards are all equal gets 0.

    rewards (bs,), response_mask (bs, T), group_ids (bs,) -> advantages (bs, T).
    """
    rewards = rewards.float()
    mean, std = group_stats(rewards, group_ids)
    centred = rewards - mean
    if scale_rewards == "group":
        adv = centred / (std + eps)
    elif scale_rewards == "batch":
        adv = centred / (rewards.std() + eps) if rewards.numel() > 1 else centred
    elif scale_rewards == "none":
        adv = centred
    else:
        raise ValueError(f"scale_rewards must be group, batch or none; got {scale_rewards!r}")
    return adv[:, None] * response_mask.float()


@register_adv_est("tree_grpo")
def tree_grpo_advantage(**kwargs) -> torch.Tensor:
    """GRPO's outcome advantage over the leaves of each tree (the IB-TPO paper's "IBTree sampler only" ablation).

    Every leaf's root-to-leaf path is one sequence and its group is its tree (``group_ids`` = tree index), so this is
    ``grpo`` with groups = trees: A_i = (R_i - mean_tree(R)) / (std_tree(R) + eps) on every token of path i, shared
    prefix tokens included (no down-weighting). Same arguments and shapes as ``grpo``.
    """
    return grpo_advantage(**kwargs)
