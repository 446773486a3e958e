"""Policy losses and regularisers, registered by name; every loss returns ``(loss, metrics)``.

Shapes: per-token tensors are (bs, T), aligned so that column t is the t-th predicted token; ``mask`` is 1 on trained
(response) tokens. A policy loss has the signature ``(old_logp, logp, advantages, mask, cfg) -> (loss, metrics)``
where ``cfg`` is a :class:`LossConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ibtpo.core.registry import Registry, config_field

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class LossConfig:
    """Options shared by the policy losses and regularisers (the typed options of ``POLICY_LOSSES``); a field takes
    the run-config field of its name, or the one ``config_field`` names (``core.registry.options_from``)."""

    epsilon: float = 0.2
    """Lower clip range: the ratio is clipped below at 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip range (clip-higher, DAPO); None means epsilon."""
    dual_clip_c: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (Ye et al. 2020); None = off."""
    loss_agg_mode: str = "seq-mean-token-mean"
    """How token losses become one number (verl names): token-mean, seq-mean-token-mean, seq-mean-token-sum-norm."""
    norm_length: int = config_field(64, "max_completion_length")
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
    kl_coef: float = config_field(0.0, "beta")
    """Regulariser ``kl``: coefficient of the k3 KL to the reference policy (config ``beta``)."""
    entropy_coef: float = 0.0
    """Regulariser ``entropy``: entropy bonus coefficient."""
    ibro_coef: float = 0.0
    """Regulariser ``ibro``: coefficient of the advantage-weighted entropy term."""
    agg_denominator: float | None = None
    """Set per mini-batch when it is split into micro-batches: the aggregation's denominator over the WHOLE mini-batch
    (``agg_denominator``), so that the micro-batch losses sum to the mini-batch loss. None = from the given mask."""


def agg_denominator(mask: torch.Tensor, mode: str, norm_length: int = 1) -> torch.Tensor:
    """The denominator of :func:`agg_loss` for a (bs, T) mask: response tokens (token-mean), sequences with at least
    one response token (seq-mean-token-mean), or those sequences times ``norm_length`` (seq-mean-token-sum-norm).
    Fully masked rows never count. A scalar tensor >= 1."""
    mask = mask.float()
    if mode == "token-mean":
        return mask.sum().clamp(min=1)
    has_tokens = (mask.sum(-1) > 0).float()
    if mode == "seq-mean-token-mean":
        return has_tokens.sum().clamp(min=1)
    if mode == "seq-mean-token-sum-norm":
        return has_tokens.sum().clamp(min=1) * norm_length
    raise ValueError(f"loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}; got {mode!r}")


def agg_loss(values: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int = 1,
             denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """Aggregate per-token values (bs, T) under mask (bs, T) into a scalar.

    token-mean: sum over all tokens / number of tokens (TRL "dapo").
    seq-mean-token-mean: mean over sequences of the per-sequence token mean (TRL "grpo").
    seq-mean-token-sum-norm: mean over sequences of the token sum divided by a constant (TRL "dr_grpo").
    Sequences without response tokens are not counted. `denominator` (from :func:`agg_denominator` over a whole
    mini-batch) replaces the one of this mask: then the values of the micro-batches of a mini-batch sum to its value.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}; got {mode!r}")
    mask = mask.to(values.dtype)
    if denominator is None:
        denominator = agg_denominator(mask, mode, norm_length).to(values.dtype)
    if mode == "seq-mean-token-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        has_tokens = (mask.sum(-1) > 0).to(values.dtype)
        return (per_seq * has_tokens).sum() / denominator
    return (values * mask).sum() / denominator


SUMMED_METRICS = ("actor/pg_loss", "actor/kl", "actor/entropy_bonus", "actor/ibro_term")
"""Loss metrics aggregated like the loss: over micro-batches they add up; every other metric is a token mean."""


def combine_micro_metrics(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Metrics of a mini-batch from those of its micro-batches, given as (metrics, response tokens) pairs."""
    if len(parts) == 1:
        return dict(parts[0][0])
    total = sum(n for _, n in parts) or 1.0
    out: dict[str, float] = {}
    for key in parts[0][0]:
        if key in SUMMED_METRICS:
            out[key] = sum(m[key] for m, _ in parts)
        else:
            out[key] = sum(m[key] * n for m, n in parts) / total
    return out


def _agg(values: torch.Tensor, mask: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    return agg_loss(values, mask, cfg.loss_agg_mode, cfg.norm_length, cfg.agg_denominator)


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


@register_policy_loss("ppo_clip", options=LossConfig)
def ppo_clip_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  cfg: LossConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347) as used by GRPO, with clip-higher.

    loss_t = -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps_high) A_t), r_t = exp(logp_t - old_logp_t);
    with dual clip, for A_t < 0 the loss is further capped at -c A_t.
    All inputs (bs, T) -> scalar loss; metrics: actor/pg_loss, actor/pg_clipfrac, actor/ppo_kl.
    """
    log_ratio, unclipped, clipped = _surrogates(old_logp, logp, advantages, cfg)
    loss = _agg(_clipped_loss(unclipped, clipped, advantages, cfg), mask, cfg)
    return loss, _pg_metrics(loss, clipped > unclipped, log_ratio, mask)


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token centred product (logp_t - mean logp) * (A_t - mean A) over the masked tokens, detached; 0 elsewhere.

    The covariance between log-probability and advantage that drives entropy change (Cui et al. 2025). (bs, T).
    """
    m = mask.bool()
    lp, adv = logp.detach(), advantages.detach()
    cov = (lp - lp[m].mean()) * (adv - adv[m].mean()) if m.any() else torch.zeros_like(lp)
    return torch.where(m, cov, torch.zeros_like(cov))


