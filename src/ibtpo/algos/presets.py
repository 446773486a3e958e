"""Algorithm presets: each is a sampler + an advantage estimator + a policy loss (+ regularisers), by name.

``algorithm=NAME`` fills these config fields unless the user sets them (precedence: field defaults < preset < YAML
< command line), so every method of the family runs from one switch and any part can still be overridden, e.g.
``algorithm=ib_tpo ib_tpo_lambda=0`` (the sampler-only ablation) or ``algorithm=ib_tpo sampler=random``.

Shared settings (KL coefficient, learning rate, sampling, budget) are not part of a preset, so a comparison changes
only the algorithm. The IB-TPO paper trains every method with a k3 KL of 0.001 (``beta=0.001``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One method of the family."""

    fields: dict[str, Any]
    """Config fields the preset sets."""
    summary: str
    """What it is, in one line."""
    paper: str
    """Where it comes from."""


_TREE = {"tree_b0": 4, "tree_l": 9, "tree_k": 1, "tree_b": 1}  # the paper's (B0, L, K, B): G = 12
_IIB = {"sampler": "iib", "adv_estimator": "grpo", "policy_loss": "ppo_clip", "tree_b0": 4, "iib_forks": 2,
        "ibro_coef": 0.005}  # 4 rollouts + 2 latent branches each: G = 12, as IB-TPO's; IBRO as in the authors' code

PRESETS: dict[str, Preset] = {
    "grpo": Preset({"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "ppo_clip"},
                   "GRPO: G independent samples, group-normalised outcome advantage, PPO clip",
                   "DeepSeekMath, arXiv 2402.03300"),
    "grpo_clip_higher": Preset({"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "ppo_clip",
                                "epsilon_high": 0.28},
                               "GRPO with the upper clip range raised to 0.28",
                               "DAPO, arXiv 2503.14476"),
    "grpo_entropy": Preset({"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "ppo_clip",
                            "entropy_coef": 0.01},
                           "GRPO + entropy bonus (coefficient 0.01)",
                           "entropy-regularised policy gradient; IB-TPO baseline"),
    "clip_cov": Preset({"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "clip_cov"},
                       "GRPO whose high-covariance tokens (a 2e-4 share) get no gradient",
                       "Cui et al., arXiv 2505.22617"),
    "kl_cov": Preset({"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "kl_cov"},
                     "GRPO with a KL penalty on the highest-covariance tokens (a 2e-3 share)",
                     "Cui et al., arXiv 2505.22617"),
    "ibro": Preset({"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "ppo_clip", "ibro_coef": 0.01},
                   "GRPO + advantage-weighted entropy term (coefficient 0.01)",
                   "IIB-LPO's released code, arXiv 2601.05870"),
    "treerl": Preset({"sampler": "entropy", "adv_estimator": "treerl", "policy_loss": "ppo_clip",
                      "adv_leaf_weight": True, **_TREE},
                     "entropy-guided tree (fork at the highest -log p tokens), global + local value advantage",
                     "TreeRL, arXiv 2506.11902"),
    "treepo": Preset({"sampler": "fixed_width", "adv_estimator": "treepo", "policy_loss": "ppo_clip", **_TREE},
                     "fixed-width segment tree, ancestor sub-group advantage",
                     "TreePO, arXiv 2508.17445"),
    "random_tree": Preset({"sampler": "random", "adv_estimator": "tree_grpo", "policy_loss": "ppo_clip", **_TREE},
                          "tree forking at uniformly drawn nodes, GRPO advantage over its leaves",
                          "random-branching ablation of IB-TPO, arXiv 2605.28109"),
    "ibtree_grpo": Preset({"sampler": "ib", "adv_estimator": "tree_grpo", "policy_loss": "ppo_clip", **_TREE},
                          "IBTree sampler, GRPO advantage over its leaves (sampler-only ablation)",
                          "IB-TPO, arXiv 2605.28109"),
    "ib_tpo": Preset({"sampler": "ib", "adv_estimator": "ib_tpo", "policy_loss": "ppo_clip", "ib_tpo_lambda": 0.1,
                      **_TREE},
                     "IB-TPO: IBTree sampler + step-level A_GL + 0.1 A_IB",
                     "IB-TPO, arXiv 2605.28109"),
    "iib_lpo": Preset({**_IIB, "iib_latent": "cvae", "iib_keep": 8, "iib_self_reward": 0.1},
                      "IIB-LPO: entropy-triggered forks with a CVAE latent code, IB filter (top 8 of 12) + self-reward, "
                      "IBRO 0.005",
                      "IIB-LPO, arXiv 2601.05870 (reconstructed: README)"),
    "iib_lpo_no_latent": Preset({**_IIB, "iib_latent": "none", "iib_keep": 8, "iib_self_reward": 0.1},
                                "IIB-LPO without the latent code: plain entropy-triggered forks, IB filter, IBRO",
                                "ablation of IIB-LPO, arXiv 2601.05870"),
    "iib_lpo_no_filter": Preset({**_IIB, "iib_latent": "cvae", "iib_keep": 0, "iib_self_reward": 0.0},
                                "IIB-LPO without the IB filter and self-reward: all 12 trajectories, outcome reward",
                                "ablation of IIB-LPO, arXiv 2601.05870"),
}
ALGORITHM_NAMES = tuple(PRESETS)


def apply_preset(data: dict[str, Any], default: str) -> dict[str, Any]:
    """Raw config input with the preset's fields filled in where `data` does not set them."""
    preset = PRESETS.get(data.get("algorithm", default))
    return data if preset is None else {**preset.fields, **data}
