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
    clip_cov_ratio: float = 2e-4
    """clip_cov: share of response tokens whose gradient is removed (Cui et al. 2025: 2e-4)."""
    clip_cov_lb: float = 1.0
    """clip_cov: tokens are drawn among those with covariance in (lb, ub)."""
    clip_cov_ub: float = 5.0
    """clip_cov: upper covariance bound."""
    kl_cov_ratio: float = 2e-3
    """kl_cov: share of response tokens, those with the highest covariance, that get the KL penalty (paper: 2e-3)."""
    kl_cov_coef: float = 1.0
    """kl_cov: coefficient of |log pi - log pi_old| on the selected tokens."""
    kl_coef: float = 0.0
    """Regulariser ``kl``: coefficient of the k3 KL to the reference policy (config ``beta``)."""
    entropy_coef: float = 0.0
    """Regulariser ``entropy``: entropy bonus coefficient."""
    ibro_coef: float = 0.0
    """Regulariser ``ibro``: coefficient of the advantage-weighted entropy term."""


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


def _surrogates(old_logp, logp, advantages, cfg: LossConfig):
    """log ratio, the unclipped and the clipped per-token surrogate losses (bs, T)."""
    eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    return log_ratio, -advantages * ratio, -advantages * ratio.clamp(1.0 - cfg.epsilon, 1.0 + eps_high)


def _clipped_loss(unclipped, clipped, advantages, cfg: LossConfig) -> torch.Tensor:
    per_token = torch.maximum(unclipped, clipped)
    if cfg.dual_clip_c is not None:
        capped = torch.minimum(per_token, -advantages * cfg.dual_clip_c)
        per_token = torch.where(advantages < 0, capped, per_token)
    return per_token


def _pg_metrics(loss, clip_active, log_ratio, mask) -> dict[str, float]:
    return {"actor/pg_loss": float(loss.detach()), "actor/pg_clipfrac": float(masked_mean(clip_active.float(), mask)),
            "actor/ppo_kl": float(masked_mean(-log_ratio.detach(), mask))}


@register_policy_loss("ppo_clip")
def ppo_clip_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) as used by GRPO, with clip-higher.

    loss_t = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t), r_t = exp(logp_t - old_logp_t);
    with dual clip, for A_t < 0 the loss is further capped at -c A_t.
    All inputs (bs, T) -> scalar loss; metrics: actor/pg_loss, actor/pg_clipfrac, actor/ppo_kl.
    """
    log_ratio, unclipped, clipped = _surrogates(old_logp, logp, advantages, cfg)
    loss = agg_loss(_clipped_loss(unclipped, clipped, advantages, cfg), mask, cfg.loss_agg_mode, cfg.norm_length)
    return loss, _pg_metrics(loss, clipped > unclipped, log_ratio, mask)


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token centred product (logp_t - mean logp) * (A_t - mean A) over the masked tokens, detached; 0 elsewhere.

    The covariance between log-probability and advantage that drives entropy change (Cui et al. 2025). (bs, T).
    """
    m = mask.bool()
    lp, adv = logp.detach(), advantages.detach()
    cov = (lp - lp[m].mean()) * (adv - adv[m].mean()) if m.any() else torch.zeros_like(lp)
    return torch.where(m, cov, torch.zeros_like(cov))


