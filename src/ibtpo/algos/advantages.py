"""Advantage estimators, registered by name (verl's ``@register_adv_est`` pattern).

Every estimator is a pure tensor function called with keyword arguments and returning advantages of shape (bs, T):

- ``rewards``: (bs,) float, the outcome reward of each sequence.
- ``response_mask``: (bs, T) float/bool, 1 on generated (trained) tokens.
- ``group_ids``: (bs,) long, sequences with the same id answer the same question (one tree / one group).
- ``cfg``: the run config (estimator options are read from it).

Tree-aware estimators also receive the tree structure, as tensors (built by ``training.batch.flatten_paths``):

- ``node_index``: (bs, T) long, index of the tree node (reasoning step) each token belongs to, -1 off the response;
- ``nodes``: :class:`NodeStats`, per-node tensors (M,) of every non-root node of the batch's trees;
- ``ancestor_index``: (bs, D) long, each sequence's strict non-root ancestors (indices into ``nodes``, -1 padded).

Step-level estimators compute one value per node, (M,), and every token of the step gets it (``per_token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ibtpo.registry import Registry

AdvantageFn = Callable[..., torch.Tensor]
ADV_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
register_adv_est = ADV_ESTIMATORS.register
get_adv_estimator = ADV_ESTIMATORS.get


@dataclass(frozen=True)
class NodeStats:
    """Per-node tensors, each (M,), of the non-root nodes of a batch of trees (p_hat: share of correct leaves)."""

    p_hat: torch.Tensor
    """p_hat(s): share of correct leaves under the node."""
    parent_p_hat: torch.Tensor
    """p_hat of the node's parent (the root's for a first step)."""
    root_p_hat: torch.Tensor
    """p_hat of the node's tree root (the question's success rate in this rollout)."""
    value: torch.Tensor
    """Mean leaf reward under the node (= p_hat for 0/1 rewards)."""
    tree_reward_std: torch.Tensor
    """Unbiased std of the leaf rewards of the node's tree (as GRPO's group std)."""
    logp_sum: torch.Tensor
    """Sum of the node's behaviour token log-probs."""
    length: torch.Tensor
    """Tokens in the node."""
    n_leaves: torch.Tensor
    """Leaves (trajectories) under the node."""
    tree: torch.Tensor
    """(M,) long, index of the node's tree."""
    root_value: torch.Tensor | None = None
    """Mean leaf reward of the node's tree (= root_p_hat for 0/1 rewards); None: taken as root_p_hat."""

    def confidence(self, mode: str = "mean") -> torch.Tensor:
        """Behaviour-policy step confidence: exp(mean token log-prob) ("mean") or exp(sum) ("product")."""
        if mode == "mean":
            return (self.logp_sum / self.length.clamp(min=1)).exp()
        if mode == "product":
            return self.logp_sum.exp()
        raise ValueError(f"confidence mode must be mean or product; got {mode!r}")