def clip_cov_select(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    cfg: LossConfig) -> torch.Tensor:
    """Clip-Cov's token selection over a whole mini-batch: (bs, T) float, 0 on the tokens whose gradient is removed.

    A random ``clip_cov_ratio`` share of the response tokens, drawn among those not clipped by PPO whose covariance
    (``token_covariance``) lies in (clip_cov_lb, clip_cov_ub). Draws use torch's global CPU RNG (checkpointed).
    `logp` is only read (detached): with micro-batches the trainer selects once per mini-batch and slices.
    """
    _, unclipped, clipped = _surrogates(old_logp, logp.detach(), advantages, cfg)
    cov = token_covariance(logp, advantages, mask)
    band = mask.bool() & ~(clipped > unclipped) & (cov > cfg.clip_cov_lb) & (cov < cfg.clip_cov_ub)
    candidates = band.flatten().nonzero().squeeze(-1)
    n_pick = min(candidates.numel(), max(1, int(cfg.clip_cov_ratio * int(mask.sum()))))
    keep = torch.ones(mask.numel(), dtype=logp.dtype, device=logp.device)
    keep[candidates[torch.randperm(candidates.numel())[:n_pick].to(candidates.device)]] = 0.0  # CPU RNG draws
    return keep.view_as(mask)


