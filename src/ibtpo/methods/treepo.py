"""TreePO (Li et al. 2025, arXiv 2508.17445), as we read it: a fixed-width segment tree and a sub-group advantage.

- ``fixed_width`` sampler: fixed-length segments; each open segment forks into ``width`` children per depth, up to
  ``max_depth``, until G trajectories exist; then every open branch runs to the end (nodes are segments, not steps);
- ``treepo`` estimator: each trajectory compared with the whole tree and each ancestor segment that branched;
- preset ``treepo``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ibtpo.algos.advantages import NodeStats, group_stats, register_adv_est
from ibtpo.algos.presets import TREE_SHAPE, Preset, register_preset
from ibtpo.backends.contract import Request
from ibtpo.core.registry import config_field, options_from
from ibtpo.rollout.samplers import GrowContext, TreeShape, expand_and_attach, register_sampler, score_new
from ibtpo.core.tree import Node, Tree


@dataclass(frozen=True)
class FixedWidthOptions:
    """Options of the ``fixed_width`` sampler."""

    segment_length: int = config_field(8, "treepo_segment_length")
    """Tokens per segment."""
    width: int = config_field(2, "treepo_width")
    """Children of each open segment per depth."""
    max_depth: int = config_field(6, "treepo_max_depth")
    """Deepest level that still branches."""


def grow_fixed_width(ctx: GrowContext, trees: list[Tree]) -> None:
    """TreePO-style segment tree: see the module docstring."""
    s = ctx.options
    target = ctx.shape.group_size
    frontier: dict[int, list[Node]] = {id(t): [t.root] for t in trees}
    done_leaves: dict[int, int] = {id(t): 0 for t in trees}
    depth = 0
    while any(frontier.values()):
        depth += 1
        requests = []
        for tree in trees:
            open_nodes = frontier[id(tree)]
            if not open_nodes:
                continue
            widths = [1] * len(open_nodes)
            if depth <= s.max_depth and s.width > 1:
                spare = target - done_leaves[id(tree)] - len(open_nodes)
                n_branch = max(0, min(len(open_nodes), spare // (s.width - 1)))
                for i in ctx.rng.sample(range(len(open_nodes)), n_branch):
                    widths[i] = s.width
            for node, w in zip(open_nodes, widths):
                room = ctx.cap - node.end
                limit = min(s.segment_length, room) if depth <= s.max_depth else room
                requests.append(Request(tree, node, w, limit))
        new = expand_and_attach(ctx, requests, split_steps=False)
        frontier = {id(t): [] for t in trees}
        leaves = []
        for tree, node in new:
            if node.finished or node.end >= ctx.cap:
                done_leaves[id(tree)] += 1
                leaves.append((tree, node))
            else:
                frontier[id(tree)].append(node)
        score_new(ctx, leaves)


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


def _segment_problems(cfg, shape: TreeShape) -> list[str]:
    length = options_from(FixedWidthOptions, cfg).segment_length
    if length > cfg.max_completion_length:
        return [f"treepo_segment_length ({length}) must be <= max_completion_length "
                f"({cfg.max_completion_length})"]
    return []


register_sampler("fixed_width", grow_fixed_width, problems=_segment_problems, options=FixedWidthOptions)
register_preset("treepo", Preset({"sampler": "fixed_width", "adv_estimator": "treepo", "policy_loss": "ppo_clip",
                                  **TREE_SHAPE},
                                 "fixed-width segment tree, ancestor sub-group advantage", "TreePO, arXiv 2508.17445"))