@register_policy_loss("clip_cov")
def clip_cov_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

    The PPO clipped loss, except that a random ``clip_cov_ratio`` share of the response tokens, drawn among those not
    already clipped whose covariance (``token_covariance``) lies in (clip_cov_lb, clip_cov_ub), contributes no
    gradient: high-covariance tokens are what drives entropy down. Draws use torch's global RNG (checkpointed).
    All inputs (bs, T) -> scalar loss; metrics add actor/clip_cov_frac.
    """
    log_ratio, unclipped, clipped = _surrogates(old_logp, logp, advantages, cfg)
    per_token = _clipped_loss(unclipped, clipped, advantages, cfg)
    cov = token_covariance(logp, advantages, mask)
    band = mask.bool() & ~(clipped > unclipped) & (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub)
    candidates = band.flatten().nonzero().squeeze(-1)
    n_pick = min(candidates.numel(), max(1, int(cfg.clip_cov_ratio * int(mask.sum()))))
    keep = torch.ones(per_token.numel(), dtype=per_token.dtype, device=per_token.device)
    keep[candidates[torch.randperm(candidates.numel())[:n_pick].to(candidates.device)]] = 0.0  # CPU RNG draws
    loss = agg_loss(per_token * keep.view_as(per_token), mask, cfg.loss_agg_mode, cfg.norm_length)
    metrics = _pg_metrics(loss, clipped > unclipped, log_ratio, mask)
    metrics["actor/clip_cov_frac"] = n_pick / max(1, int(mask.sum()))
    return loss, metrics


@register_policy_loss("kl_cov")
def kl_cov_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): the unclipped surrogate -r_t A_t, plus
    ``kl_cov_coef * |logp_t - old_logp_t|`` on the ``kl_cov_ratio`` share of response tokens with the highest
    covariance (``token_covariance``). No ratio clipping, as in the paper. The penalty has zero gradient where
    log pi = log pi_old exactly and acts fully from the second mini-batch or PPO epoch of a rollout batch on. Our
    old log-probs are the sampler's, which differ from the training forward in the last bits on ~20% of tokens
    (``experiments/logp_mismatch.py``): there, even on-policy, the penalty pushes with gradient +-coef.
    All inputs (bs, T) -> scalar loss; metrics add actor/kl_cov_frac.
    """
    log_ratio, unclipped, _ = _surrogates(old_logp, logp, advantages, cfg)
    cov = token_covariance(logp, advantages, mask).masked_fill(~mask.bool(), float("-inf"))
    n_valid = int(mask.sum())
    k = min(n_valid, max(1, int(cfg.kl_cov_ratio * n_valid))) if n_valid else 0
    selected = torch.zeros(cov.numel(), dtype=unclipped.dtype, device=unclipped.device)
    if k:
        selected[cov.flatten().topk(k).indices] = 1.0
    per_token = unclipped + cfg.kl_cov_coef * selected.view_as(unclipped) * (logp - old_logp).abs()
    loss = agg_loss(per_token, mask, cfg.loss_agg_mode, cfg.norm_length)
    metrics = _pg_metrics(loss, torch.zeros_like(mask), log_ratio, mask)
    metrics["actor/kl_cov_frac"] = k / max(1, n_valid)
    return loss, metrics


RegularizerFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
REGULARIZERS: Registry[RegularizerFn] = Registry("regulariser")
"""Terms added to the policy loss: ``fn(logp, entropy, advantages, mask, ref_logp, cfg) -> (term, metrics)``,
each already multiplied by its coefficient; the trainer adds those whose coefficient is > 0."""


@REGULARIZERS.register("kl")
def kl_regularizer(logp, entropy, advantages, mask, ref_logp, cfg: LossConfig):
    """k3 KL(pi || pi_ref) to the frozen reference, aggregated like the policy loss, times ``kl_coef`` (GRPO)."""
    kl = agg_loss(kl_k3(logp, ref_logp), mask, cfg.loss_agg_mode, cfg.norm_length)
    return cfg.kl_coef * kl, {"actor/kl": float(kl.detach())}


@REGULARIZERS.register("entropy")
def entropy_regularizer(logp, entropy, advantages, mask, ref_logp, cfg: LossConfig):
    """Entropy bonus: -entropy_coef * aggregated token entropy (verl's entropy_coeff)."""
    ent = agg_loss(entropy, mask, cfg.loss_agg_mode, cfg.norm_length)
    return -cfg.entropy_coef * ent, {"actor/entropy_bonus": float(ent.detach())}


@REGULARIZERS.register("ibro")
def ibro_regularizer(logp, entropy, advantages, mask, ref_logp, cfg: LossConfig):
    """IBRO, the advantage-weighted entropy term of IIB-LPO's released code (arXiv 2601.05870), as we read it:
    -ibro_coef * agg(A_t * H_t). Entropy rises on the tokens of better-than-average steps and falls on worse ones,
    instead of rising everywhere as with the plain bonus."""
    term = agg_loss(advantages.detach() * entropy, mask, cfg.loss_agg_mode, cfg.norm_length)
    return -cfg.ibro_coef * term, {"actor/ibro_term": float(term.detach())}


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman's approximation, used by GRPO): exp(d) - d - 1 with
    d = ref_logp - logp. Always >= 0. (bs, T) -> (bs, T)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return d.exp() - d - 1.0


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis. (..., V) -> (...)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
