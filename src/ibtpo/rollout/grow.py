"""Grow rewarded trees for a list of problems: tokenise, build the engine and context, run a sampler, reward leaves.

The one place that turns "these questions, this policy, this sampler" into trees; training rollouts, the IB probe
and ``ibtpo score`` all call it.
"""

from __future__ import annotations

import random
from typing import Any, Callable

import torch

from ibtpo.rewards.scoring import RewardFn, reward_columns, reward_leaves
from ibtpo.backends.factory import make_backend
from ibtpo.rollout.samplers import GrowContext, grow_trees
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree import Tree


def grow_problem_trees(spec: RolloutSpec, model, tokenizer, problems: list, reward_fn: RewardFn,
                       generator: torch.Generator, rng: random.Random,
                       columns: Callable[[Any], dict[str, Any]] = reward_columns,
                       extras: dict[str, Any] | None = None) -> list[Tree]:
    """One rewarded tree per problem (objects with ``id`` and ``prompt``), grown as rollout spec `spec` says
    (its sampler, shape, sampling, splitter, sampler options, backend and budget; ``rollout.spec``).

    The model is put in eval mode while sampling and restored afterwards. Token draws come from `generator`,
    the tree rules' node draws and tie-breaks from `rng`. `columns(problem)`: the reward function's extra columns.
    `extras`: what a method's sampler reads besides the usual context (``GrowContext.extras``, e.g. IIB-LPO's latent
    codes, from the trainer extensions' ``grow_extras``).
    """
    prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    prompt_text = {p.id: p.prompt for p in problems}

    def score(tree: Tree, leaves: list) -> None:
        reward_leaves(reward_fn, tokenizer, prompt_text[tree.question_id], tree, leaves)

    sampling = spec.sampling
    engine = make_backend(spec.backend, model, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id, generator,
                          prefix_reuse=spec.prefix_reuse, slots_gib=spec.slots_gib)
    ctx = GrowContext(engine=engine, splitter=spec.splitter or StepSplitter(tokenizer), shape=spec.shape,
                      cap=sampling.max_new_tokens, score=score, rng=rng, extras=dict(extras or {}),
                      options=spec.options)
    was_training = model.training
    model.eval()
    try:
        return grow_trees(spec.sampler, ctx, prompts, [p.id for p in problems], [columns(p) for p in problems])
    finally:
        model.train(was_training)
