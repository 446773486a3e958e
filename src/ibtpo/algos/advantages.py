"""Advantage estimators, registered by name (verl's ``@register_adv_est`` pattern).

Every estimator is a pure tensor function called with keyword arguments and returning advantages of shape (bs, T):

- ``rewards.scoring``: (bs,) float, the outcome reward of each sequence.
- ``response_mask``: (bs, T) float/bool, 1 on generated (trained) tokens.
- ``group_ids``: (bs,) long, sequences with the same id answer the same question (one tree / one group).
- ``options``: the estimator's options dataclass (registered with it; built from the run config by
  ``core.registry.options_from``), e.g. ``IBTPOOptions`` of ``ib_tpo``.

Tree-aware estimators also receive the tree structure, as tensors (built by ``training.batch.flatten_paths``):

- ``node_index``: (bs, T) long, index of the tree node (reasoning step) each token belongs to, -1 off the response;
- ``nodes``: :class:`NodeStats`, per-node tensors (M,) of every non-root node of the batch's trees;
- ``ancestor_index``: (bs, D) long, each sequence's strict non-root ancestors (indices into ``nodes``, -1 padded).

Step-level estimators compute one value per node, (M,), and every token of the step gets it (``per_token``).
The estimators live with their methods (``ibtpo.methods``): ``grpo``/``tree_grpo`` (``methods.grpo``), ``treerl``,
``treepo``, ``ib_tpo``; ``ibtpo.register_estimator`` adds your own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ibtpo.core.group_std import group_std
from ibtpo.core.registry import Registry
from ibtpo.core.tree_stats import step_confidence

AdvantageFn = Callable[..., torch.Tensor]
ADV_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")
register_adv_est = ADV_ESTIMATORS.register
get_adv_estimator = ADV_ESTIMATORS.get
"""``@register_adv_est("name", options=OptionsDataclass)``; ``get_adv_estimator(name)`` (also ``module:name``)."""

LEAF_WEIGHT = False
"""Default of the step estimators' ``adv_leaf_weight``: divide a step's advantage by sqrt(leaves under it)."""


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
    """Unbiased std (``core.group_std``) of the leaf rewards of the node's tree (GRPO's group std); 0 for one leaf."""
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
        return step_confidence(self.logp_sum, self.length, mode)


def per_token(node_values: torch.Tensor, node_index: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast per-node values (M,) to tokens: (bs, T) with node_values[node_index] on response tokens, else 0."""
    out = node_values[node_index.clamp(min=0)]
    return out * (node_index >= 0).float() * response_mask.float()


def group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence mean and unbiased std (``core.group_std``) of `values` (bs,) over the sequences sharing its group
    id.

    A group of one sequence has std 0. Returns two (bs,) tensors.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=values.dtype).index_add_(0, inverse, values)
    means = (sums / counts)[inverse]
    return means, group_std(values, group_ids, mean=means)
