"""One optimizer step's forward/backward, split into micro-batches whose gradients accumulate.

A mini-batch of ``mini_batch_size`` sequences is one optimizer step; it runs as forward/backward passes over
micro-batches of ``micro_batch_size`` rows (TRL: ``per_device_train_batch_size``; verl:
``ppo_micro_batch_size_per_gpu``), so memory depends on the micro-batch, not on the mini-batch. The gradient is the
same as one pass over the whole mini-batch:

- the loss aggregation's denominator (tokens, or sequences with tokens) is computed once over the whole mini-batch
  (``algos.losses.agg_denominator``) and every micro-batch divides its partial sum by it, so the micro losses add up
  to the mini-batch loss;
- losses whose token selection reads statistics of the whole mini-batch (Clip-Cov, KL-Cov:
  ``algos.losses.TOKEN_SELECTORS``) get that selection from one extra no-grad pass over the mini-batch;
- metrics are combined as the loss is (sums for loss terms, token means for the rest).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from ibtpo.algos.losses import LossConfig, agg_denominator, combine_micro_metrics

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""forward(rows) -> ((n, T) logp, (n, T) entropy) of those rows of the mini-batch, with gradients, on the device."""


@dataclass
class MiniBatch:
    """Per-token tensors of one mini-batch (n rows, T predicted columns), already on the training device."""

    mask: torch.Tensor
    """(n, T) float, 1 on response tokens."""
    old_logp: torch.Tensor
    """(n, T) old log-probs of the ratio."""
    advantages: torch.Tensor
    """(n, T) advantages seen by the regularisers."""
    pg_advantages: torch.Tensor
    """(n, T) advantages seen by the policy loss (= advantages, or times truncated IS weights)."""
    ref_logp: torch.Tensor | None = None
    """(n, T) reference log-probs for the KL term, or None."""

    @property
    def size(self) -> int:
        return self.mask.shape[0]


