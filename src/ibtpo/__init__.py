"""ibtpo: online RL for language models on verifiable-reward reasoning tasks, built around IB-TPO.

The public API (imported lazily, so ``import ibtpo`` is cheap)::

    ibtpo.__version__
    ibtpo.configure(path=None, **settings) -> TrainConfig       ibtpo.TrainConfig, ibtpo.ConfigError
    ibtpo.train(cfg=None, resume=False, **settings) -> summary
    ibtpo.evaluate(cfg=None, **settings) -> {set: metrics}
    ibtpo.score(cfg=None, questions=32, **settings) -> (trees, IB-Score summary)
    ibtpo.grow_trees(spec, model, tokenizer, problems, reward_fn, generator, rng)
    ibtpo.rollout_spec(cfg, tokenizer, sampler=None) -> RolloutSpec   ibtpo.RolloutSpec (sampler, shape, sampling, ...)
    ibtpo.Tree, ibtpo.TreeShape, ibtpo.ib_score(node), ibtpo.tree_ib_stats(trees, ib=IBOptions()), ibtpo.IBOptions
    ibtpo.register_estimator / register_loss / register_sampler / register_branch_rule / register_preset /
    register_extension / register_reward
    ibtpo.config_field / options_from          (typed component options read from the run config)

Registered components are then named in a config like the built-ins (``adv_estimator=my_name``); a module that
registers them can be given as ``plugins=[my_package.my_module]``, or a component directly as ``module:name``.
See docs/api.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "configure": "ibtpo.api", "train": "ibtpo.api", "evaluate": "ibtpo.api", "score": "ibtpo.api",
    "TrainConfig": "ibtpo.config.schema", "ConfigError": "ibtpo.config.schema", "build_config": "ibtpo.config.schema",
    "Tree": "ibtpo.core.tree", "Node": "ibtpo.core.tree",
    "TreeShape": "ibtpo.rollout.samplers", "register_sampler": "ibtpo.rollout.samplers",
    "grow_trees": ("ibtpo.rollout.grow", "grow_problem_trees"),
    "RolloutSpec": "ibtpo.rollout.spec", "rollout_spec": "ibtpo.config.components",
    "IBOptions": "ibtpo.core.tree_stats",
    "ib_score": "ibtpo.methods.ib_tpo", "tree_ib_stats": "ibtpo.methods.ib_tpo",
    "register_estimator": ("ibtpo.algos.advantages", "register_adv_est"),
    "register_loss": ("ibtpo.algos.losses", "register_policy_loss"),
    "register_branch_rule": ("ibtpo.rollout.rules", "BRANCH_RULES"),
    "register_preset": "ibtpo.algos.presets", "Preset": "ibtpo.algos.presets",
    "register_extension": "ibtpo.algos.extensions", "TrainerExtension": "ibtpo.algos.extensions",
    "register_reward": "ibtpo.rewards.functions",
    "config_field": "ibtpo.core.registry", "options_from": "ibtpo.core.registry",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'ibtpo' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(import_module(module), attr)
    if name == "register_branch_rule":
        value = value.register
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
