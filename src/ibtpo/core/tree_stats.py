"""The statistics of a tree node that the IB-Score, the IB rule and the step-level advantages share, written once.

Each works on Python floats (the tree rules, the IB-Score of one node) and on per-node tensors (the estimators in the
training batch), with the same arithmetic, so both paths give the same numbers:

- ``p_hat(x)``: share of correct leaves under x (``core.tree.compute_p_hat``);
- :func:`step_confidence`: the policy's confidence in a step, exp(mean token log-prob) or exp(sum);
- :func:`info_gain`: r(c) = p_hat(c) / p_hat(parent), 1 where the parent's p_hat is 0 [choice];
- :func:`ib_term`: conf(c) * (r(c) - (1 + 1/beta)), the per-step term of the IB-Score (METHOD.md section 3) and,
  for a trained step, IB-TPO's local advantage A_IB (section 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ibtpo.core.registry import config_field

CONF_MODES = ("mean", "product")


@dataclass(frozen=True)
class IBOptions:
    """Options of the IB-Score and of everything built on it (the IB rule, IB-TPO's A_IB, the probe)."""

    beta: float = config_field(5.0, "ib_beta", "IB-Score trade-off beta (METHOD.md section 3).")
    conf_mode: str = config_field("mean", "ib_conf", "Step confidence: exp(mean token log-prob) or exp(sum).")
    zero_phat: str = config_field("one", "ib_zero_phat", "IB rule at a node with p_hat = 0: r = 1, or skip it.")


IB_DEFAULTS = IBOptions()
"""The defaults, written once (the run config's ``ib_beta``, ``ib_conf``, ``ib_zero_phat`` refer to them)."""


def step_confidence(logp_sum, length, mode: str = "mean"):
    """exp(logp_sum / length) ("mean", length-normalised) or exp(logp_sum) ("product"); an empty step is 1.

    Floats, or tensors of equal shape (M,) -> (M,)."""
    if mode not in CONF_MODES:
        raise ValueError(f"confidence mode must be mean or product; got {mode!r}")
    if isinstance(logp_sum, torch.Tensor):
        return (logp_sum / length.clamp(min=1) if mode == "mean" else logp_sum).exp()
    if not length:
        return 1.0
    return math.exp(logp_sum / length if mode == "mean" else logp_sum)


def info_gain(p_hat, parent_p_hat):
    """r = p_hat / p_hat(parent), and r = 1 where p_hat(parent) = 0 (then p_hat is 0 too: no information).

    Floats, or tensors (M,) -> (M,)."""
    if isinstance(p_hat, torch.Tensor):
        return torch.where(parent_p_hat > 0, p_hat / parent_p_hat.clamp(min=1e-12), torch.ones_like(p_hat))
    return float(p_hat) / float(parent_p_hat) if parent_p_hat else 1.0


def ib_term(conf, gain, beta: float):
    """conf * (r - (1 + 1/beta)): one step's term of the IB-Score, and IB-TPO's local advantage A_IB of a step.

    Floats, or tensors (M,) -> (M,)."""
    return conf * (gain - (1.0 + 1.0 / beta))
