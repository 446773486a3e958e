"""The Python entry points: build a config, train, evaluate, score a policy's IB-Score, grow trees.

Each takes a :class:`~ibtpo.config.schema.TrainConfig` or the same ``key=value`` settings the CLI takes, as keywords::

    import ibtpo
    summary = ibtpo.train(out_dir="runs/nb", algorithm="ib_tpo", max_tokens=200_000)
    metrics = ibtpo.evaluate(model="runs/nb", eval_questions=128)
    trees, reading = ibtpo.score(model="testbed", questions=32)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


@dataclass
class Loaded:
    """What :func:`evaluate` and :func:`score` have loaded before they start drawing (given to their ``on_start``)."""

    cfg: TrainConfig
    model: Any
    tokenizer: Any
    rewards: Any
    """The run's ``data.tasks.Rewards``; ``rewards.check`` scores (its ``pop_stats()``: errors and unscorable)."""
    sets: dict[str, list]
    """Question set name -> the questions that will be drawn on."""


def evaluate(cfg: TrainConfig | None = None, *, bar: Callable | None = None, samples: list[dict] | None = None,
             on_start: Callable[[Loaded], None] | None = None, **settings: Any) -> dict[str, dict[str, float]]:
    """avg@k, pass@k, maj@k, greedy accuracy, length and cap-hit rate of ``model`` (a model dir, hub id in the cache,
    'testbed', or a run directory) on each evaluation set (``ibtpo eval``): {set name: metrics}.

    `bar(set name, questions)`: a progress-bar factory (an object with ``on_batch(n)`` and ``close()``); `samples`
    receives every completion record, with its set name; `on_start(loaded)` is called once the policy and the
    question sets are loaded, before the first draw."""
    from ibtpo.evaluation.heldout import evaluate_sets
    from ibtpo.data.prompt_fit import fit_prompts
    from ibtpo.data.tasks import build_rewards, build_source

    cfg = _cfg(cfg, settings)
    rewards = build_rewards(cfg)
    model, tokenizer = _load(cfg)
    sets = {name: qs[:cfg.eval_questions] for name, qs in build_source(cfg, tokenizer).test_sets.items()}
    fit_prompts(cfg, sets, tokenizer, model)
    if on_start is not None:
        on_start(Loaded(cfg, model, tokenizer, rewards, sets))
    return evaluate_sets(cfg, model, tokenizer, rewards, sets, bar, samples)


def _score_questions(cfg: TrainConfig, tokenizer, dataset: str | None, split: str,
                     questions: int | None) -> tuple[str, list]:
    """The question set `score` draws on, and its name."""
    from ibtpo.data.tasks import SumSource, build_source

    if dataset == "sum":
        task = SumSource(cfg)
        if split == "test":
            problems = task.test_sets[task.name]
        else:
            problems = [task.train_problem(i) for i in range(questions or 512)]
        name = f"sum/{split}"
    else:
        found, problems = next(iter(build_source(cfg, tokenizer).test_sets.items()))
        name = dataset or found
    return name, problems[:questions] if questions else problems


def score(cfg: TrainConfig | None = None, questions: int | None = 32, *, dataset: str | None = None,
          split: str = "test", batch: int | None = None, on_batch: Callable[[int], None] | None = None,
          on_start: Callable[[Loaded], None] | None = None, **settings: Any) -> tuple[list, dict]:
    """Grow IBTrees (the run's tree_b0/l/k/b) on the first `questions` questions (None: all) and read the policy's
    IB-Score (``ibtpo score``): (trees, summary with "aggregate" and per-question readings).

    `dataset`: None, the run's first evaluation set; 'sum', the testbed task (its `split`: 'test', or 'train': the
    first `questions` training questions, 512 by default); a dataset file or directory, scored as an evaluation set.
    `batch`: questions grown together (default: all, at most ``eval_batch_questions``); `on_batch(n)` is called after
    each batch of n; `on_start(loaded)` once the policy and the questions are loaded."""
    from ibtpo.config.components import ib_options, rollout_spec
    from ibtpo.evaluation.probe import PROBE_SEED_OFFSET, grow_probe, summarize
    from ibtpo.data.prompt_fit import fit_prompts
    from ibtpo.data.tasks import build_rewards

    cfg = _cfg(cfg, settings)
    if dataset not in (None, "sum"):  # the file is scored as an evaluation set (its layout, reward_fn auto = math)
        cfg = cfg.model_copy(update={"eval_datasets": [dataset], "dataset": None})
    model, tokenizer = _load(cfg)
    name, problems = _score_questions(cfg, tokenizer, dataset, split, questions)
    fit_prompts(cfg, {name: problems}, tokenizer, model)
    rewards = build_rewards(cfg)
    if on_start is not None:
        on_start(Loaded(cfg, model, tokenizer, rewards, {name: problems}))
    trees = grow_probe(rollout_spec(cfg, tokenizer, "ib"), model, tokenizer, problems, rewards.check,
                       seed=cfg.seed + PROBE_SEED_OFFSET,
                       batch_questions=batch or min(len(problems), cfg.eval_batch_questions), on_batch=on_batch)
    return trees, summarize(trees, ib_options(cfg))
