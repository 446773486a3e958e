"""TreeRL (Hou et al. 2025, arXiv 2506.11902): entropy-guided forks and a global + local value advantage per step.

- ``entropy`` branch rule (and sampler): fork at the K generated tokens with the highest -log p of the sampled token;
  the new branch re-draws that token; a position that is already a fork point is not reused (EPTree-style);
- ``treerl`` estimator: A(s) = [(V(s) - V(root)) + (V(s) - V(parent))] / w(s);
- preset ``treerl`` (the paper's tree shape, leaf down-weighting on).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ibtpo.algos.advantages import LEAF_WEIGHT, NodeStats, per_token, register_adv_est
from ibtpo.algos.presets import TREE_SHAPE, Preset, register_preset
from ibtpo.core.registry import config_field
from ibtpo.rollout.rules import BRANCH_RULES, ForkPoint, RuleContext, top_k
from ibtpo.rollout.samplers import register_rule_sampler
from ibtpo.core.tree import Tree


@BRANCH_RULES.register("entropy")
def entropy_rule(tree: Tree, ctx: RuleContext, rng: random.Random) -> list[ForkPoint]:
    """Top-K tokens by -log p of the sampled token; forking there re-draws the token."""
    scored = []
    for node in tree.nodes():
        for i, lp in enumerate(node.logprobs):
            if ctx.cap - (node.offset + i) < ctx.min_room:
                break
            if i == 0:
                parent = node.parent
                if len(parent.children) > 1:
                    continue  # already a fork point
                fp = (parent, len(parent.token_ids))
            else:
                fp = (node, i)
            scored.append((-lp, fp))
    if not scored and ctx.root_candidate and ctx.cap >= ctx.min_room:
        scored = [(0.0, (tree.root, 0))]  # nothing left to fork inside (e.g. all answers ended at once): a fresh one
    return top_k(scored, ctx.k, rng)


@dataclass(frozen=True)
class TreeRLOptions:
    """Options of the ``treerl`` estimator."""

    leaf_weight: bool = config_field(LEAF_WEIGHT, "adv_leaf_weight", "Divide by sqrt(leaves under the step).")


@register_adv_est("treerl", options=TreeRLOptions)
def treerl_advantage(*, response_mask: torch.Tensor, node_index: torch.Tensor, nodes: NodeStats,
                     options: TreeRLOptions = TreeRLOptions(), **_) -> torch.Tensor:
    """TreeRL step advantage (Hou et al. 2025, arXiv 2506.11902): global + local value differences per step.

    A(s) = [ (V(s) - V(root)) + (V(s) - V(parent(s))) ] / w(s),  V = p_hat (share of correct leaves);
    w(s) = sqrt(n_leaves(s)) when ``options.leaf_weight`` (TreeRL's down-weighting of shared prefixes), else 1.
    Every token of step s gets A(s). node_index (bs, T), nodes (M,) -> advantages (bs, T).
    """
    adv = (nodes.p_hat - nodes.root_p_hat) + (nodes.p_hat - nodes.parent_p_hat)
    if options.leaf_weight:
        adv = adv / nodes.n_leaves.clamp(min=1).sqrt()
    return per_token(adv, node_index, response_mask)


register_rule_sampler("entropy")
register_preset("treerl", Preset(
    {"sampler": "entropy", "adv_estimator": "treerl", "policy_loss": "ppo_clip", "adv_leaf_weight": True, **TREE_SHAPE},
    "entropy-guided tree (fork at the highest -log p tokens), global + local value advantage",
    "TreeRL, arXiv 2506.11902"))
