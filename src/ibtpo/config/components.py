"""A run config -> the parts a run is built from: the rollout spec (the sampler's tree shape and options, the
sampling parameters, ...), the IB options, and each registered component with its typed options. One place for the
mapping, shared by the trainer, the IB probe, evaluation, ``ibtpo score`` and the benchmarks.

The components come back guarded (``ibtpo.core.guard``): their signature is checked against the call the trainer makes
when they are built, and every call validates what comes back (shape, dtype, finiteness), so a wrong or non-finite
component ends the run in one line naming it, before the optimizer step."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ibtpo.algos.advantages import ADV_ESTIMATORS
from ibtpo.algos.losses import REGULARIZERS, TOKEN_SELECTORS, LossConfig, POLICY_LOSSES
from ibtpo.core.guard import check_loss_pair, check_signature, check_tensor, guarded, label
from ibtpo.core.registry import options_from
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree_stats import IBOptions
from ibtpo.rollout.samplers import TreeShape, checked_shape, sampler_options
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.core.sampling import SamplingParams

ESTIMATOR_INPUTS = ("rewards", "response_mask", "group_ids", "node_index", "nodes", "ancestor_index")
"""The keywords every advantage estimator is called with (``algos.advantages``)."""


def tree_shape(cfg: Any, sampler: str | None = None) -> TreeShape:
    """The tree shape the named sampler (default: the run's) draws with this config."""
    return checked_shape(sampler or cfg.sampler, cfg)


def rollout_sampling(cfg: Any) -> SamplingParams:
    """How rollouts (and IB probes) draw tokens: temperature, top-p, top-k and the completion cap of the run."""
    return SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_completion_length, max_rows=cfg.rollout_max_rows,
                          kv_budget_bytes=int(cfg.kv_budget_gib * 2**30))


def rollout_spec(cfg: Any, tokenizer, sampler: str | None = None) -> RolloutSpec:
    """How the named sampler (default: the run's; the IB probe: 'ib') draws trees under this config: its shape and
    options, the rollout sampling, the step splitter of `tokenizer`, the backend, its KV slots, prefix reuse."""
    name = sampler or cfg.sampler
    return RolloutSpec(sampler=name, shape=tree_shape(cfg, name), sampling=rollout_sampling(cfg),
                       splitter=StepSplitter(tokenizer, cfg.step_delimiter, cfg.min_step_tokens),
                       options=sampler_options(name, cfg), backend=cfg.rollout_backend,
                       slots_gib=cfg.rollout_slots_gib, prefix_reuse=cfg.prefix_reuse)


def eval_spec(cfg: Any) -> RolloutSpec:
    """How evaluation draws: ``eval_k`` independent samples per question at ``eval_temperature`` / ``eval_top_p``
    under the completion cap, with the rollout backend, its row limit and KV slots."""
    sampling = SamplingParams(temperature=cfg.eval_temperature, top_p=cfg.eval_top_p,
                              max_new_tokens=cfg.max_completion_length, max_rows=cfg.rollout_max_rows)
    return RolloutSpec.independent(cfg.eval_k, sampling, backend=cfg.rollout_backend, slots_gib=cfg.rollout_slots_gib)


def ib_options(cfg: Any) -> IBOptions:
    """The IB-Score options of the run (``ib_beta``, ``ib_conf``, ``ib_zero_phat``)."""
    return options_from(IBOptions, cfg)


def _timeout(cfg: Any) -> float:
    return getattr(cfg, "component_timeout_s", 0.0)


def advantage_estimator(cfg: Any) -> Callable[..., torch.Tensor]:
    """The run's registered estimator with its options (from the config) bound: call it with the batch tensors.

    Guarded: it must accept the trainer's keywords (``ESTIMATOR_INPUTS``) and return finite floating advantages of
    the shape of ``response_mask`` (N, T)."""
    name = cfg.adv_estimator
    fn = ADV_ESTIMATORS.get(name)
    options_cls = ADV_ESTIMATORS.options(name)
    options = None if options_cls is None else options_from(options_cls, cfg)
    who = label("advantage estimator", name)
    extra = {} if options is None else {"options": options}
    check_signature(who, fn, (), {**dict.fromkeys(ESTIMATOR_INPUTS), **extra},
                    hint=f"an estimator is called with the keywords {', '.join(ESTIMATOR_INPUTS)}"
                         f"{', options' if extra else ''}; add **kwargs for those it does not use")
    limit = _timeout(cfg)

    def estimate(**kwargs: Any) -> torch.Tensor:
        out = guarded(who, fn, limit, **kwargs, **extra)
        mask = kwargs.get("response_mask")
        shape = None if mask is None else tuple(mask.shape)
        return check_tensor(who, out, "advantages (rows x response columns, like response_mask)", shape=shape)

    estimate.__doc__ = fn.__doc__
    return estimate


def loss_config(cfg: Any) -> LossConfig:
    """The policy-loss and regulariser options of the run (``LossConfig`` fields name their config fields)."""
    POLICY_LOSSES.get(cfg.policy_loss)
    return options_from(LossConfig, cfg)


def policy_loss(cfg: Any) -> Callable[..., tuple[torch.Tensor, dict]]:
    """The run's policy loss, guarded: ``(old_logp, logp, advantages, mask, cfg[, select=]) -> (0-d loss with a
    gradient, finite; metrics dict)``."""
    name = cfg.policy_loss
    fn = POLICY_LOSSES.get(name)
    who = label("policy loss", name)
    check_signature(who, fn, (None,) * 5, {"select": None} if name in TOKEN_SELECTORS else {},
                    hint="a policy loss is called as fn(old_logp, logp, advantages, mask, cfg) -> (loss, metrics)")
    limit = _timeout(cfg)

    def loss(old_logp, logp, advantages, mask, loss_cfg, **kwargs):
        out = guarded(who, fn, limit, old_logp, logp, advantages, mask, loss_cfg, **kwargs)
        return check_loss_pair(who, out, grad=logp.requires_grad)

    loss.__doc__ = fn.__doc__
    return loss


def regularizers(cfg: Any) -> list[Callable[..., tuple[torch.Tensor, dict]]]:
    """The regularisers the run adds to the loss (coefficient > 0: kl <- beta, entropy, ibro), each guarded like
    the policy loss: ``(logp, entropy, advantages, mask, ref_logp, cfg) -> (0-d term, metrics)``."""
    out = []
    limit = _timeout(cfg)
    for name, coef in (("kl", cfg.beta), ("entropy", cfg.entropy_coef), ("ibro", cfg.ibro_coef)):
        if coef <= 0:
            continue
        fn = REGULARIZERS.get(name)
        who = label("regulariser", name)
        check_signature(who, fn, (None,) * 6,
                        hint="a regulariser is called as fn(logp, entropy, advantages, mask, ref_logp, cfg)")

        def term(logp, entropy, advantages, mask, ref_logp, loss_cfg, _fn=fn, _who=who):
            res = guarded(_who, _fn, limit, logp, entropy, advantages, mask, ref_logp, loss_cfg)
            return check_loss_pair(_who, res, grad=logp.requires_grad)

        out.append(term)
    return out
