"""The Python entry points: build a config, train, evaluate, score a policy's IB-Score, grow trees.

Each takes a :class:`~ibtpo.config.schema.TrainConfig` or the same ``key=value`` settings the CLI takes, as keywords::

    import ibtpo
    summary = ibtpo.train(out_dir="runs/nb", algorithm="ib_tpo", max_tokens=200_000)
    metrics = ibtpo.evaluate(model="runs/nb", eval_questions=128)
    trees, reading = ibtpo.score(model="testbed", questions=32)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ibtpo.config.schema import TrainConfig, build_config


def configure(path: str | Path | None = None, **settings: Any) -> TrainConfig:
    """A validated run config: defaults <- a YAML file `path` <- `settings` (aliases such as ``lr`` allowed).
    Raises ``ConfigError`` with a one-line message naming the culprit."""
    return build_config(path, settings)


def _cfg(cfg: TrainConfig | None, settings: dict[str, Any]) -> TrainConfig:
    if cfg is None:
        return configure(**settings)
    return cfg.model_copy(update=settings) if settings else cfg


def train(cfg: TrainConfig | None = None, resume: bool = False, **settings: Any) -> dict:
    """Train to the config's step/token budget (``ibtpo train``); returns the run's summary (also in
    RUN_DIR/summary.json). ``resume=True`` continues the run in ``out_dir`` exactly."""
    from ibtpo.training.run import train as run_training

    return run_training(_cfg(cfg, settings), resume=resume)


def _load(cfg: TrainConfig):
    import torch

    from ibtpo.training.models import resolve_device
    from ibtpo.training.checkpoint import load_run_policy

    torch.set_num_threads(cfg.threads)
    model, tokenizer = load_run_policy(cfg.model, cfg.dtype)
    model.to(resolve_device(cfg.device))
    return model, tokenizer


def evaluate(cfg: TrainConfig | None = None, **settings: Any) -> dict[str, dict[str, float]]:
    """avg@k, pass@k, maj@k, greedy accuracy, length and cap-hit rate of ``model`` (a model dir, hub id in the cache,
    'testbed', or a run directory) on each evaluation set (``ibtpo eval``): {set name: metrics}."""
    from ibtpo.evaluation.heldout import evaluate_sets
    from ibtpo.data.prompt_fit import fit_prompts
    from ibtpo.data.tasks import build_rewards, build_source

    cfg = _cfg(cfg, settings)
    model, tokenizer = _load(cfg)
    sets = {name: qs[:cfg.eval_questions] for name, qs in build_source(cfg, tokenizer).test_sets.items()}
    fit_prompts(cfg, sets, tokenizer, model)
    return evaluate_sets(cfg, model, tokenizer, build_rewards(cfg), sets)


def score(cfg: TrainConfig | None = None, questions: int = 32, **settings: Any) -> tuple[list, dict]:
    """Grow IBTrees (the run's tree_b0/l/k/b) on the first `questions` evaluation questions and read the policy's
    IB-Score (``ibtpo score``): (trees, summary with "aggregate" and per-question readings)."""
    from ibtpo.config.components import ib_options, rollout_spec
    from ibtpo.evaluation.probe import PROBE_SEED_OFFSET, grow_probe, summarize
    from ibtpo.data.prompt_fit import fit_prompts
    from ibtpo.data.tasks import build_rewards, build_source

    cfg = _cfg(cfg, settings)
    model, tokenizer = _load(cfg)
    name, problems = next(iter(build_source(cfg, tokenizer).test_sets.items()))
    problems = problems[:questions]
    fit_prompts(cfg, {name: problems}, tokenizer, model)
    trees = grow_probe(rollout_spec(cfg, tokenizer, "ib"), model, tokenizer, problems, build_rewards(cfg).check,
                       seed=cfg.seed + PROBE_SEED_OFFSET, batch_questions=min(len(problems), cfg.eval_batch_questions))
    return trees, summarize(trees, ib_options(cfg))
