"""Policy losses and regularisers, registered by name; every loss returns ``(loss, metrics)``.

Shapes: per-token tensors are (bs, T), aligned so that column t is the t-th predicted token; ``mask`` is 1 on trained
(response) tokens. A policy loss has the signature ``(old_logp, logp, advantages, mask, cfg) -> (loss, metrics)``
where ``cfg`` is a :class:`LossConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ibtpo.registry import Registry

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class LossConfig:
    """Options shared by the policy losses."""

    epsilon: float = 0.2
    """Lower clip range: the ratio is clipped below at 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip range (clip-higher, DAPO); None means epsilon."""
    dual_clip_c: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (Ye et al. 2020); None = off."""
    loss_agg_mode: str = "seq-mean-token-mean"
    """How token losses become one number (verl names): token-mean, seq-mean-token-mean, seq-mean-token-sum-norm."""
    norm_length: int = 64
    """Constant length divisor of seq-mean-token-sum-norm (Dr. GRPO); usually max_completion_length."""


def agg_loss(values: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int = 1) -> torch.Tensor:
    """Aggregate per-token values (bs, T) under mask (bs, T) into a scalar.

    token-mean: sum over all tokens / number of tokens (TRL "dapo").
    seq-mean-token-mean: mean over sequences of the per-sequence token mean (TRL "grpo").
    seq-mean-token-sum-norm: mean over sequences of the token sum divided by a constant (TRL "dr_grpo").
    """
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        has_tokens = (mask.sum(-1) > 0).to(values.dtype)
        return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1)
    if mode == "seq-mean-token-sum-norm":
        return (values * mask).sum() / (values.shape[0] * norm_length)
    raise ValueError(f"loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}; got {mode!r}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values over the positions where mask is 1."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get


@register_policy_loss("ppo_clip")
def ppo_clip_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) as used by GRPO, with clip-higher.

    loss_t = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t), r_t = exp(logp_t - old_logp_t);
    with dual clip, for A_t < 0 the loss is further capped at -c A_t.
    All inputs (bs, T) -> scalar loss; metrics: actor/pg_loss, actor/pg_clipfrac, actor/ppo_kl.
    """
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.epsilon, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped).float()
    if cfg.dual_clip_c is not None:
        capped = torch.minimum(per_token, -advantages * cfg.dual_clip_c)
        per_token = torch.where(advantages < 0, capped, per_token)
    loss = agg_loss(per_token, mask, cfg.loss_agg_mode, cfg.norm_length)
    metrics = {
        "actor/pg_loss": float(loss.detach()),
        "actor/pg_clipfrac": float(masked_mean(clip_active, mask)),
        "actor/ppo_kl": float(masked_mean(-log_ratio.detach(), mask)),
    }
    return loss, metrics


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman's approximation, used by GRPO): exp(d) - d - 1 with
    d = ref_logp - logp. Always >= 0. (bs, T) -> (bs, T)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return d.exp() - d - 1.0


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis. (..., V) -> (...)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
