"""GRPO and its regularised variants (the baselines of the family), and GRPO over a tree's leaves.

- ``grpo`` estimator: the group-normalised outcome advantage (DeepSeekMath, arXiv 2402.03300), on every token;
- ``tree_grpo`` estimator: the same with one group per tree (leaves = trajectories), used by tree ablations;
- presets: ``grpo``, ``grpo_clip_higher`` (DAPO), ``grpo_entropy``, ``clip_cov`` and ``kl_cov`` (arXiv 2505.22617;
  their token selection is a policy loss in ``algos/losses.py``), ``ibro`` (IIB-LPO's advantage-weighted entropy
  regulariser, ``algos/losses.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ibtpo.algos.advantages import group_stats, register_adv_est
from ibtpo.core.group_std import group_std
from ibtpo.algos.presets import Preset, register_preset
from ibtpo.core.registry import config_field


@dataclass(frozen=True)
class GRPOOptions:
    """Options of the ``grpo`` and ``tree_grpo`` estimators."""

    scale_rewards: str = config_field("group", "scale_rewards", "Divide centred rewards by the group std, the batch "
                                      "std, or not at all.")


@register_adv_est("grpo", options=GRPOOptions)
def grpo_advantage(*, rewards: torch.Tensor, response_mask: torch.Tensor, group_ids: torch.Tensor,
                   options: GRPOOptions = GRPOOptions(), scale_rewards: str | None = None, eps: float = 1e-4,
                   **_) -> torch.Tensor:
    """GRPO outcome advantage (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300).

    A_i = (R_i - mean_group(R)) / (std + eps), broadcast to every response token. `scale_rewards` (TRL's name):
    "group" divides by the group's std, "batch" by the std of the whole batch, "none" does not divide (Dr. GRPO,
    arXiv 2503.20783). Std is unbiased (``core.group_std``, as torch.std), as in TRL and verl. A group whose rewards
    are all equal gets 0.

    rewards (bs,), response_mask (bs, T), group_ids (bs,) -> advantages (bs, T).
    """
    scale_rewards = scale_rewards or options.scale_rewards
    rewards = rewards.float()
    mean, std = group_stats(rewards, group_ids)
    centred = rewards - mean
    if scale_rewards == "group":
        adv = centred / (std + eps)
    elif scale_rewards == "batch":
        adv = centred / (group_std(rewards) + eps) if rewards.numel() > 1 else centred
    elif scale_rewards == "none":
        adv = centred
    else:
        raise ValueError(f"scale_rewards must be group, batch or none; got {scale_rewards!r}")
    return adv[:, None] * response_mask.float()


@register_adv_est("tree_grpo", options=GRPOOptions)
def tree_grpo_advantage(**kwargs) -> torch.Tensor:
    """GRPO's outcome advantage over the leaves of each tree (the IB-TPO paper's "IBTree sampler only" ablation).

    Every leaf's root-to-leaf path is one sequence and its group is its tree (``group_ids`` = tree index), so this is
    ``grpo`` with groups = trees: A_i = (R_i - mean_tree(R)) / (std_tree(R) + eps) on every token of path i, shared
    prefix tokens included (no down-weighting). Same arguments and shapes as ``grpo``.
    """
    return grpo_advantage(**kwargs)


_GRPO = {"sampler": "independent", "adv_estimator": "grpo", "policy_loss": "ppo_clip"}
register_preset("grpo", Preset(dict(_GRPO), "GRPO: G independent samples, group-normalised outcome advantage, PPO clip",
                               "DeepSeekMath, arXiv 2402.03300"))
register_preset("grpo_clip_higher", Preset({**_GRPO, "epsilon_high": 0.28},
                                           "GRPO with the upper clip range raised to 0.28", "DAPO, arXiv 2503.14476"))
register_preset("grpo_entropy", Preset({**_GRPO, "entropy_coef": 0.01}, "GRPO + entropy bonus (coefficient 0.01)",
                                       "entropy-regularised policy gradient; IB-TPO baseline"))
register_preset("clip_cov", Preset({**_GRPO, "policy_loss": "clip_cov"},
                                   "GRPO whose high-covariance tokens (a 2e-4 share) get no gradient",
                                   "Cui et al., arXiv 2505.22617"))
register_preset("kl_cov", Preset({**_GRPO, "policy_loss": "kl_cov"},
                                 "GRPO with a KL penalty on the highest-covariance tokens (a 2e-3 share)",
                                 "Cui et al., arXiv 2505.22617"))
register_preset("ibro", Preset({**_GRPO, "ibro_coef": 0.01},
                               "GRPO + advantage-weighted entropy term (coefficient 0.01)",
                               "IIB-LPO's released code, arXiv 2601.05870"))
