"""IB-TPO (arXiv 2605.28109; METHOD.md): the IB-Score, the IBTree branching rule, the step advantage, the presets.

Read with ``rollout/samplers.py`` (how a tree grows in rounds) and ``algos/losses.py`` (the clipped loss), this file
is the method end to end:

1. **IB-Score of a node** (section 3). For a non-leaf node v with children c_1..c_B (alternative next steps)::

       IB(v) = (1 + beta) / B * sum_c conf(c) * ( r(c) - (1 + 1/beta) ),     r(c) = p_hat(c) / p_hat(v)

   p_hat: share of correct leaves; conf: step confidence; r = 1 where p_hat(v) = 0 [choice] (``core.tree_stats``).
   Exactly, IB(v) = (1 + beta)/beta * (H2_hat + beta * Cov_hat - 1) with the Tsallis-2 step entropy
   H2_hat = 1 - mean_c conf(c) and Cov_hat = mean_c conf(c) * (r(c) - 1): the node's Tsallis IB objective up to a
   positive scale and a constant (tested). A chain node (one child) has r = 1, so among unbranched nodes the least
   confident next step scores highest.
2. **IBTree** (section 4): B0 chains, then L-1 rounds; each round forks B continuations at the K non-leaf nodes with
   the highest IB-Score (sampler ``ib`` = rule ``ib`` in rounds; the root is a candidate; ties broken at random).
3. **Step advantage** (section 5), every token of step s gets::

       A(s) = A_GL(s) + lambda * A_IB(s),  A_GL(s) = (V(s) - V(root)) / (sigma + eps),
       A_IB(s) = conf(s) * (r(s) - (1 + 1/beta))          (the IB-Score's own per-step term)

4. **Presets**: ``ib_tpo`` (IBTree + this advantage + PPO clip) and ``ibtree_grpo`` (the sampler-only ablation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from statistics import mean

import torch

from ibtpo.algos.advantages import LEAF_WEIGHT, NodeStats, per_token, register_adv_est
from ibtpo.algos.presets import TREE_SHAPE, Preset, register_preset
from ibtpo.core.registry import config_field, options_field
from ibtpo.rollout.rules import BRANCH_RULES, ForkPoint, RuleContext, node_candidates, top_k
from ibtpo.rollout.samplers import register_rule_sampler
from ibtpo.core.tree import Node, Tree
from ibtpo.core.tree_stats import IB_DEFAULTS, IBOptions, ib_term, info_gain

# --- 1. the IB-Score ---------------------------------------------------------------------------------------------


def ib_from_values(conf: list[float], gains: list[float], beta: float = IB_DEFAULTS.beta) -> float:
    """IB estimate from the children's confidences and gains r(c) (pure; see the module docstring)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not conf or len(conf) != len(gains):
        raise ValueError("conf and gains must be non-empty and of equal length")
    return (1.0 + beta) * mean(ib_term(c, g, beta) for c, g in zip(conf, gains))


def cov_from_values(conf: list[float], gains: list[float]) -> float:
    """Cov_hat(conf, r) = mean_c conf(c) * (r(c) - 1) (uses E_pi[r] = 1)."""
    return mean(c * (g - 1.0) for c, g in zip(conf, gains))


def tsallis2_from_values(conf: list[float]) -> float:
    """H2_hat = 1 - mean_c conf(c): the Tsallis-2 entropy of the next-step distribution when conf(c) = pi(c)."""
    return 1.0 - mean(conf)


def node_gain(child: Node, parent: Node) -> float:
    """r(c) = p_hat(c) / p_hat(parent), with r = 1 when p_hat(parent) = 0."""
    return info_gain(child.p_hat, parent.p_hat)


def _children_values(node: Node, conf_mode: str) -> tuple[list[float], list[float]]:
    if not node.children:
        raise ValueError(f"IB-Score needs a node with children; node {node.path!r} is a leaf")
    return [c.confidence(conf_mode) for c in node.children], [node_gain(c, node) for c in node.children]


def ib_score(node: Node, beta: float = IB_DEFAULTS.beta, conf_mode: str = IB_DEFAULTS.conf_mode) -> float:
    """IB(v) of a non-leaf node from its children (p_hat computed). A leaf raises ValueError."""
    conf, gains = _children_values(node, conf_mode)
    return ib_from_values(conf, gains, beta)


def cov_conf_gain(node: Node, conf_mode: str = IB_DEFAULTS.conf_mode) -> float:
    """Cov_hat(conf, r) over a non-leaf node's children."""
    conf, gains = _children_values(node, conf_mode)
    return cov_from_values(conf, gains)


def branching_ib(tree: Tree, ib: IBOptions = IB_DEFAULTS) -> list[tuple[float, float, float]]:
    """(IB-Score, Cov(conf, r), Tsallis-2 step entropy) of every branching node (>= 2 children) of the tree as it is
    now, depth first, with the IB options `ib` (beta, step confidence); computed once per (beta, conf_mode) and kept
    with the tree's statistics (``Tree.statistics``: computed again if the tree has changed)."""
    def compute() -> list[tuple[float, float, float]]:
        out = []
        for node in tree.root.iter_nodes():
            if len(node.children) >= 2:
                conf, gains = _children_values(node, ib.conf_mode)
                out.append((ib_from_values(conf, gains, ib.beta), cov_from_values(conf, gains),
                            tsallis2_from_values(conf)))
        return out

    return tree.statistics().derive(("ib", ib.beta, ib.conf_mode), compute)