def accumulate_gradients(forward: Forward, mb: MiniBatch, loss_fn, regularizers: list, cfg: LossConfig,
                         micro_size: int, selector: Callable | None = None,
                         on_logp: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                         denominator: torch.Tensor | None = None, n_parts: int | None = None, loss_scale: float = 1.0,
                         sync: Callable[[bool], Any] | None = None,
                         global_select: Callable | None = None, on_policy: bool = False,
                         parts: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Backward the mini-batch loss in micro-batches of `micro_size` rows (0 = one pass); returns its metrics.

    Gradients are added to the parameters' ``.grad`` (zero them before). `selector`: the loss's whole-mini-batch token
    selection (``TOKEN_SELECTORS``), used when the mini-batch is split. `on_logp(rows, logp)` sees each micro-batch's
    detached log-probs (e.g. to measure the behaviour/training gap). Metrics add ``actor/loss``.

    `on_policy`: the weights are still those `mb.old_logp` stands for (the first mini-batch of a rollout batch). The
    old log-probs are then this forward's own detached log-probs (TRL and verl do the same on-policy), equal to
    ``mb.old_logp`` in exact arithmetic, so the ratio is exactly 1 and nothing depends on float noise between the
    sampler's or recompute pass's layout and this one (KL-Cov's |log ratio| penalty, whose gradient is the sign of
    that noise, has zero gradient as in exact arithmetic; any split into micro-batches or ranks gives the same step).

    Data-parallel runs (``training.distributed``) pass the GLOBAL `denominator` of the mini-batch, `n_parts` (every
    rank runs as many micro-batches; missing ones are zero-weight passes over row 0), `loss_scale` (backward of
    loss x world size, undoing the wrapper's gradient mean), `sync(last)`, the context of each pass, and
    `global_select(selector, old_logp, logp, advantages, mask, cfg)`: this rank's rows of the token selection made
    over every rank's rows of the mini-batch.

    `parts`: the micro-batches as lists of mini-batch rows, each row in exactly one (the packed layout's plan,
    ``training.packed.plan_parts``); None = consecutive runs of `micro_size` rows.
    """
    parts = list(parts) if parts is not None else list(torch.arange(mb.size).split(micro_size or mb.size))
    real = len(parts)
    parts += [torch.zeros(1, dtype=torch.long)] * ((n_parts or real) - real)  # zero-weight passes (data parallel)
    select = None
    if denominator is not None:
        cfg = replace(cfg, agg_denominator=denominator)
    elif len(parts) > 1:
        cfg = replace(cfg, agg_denominator=agg_denominator(mb.mask, cfg.loss_agg_mode, cfg.norm_length))
    if selector is not None and (len(parts) > 1 or global_select is not None):
        with torch.no_grad():
            logps = [forward(rows)[0] for rows in parts]  # every part: sharded models forward in lockstep
        logp_all = torch.cat(logps[:real])  # back to mini-batch row order (a packed plan's parts are any partition)
        logp_all = torch.empty_like(logp_all).index_copy_(0, torch.cat(parts[:real]).to(logp_all.device), logp_all)
        old_all = logp_all if on_policy else mb.old_logp
        if global_select is not None:
            select = global_select(selector, old_all, logp_all, mb.pg_advantages, mb.mask, cfg)
        else:
            select = selector(old_all, logp_all, mb.pg_advantages, mb.mask, cfg)
    collected = []
    total = 0.0
    for i, rows in enumerate(parts):
        with sync(i == len(parts) - 1) if sync is not None else contextlib.nullcontext():
            logp, entropy = forward(rows)
            if on_logp is not None and i < real:
                on_logp(rows, logp.detach())
            mask = mb.mask[rows] if i < real else torch.zeros_like(mb.mask[rows])
            kwargs = {} if select is None else {"select": select[rows]}
            old = logp.detach() if on_policy else mb.old_logp[rows]
            loss, metrics = loss_fn(old, logp, mb.pg_advantages[rows], mask, cfg, **kwargs)
            for reg in regularizers:
                ref = None if mb.ref_logp is None else mb.ref_logp[rows]
                term, reg_metrics = reg(logp, entropy, mb.advantages[rows], mask, ref, cfg)
                loss = loss + term
                metrics.update(reg_metrics)
            (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        total += float(loss.detach())
        collected.append((metrics, float(mask.sum())))
    out = combine_micro_metrics(collected)
    out["actor/loss"] = total
    return out


class LogpGap:
    """Running |behaviour - training| log-prob gap over response tokens: ``rollout/logp_diff_mean`` / ``_max``.

    The gap verl and TRL users watch for training/inference mismatch: the sampler's log-probs against a training
    forward of the same tokens with the same weights (bf16 and CUDA kernels make them differ)."""

    def __init__(self):
        self.total, self.count, self.max = 0.0, 0.0, 0.0

    def add(self, behaviour: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> None:
        diff = (behaviour.float() - logp.float()).abs() * mask
        self.total += float(diff.sum())
        self.count += float(mask.sum())
        self.max = max(self.max, float(diff.max())) if diff.numel() else self.max

    def metrics(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"rollout/logp_diff_mean": self.total / self.count, "rollout/logp_diff_max": self.max}


def truncated_is_weights(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance-sampling weights min(pi_old / pi_behaviour, cap) per token (detached), 1 off the response.

    Corrects the policy gradient for tokens drawn by a sampler whose probabilities differ from the training forward's
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"; verl's
    ``tis_imp_ratio_cap``). (N, T) -> ((N, T) weights, metrics)."""
    ratio = (old_logp - behaviour_logp).clamp(-20.0, 20.0).exp()
    weights = torch.where(mask.bool(), ratio.clamp(max=cap), torch.ones_like(ratio)).detach()
    n = float(mask.sum()) or 1.0
    return weights, {"rollout/tis_weight_mean": float((weights * mask).sum()) / n,
                     "rollout/tis_clipped_frac": float(((ratio > cap) & mask.bool()).sum()) / n}