def per_token(node_values: torch.Tensor, node_index: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast per-node values (M,) to tokens: (bs, T) with node_values[node_index] on response tokens, else 0."""
    out = node_values[node_index.clamp(min=0)]
    return out * (node_index >= 0).float() * response_mask.float()


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


def _opt(cfg, name: str, default):
    return getattr(cfg, name, default) if cfg is not None else default


@register_adv_est("treerl")
def treerl_advantage(*, response_mask: torch.Tensor, node_index: torch.Tensor, nodes: NodeStats, cfg=None,
                     **_) -> torch.Tensor:
    """TreeRL step advantage (Hou et al. 2025, arXiv 2506.11902): global + local value differences per step.

    A(s) = [ (V(s) - V(root)) + (V(s) - V(parent(s))) ] / w(s),  V = p_hat (share of correct leaves);
    w(s) = sqrt(n_leaves(s)) when ``cfg.adv_leaf_weight`` (TreeRL's down-weighting of shared prefixes), else 1.
    Every token of step s gets A(s). node_index (bs, T), nodes (M,) -> advantages (bs, T).
    """
    adv = (nodes.p_hat - nodes.root_p_hat) + (nodes.p_hat - nodes.parent_p_hat)
    if _opt(cfg, "adv_leaf_weight", False):
        adv = adv / nodes.n_leaves.clamp(min=1).sqrt()
    return per_token(adv, node_index, response_mask)


@register_adv_est("treepo")
def treepo_advantage(*, rewards: torch.Tensor, response_mask: torch.Tensor, group_ids: torch.Tensor,
                     ancestor_index: torch.Tensor, nodes: NodeStats, eps: float = 1e-4, **_) -> torch.Tensor:
    """TreePO sub-group advantage (Li et al. 2025, arXiv 2508.17445), as we read it: each trajectory is compared with
    every sub-group it belongs to, the whole tree and each ancestor segment that branched (>= 2 leaves), and the
    differences are averaged, then scaled by the tree's reward std:

        A_i = mean_{g in groups(i)} (R_i - mean_{j in g} R_j) / (std_tree(R) + eps)

    A sequence-level advantage on every token of path i; a tree whose rewards are all equal gets 0.
    rewards (bs,), group_ids (bs,), ancestor_index (bs, D), nodes (M,) -> advantages (bs, T).
    """
    rewards = rewards.float()
    tree_mean, tree_std = group_stats(rewards, group_ids)
    valid = ancestor_index >= 0
    idx = ancestor_index.clamp(min=0)
    branched = valid & (nodes.n_leaves[idx] >= 2)
    diffs = (rewards[:, None] - nodes.value[idx]) * branched.float()
    total = (rewards - tree_mean) + diffs.sum(-1)
    adv = total / (1 + branched.sum(-1)).float() / (tree_std + eps)
    return adv[:, None] * response_mask.float()


@register_adv_est("ib_tpo")
def ib_tpo_advantage(*, response_mask: torch.Tensor, node_index: torch.Tensor, nodes: NodeStats, cfg=None,
                     eps: float = 1e-4, **_) -> torch.Tensor:
    """IB-TPO step-level advantage (IB-TPO, arXiv 2605.28109; METHOD.md section 5).

        A_GL(s) = (V(s) - V(root)) / (sigma + eps)                     global: improvement over the question
        A_IB(s) = (p_hat(s) / p_hat(p) - (1 + 1/beta)) * conf_ref(s)   local: does this step raise p(a*)?
        A(s)    = A_GL(s) + lambda * A_IB(s)

    V = mean leaf reward under a node, which is p_hat (share of correct leaves, ``ibtpo.correct``) for 0/1 rewards;
    with other rewards (a format bonus, partial credit) the global term follows the reward as GRPO does [choice], and
    the local IB term keeps p_hat, the chance of a correct answer.
    sigma = unbiased std of the tree's leaf rewards (GRPO's group std); a tree with sigma = 0 gets A = 0 [choice];
    p_hat(p) = 0 gives ratio 1 [choice, as the IB rule]; conf_ref = behaviour-policy step confidence (``cfg.ib_conf``:
    length-normalised by default), detached [choice]; optional 1/sqrt(n_leaves(s)) (``cfg.adv_leaf_weight``).
    Options from cfg: ``ib_tpo_lambda`` (0.1), ``ib_beta`` (5), ``ib_conf``, ``adv_leaf_weight``.
    With lambda = 0 on independent samples this is exactly GRPO's advantage, for any rewards (tested).
    node_index (bs, T), nodes (M,) -> advantages (bs, T).
    """
    lam, beta = _opt(cfg, "ib_tpo_lambda", 0.1), _opt(cfg, "ib_beta", 5.0)
    sigma = nodes.tree_reward_std
    root_value = nodes.root_p_hat if nodes.root_value is None else nodes.root_value
    a_gl = (nodes.value - root_value) / (sigma + eps)
    ratio = torch.where(nodes.parent_p_hat > 0, nodes.p_hat / nodes.parent_p_hat.clamp(min=1e-12),
                        torch.ones_like(nodes.p_hat))
    a_ib = (ratio - (1.0 + 1.0 / beta)) * nodes.confidence(_opt(cfg, "ib_conf", "mean"))
    adv = torch.where(sigma > 0, a_gl + lam * a_ib, torch.zeros_like(a_gl))
    if _opt(cfg, "adv_leaf_weight", False):
        adv = adv / nodes.n_leaves.clamp(min=1).sqrt()
    return per_token(adv, node_index, response_mask)