def tree_ib_stats(trees: list[Tree], ib: IBOptions = IB_DEFAULTS) -> dict[str, float]:
    """Means over all branching nodes (>= 2 children) of the batch: IB-Score, Cov(conf, r), Tsallis-2 step entropy,
    with the IB options `ib` (beta, step confidence).

    Metric names follow CONVENTIONS.md (``ib/score_mean``, ``ib/cov_conf_gain``); a batch without branching nodes
    (e.g. independent sampling of one trajectory per question) reports NaN rather than a made-up 0. The per-node
    values come from :func:`branching_ib` (kept on each tree: a second call on the same trees recomputes nothing).
    """
    scores, covs, ents = [], [], []
    for tree in trees:
        for score, cov, ent in branching_ib(tree, ib):
            scores.append(score)
            covs.append(cov)
            ents.append(ent)
    nan = float("nan")
    return {
        "ib/score_mean": mean(scores) if scores else nan,
        "ib/cov_conf_gain": mean(covs) if covs else nan,
        "ib/step_entropy": mean(ents) if ents else nan,
        "ib/branching_nodes": len(scores) / max(1, len(trees)),
    }


# --- 2. IBTree: fork where the IB-Score is highest -----------------------------------------------------------------


@BRANCH_RULES.register("ib")
def ib_rule(tree: Tree, ctx: RuleContext, rng: random.Random) -> list[ForkPoint]:
    """Top-K IB-Score nodes (forks at step boundaries: the node's end)."""
    cands = node_candidates(tree, ctx)
    if ctx.ib.zero_phat == "skip":
        cands = [n for n in cands if n.p_hat] or cands
    return top_k([(ib_score(n, ctx.ib.beta, ctx.ib.conf_mode), (n, len(n.token_ids))) for n in cands], ctx.k, rng)


register_rule_sampler("ib")


# --- 3. the step advantage A_GL + lambda * A_IB --------------------------------------------------------------------


@dataclass(frozen=True)
class IBTPOOptions:
    """Options of the ``ib_tpo`` advantage estimator."""

    lam: float = config_field(0.1, "ib_tpo_lambda", "Weight lambda of the local IB advantage A_IB.")
    ib: IBOptions = options_field(IBOptions)
    """IB-Score beta and step confidence of A_IB (the run's ``ib_beta``, ``ib_conf``)."""
    leaf_weight: bool = config_field(LEAF_WEIGHT, "adv_leaf_weight", "Divide by sqrt(leaves under the step) (TreeRL).")


@register_adv_est("ib_tpo", options=IBTPOOptions)
def ib_tpo_advantage(*, response_mask: torch.Tensor, node_index: torch.Tensor, nodes: NodeStats,
                     options: IBTPOOptions = IBTPOOptions(), eps: float = 1e-4, **_) -> torch.Tensor:
    """IB-TPO step-level advantage (IB-TPO, arXiv 2605.28109; METHOD.md section 5).

        A_GL(s) = (V(s) - V(root)) / (sigma + eps)                     global: improvement over the question
        A_IB(s) = conf_ref(s) * (p_hat(s) / p_hat(p) - (1 + 1/beta))   local: does this step raise p(a*)?
        A(s)    = A_GL(s) + lambda * A_IB(s)

    V = mean leaf reward under a node, which is p_hat (share of correct leaves, ``ibtpo.core.correct``) for 0/1 rewards;
    with other rewards (a format bonus, partial credit) the global term follows the reward as GRPO does [choice], and
    the local IB term keeps p_hat, the chance of a correct answer.
    sigma = unbiased std of the tree's leaf rewards (GRPO's group std); a tree with sigma = 0 gets A = 0 [choice];
    p_hat(p) = 0 gives ratio 1 [choice, as the IB rule]; conf_ref = behaviour-policy step confidence (length-normalised
    by default), detached [choice]; optional 1/sqrt(n_leaves(s)) (``leaf_weight``).
    With lambda = 0 on independent samples this is exactly GRPO's advantage, for any rewards (tested).
    node_index (bs, T), nodes (M,) -> advantages (bs, T).
    """
    sigma = nodes.tree_reward_std
    root_value = nodes.root_p_hat if nodes.root_value is None else nodes.root_value
    a_gl = (nodes.value - root_value) / (sigma + eps)
    a_ib = ib_term(nodes.confidence(options.ib.conf_mode), info_gain(nodes.p_hat, nodes.parent_p_hat),
                   options.ib.beta)
    adv = torch.where(sigma > 0, a_gl + options.lam * a_ib, torch.zeros_like(a_gl))
    if options.leaf_weight:
        adv = adv / nodes.n_leaves.clamp(min=1).sqrt()
    return per_token(adv, node_index, response_mask)


# --- 4. presets ------------------------------------------------------------------------------------------------------

register_preset("ibtree_grpo", Preset({"sampler": "ib", "adv_estimator": "tree_grpo", "policy_loss": "ppo_clip",
                                       **TREE_SHAPE},
                                      "IBTree sampler, GRPO advantage over its leaves (sampler-only ablation)",
                                      "IB-TPO, arXiv 2605.28109"))
register_preset("ib_tpo", Preset({"sampler": "ib", "adv_estimator": "ib_tpo", "policy_loss": "ppo_clip",
                                  "ib_tpo_lambda": IBTPOOptions.lam, **TREE_SHAPE},
                                 "IB-TPO: IBTree sampler + step-level A_GL + 0.1 A_IB",
                                 "IB-TPO, arXiv 2605.28109"))
