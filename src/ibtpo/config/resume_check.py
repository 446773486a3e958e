"""What a resumed run may change: settings that leave an exact continuation intact, and the rest.

``ibtpo train --resume RUN_DIR`` compares the run's saved ``config.schema.yaml`` with the config it would now use.
Changes of :data:`HARMLESS` fields (logging, evaluation and probe cadence, which use their own generators, the
budget) keep the continuation exact; any other change (sampling, model, optimisation, threads, device, ...) means the
resumed run is no longer the run that would have gone on, so it is refused unless the user confirms.
With ``lr_scheduler=cosine`` the budget sets the learning-rate schedule, so ``max_steps``/``max_tokens`` then count
as breaking too.
"""

from __future__ import annotations

from typing import Any

HARMLESS = frozenset({
    "out_dir", "overwrite", "progress", "plots", "tensorboard", "keep_checkpoints", "save_every", "eval_every",
    "eval_questions", "eval_k", "eval_temperature", "eval_top_p", "eval_greedy", "eval_batch_questions",
    "eval_samples", "eval_datasets", "ib_probe_every", "ib_probe_questions", "dump_trees", "max_steps", "max_tokens",
    "data_parallel", "dist_timeout_s",
})
"""Fields whose change keeps a resumed run an exact continuation."""


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(breaking, harmless) changes as ``field: old -> new`` strings; fields missing from `saved` (added to the
    config since the run started) are not compared."""
    budget_shapes_lr = new.get("lr_scheduler") == "cosine"
    breaking, harmless = [], []
    for key, value in new.items():
        if key not in saved or saved[key] == value:
            continue
        line = f"{key}: {saved[key]!r} -> {value!r}"
        safe = key in HARMLESS and not (budget_shapes_lr and key in ("max_steps", "max_tokens"))
        (harmless if safe else breaking).append(line)
    return breaking, harmless
