"""A run config -> the parts a run is built from: the sampler's tree shape, the sampling parameters, and each
registered component with its typed options. One place for the mapping, shared by the trainer, the IB probe,
``ibtpo score`` and the benchmarks."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ibtpo.algos.advantages import ADV_ESTIMATORS
from ibtpo.algos.losses import LossConfig, POLICY_LOSSES
from ibtpo.core.registry import options_from
from ibtpo.rollout.samplers import SAMPLERS, TreeShape
from ibtpo.core.sampling import SamplingParams


def tree_shape(cfg: Any, sampler: str | None = None) -> TreeShape:
    """The tree shape the named sampler (default: the run's) draws with this config."""
    return SAMPLERS.get(sampler or cfg.sampler).shape(cfg)


def rollout_sampling(cfg: Any) -> SamplingParams:
    """How rollouts (and IB probes) draw tokens: temperature, top-p, top-k and the completion cap of the run."""
    return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_completion_length, max_rows=cfg.rollout_max_rows,
                          kv_budget_bytes=int(cfg.kv_budget_gib * 2**30))


def advantage_estimator(cfg: Any) -> Callable[..., torch.Tensor]:
    """The run's registered estimator with its options (from the config) bound: call it with the batch tensors."""
    fn = ADV_ESTIMATORS.get(cfg.adv_estimator)
    options_cls = ADV_ESTIMATORS.options(cfg.adv_estimator)
    if options_cls is None:
        return fn
    options = options_from(options_cls, cfg)

    def estimate(**kwargs: Any) -> torch.Tensor:
        return fn(options=options, **kwargs)

    estimate.__doc__ = fn.__doc__
    return estimate


def loss_config(cfg: Any) -> LossConfig:
    """The policy-loss and regulariser options of the run (``LossConfig`` fields name their config fields)."""
    POLICY_LOSSES.get(cfg.policy_loss)
    return options_from(LossConfig, cfg)