@register_policy_loss("clip_cov", options=LossConfig)
def clip_cov_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  cfg: LossConfig, select: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

    The PPO clipped loss, except that the tokens :func:`clip_cov_select` picks contribute no gradient:
    high-covariance tokens are what drives entropy down. `select` is that (bs, T) keep mask when it was computed
    over a larger mini-batch (micro-batching); None = select within these rows.
    All inputs (bs, T) -> scalar loss; metrics add actor/clip_cov_frac.
    """
    keep = clip_cov_select(old_logp, logp, advantages, mask, cfg) if select is None else select
    log_ratio, unclipped, clipped = _surrogates(old_logp, logp, advantages, cfg)
    per_token = _clipped_loss(unclipped, clipped, advantages, cfg)
    loss = _agg(per_token * keep, mask, cfg)
    metrics = _pg_metrics(loss, clipped > unclipped, log_ratio, mask)
    metrics["actor/clip_cov_frac"] = float(((1 - keep) * mask).sum()) / max(1, int(mask.sum()))
    return loss, metrics


def kl_cov_select(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  cfg: LossConfig) -> torch.Tensor:
    """KL-Cov's token selection over a whole mini-batch: (bs, T) float, 1 on the ``kl_cov_ratio`` share of response
    tokens with the highest covariance (``token_covariance``; `logp` is only read, detached)."""
    cov = token_covariance(logp, advantages, mask).masked_fill(~mask.bool(), float("-inf"))
    n_valid = int(mask.sum())
    k = min(n_valid, max(1, int(cfg.kl_cov_ratio * n_valid))) if n_valid else 0
    selected = torch.zeros(cov.numel(), dtype=logp.dtype, device=logp.device)
    if k:
        selected[cov.flatten().topk(k).indices] = 1.0
    return selected.view_as(mask)


@register_policy_loss("kl_cov", options=LossConfig)
def kl_cov_loss(old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cfg: LossConfig, select: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """KL-Cov (Cui et al. 2025, arXiv 2505.22617): the unclipped surrogate -r_t A_t, plus
    ``kl_cov_coef * |logp_t - old_logp_t|`` on the tokens :func:`kl_cov_select` picks (`select`: that mask computed
    over a larger mini-batch; None = within these rows). No ratio clipping, as in the paper. The penalty has zero
    gradient where log pi = log pi_old exactly and acts fully from the second mini-batch or PPO epoch of a rollout
    batch on. With the sampler's old log-probs, which differ from the training forward in the last bits on ~20% of
    tokens (``experiments/logp_mismatch.py``), even on-policy the penalty pushes with gradient +-coef.
    All inputs (bs, T) -> scalar loss; metrics add actor/kl_cov_frac.
    """
    selected = kl_cov_select(old_logp, logp, advantages, mask, cfg) if select is None else select
    log_ratio, unclipped, _ = _surrogates(old_logp, logp, advantages, cfg)
    per_token = unclipped + cfg.kl_cov_coef * selected * (logp - old_logp).abs()
    loss = _agg(per_token, mask, cfg)
    metrics = _pg_metrics(loss, torch.zeros_like(mask), log_ratio, mask)
    metrics["actor/kl_cov_frac"] = float((selected * mask).sum()) / max(1, int(mask.sum()))
    return loss, metrics


TOKEN_SELECTORS: dict[str, Callable[..., torch.Tensor]] = {"clip_cov": clip_cov_select, "kl_cov": kl_cov_select}
"""Policy losses whose token selection reads statistics of the whole mini-batch: the trainer computes it once per
mini-batch (``select(old_logp, logp, advantages, mask, cfg)``) and passes slices as ``select=`` to each micro-batch."""


RegularizerFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
REGULARIZERS: Registry[RegularizerFn] = Registry("regulariser")
"""Terms added to the policy loss: ``fn(logp, entropy, advantages, mask, ref_logp, cfg) -> (term, metrics)``,
each already multiplied by its coefficient; the trainer adds those whose coefficient is > 0."""


@REGULARIZERS.register("kl")
def kl_regularizer(logp, entropy, advantages, mask, ref_logp, cfg: LossConfig):
    """k3 KL(pi || pi_ref) to the frozen reference, aggregated like the policy loss, times ``kl_coef`` (GRPO)."""
    kl = _agg(kl_k3(logp, ref_logp), mask, cfg)
    return cfg.kl_coef * kl, {"actor/kl": float(kl.detach())}


@REGULARIZERS.register("entropy")
def entropy_regularizer(logp, entropy, advantages, mask, ref_logp, cfg: LossConfig):
    """Entropy bonus: -entropy_coef * aggregated token entropy (verl's entropy_coeff)."""
    ent = _agg(entropy, mask, cfg)
    return -cfg.entropy_coef * ent, {"actor/entropy_bonus": float(ent.detach())}


@REGULARIZERS.register("ibro")
def ibro_regularizer(logp, entropy, advantages, mask, ref_logp, cfg: LossConfig):
    """IBRO, the advantage-weighted entropy term of IIB-LPO's released code (arXiv 2601.05870), as we read it:
    -ibro_coef * agg(A_t * H_t). Entropy rises on the tokens of better-than-average steps and falls on worse ones,
    instead of rising everywhere as with the plain bonus."""
    term = _agg(advantages.detach() * entropy, mask, cfg)
    return -cfg.ibro_coef * term, {"actor/ibro_term": float(term.detach())}


KL_K3_MAX = 10.0
"""Cap of the per-token k3 value (as verl's low_var_kl): a token far from the reference adds at most this much, and
no gradient beyond it, instead of a value and gradient growing like exp(ref_logp - logp)."""


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman's approximation, used by GRPO): exp(d) - d - 1 with
    d = ref_logp - logp clamped to [-20, 20], the result clamped to [0, KL_K3_MAX] (verl's clamp: a few tokens far
    from the reference cannot dominate the loss). Always >= 0. (bs, T) -> (bs, T)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)
    return (d.exp() - d - 1.0).clamp(0.0, KL_K3_MAX)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis. (..., V) -> (...)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)
