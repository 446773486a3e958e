"""Random tree: the IB-TPO paper's random-branching ablation (arXiv 2605.28109).

- ``random`` branch rule (and sampler): K distinct non-leaf candidate nodes drawn uniformly per round;
- preset ``random_tree``: that sampler with GRPO's advantage over each tree's leaves (``tree_grpo``).
"""

from __future__ import annotations

import random

from ibtpo.algos.presets import TREE_SHAPE, Preset, register_preset
from ibtpo.rollout.rules import BRANCH_RULES, ForkPoint, RuleContext, node_candidates
from ibtpo.rollout.samplers import register_rule_sampler
from ibtpo.core.tree import Tree


@BRANCH_RULES.register("random")
def random_rule(tree: Tree, ctx: RuleContext, rng: random.Random) -> list[ForkPoint]:
    """K uniformly drawn candidate nodes."""
    cands = node_candidates(tree, ctx)
    if not cands:
        return []
    picked = rng.sample(cands, min(ctx.k, len(cands)))
    picked += [rng.choice(cands) for _ in range(ctx.k - len(picked))]
    return [(n, len(n.token_ids)) for n in picked]


register_rule_sampler("random")
register_preset("random_tree", Preset({"sampler": "random", "adv_estimator": "tree_grpo", "policy_loss": "ppo_clip",
                                       **TREE_SHAPE},
                                      "tree forking at uniformly drawn nodes, GRPO advantage over its leaves",
                                      "random-branching ablation of IB-TPO, arXiv 2605.28109"))
