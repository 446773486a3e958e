"""What a resumed run may change: settings that leave an exact continuation intact, and the rest.

``ibtpo train --resume RUN_DIR`` compares the run's saved ``config.schema.yaml`` with the config it would now use.
Changes of :data:`HARMLESS` fields (logging, evaluation and probe cadence, which use their own generators, the
budget) keep the continuation exact; any other change (sampling, model, optimisation, threads, device, ...) means the
resumed run is no longer the run that would have gone on, so it is refused unless the user confirms.
With ``lr_scheduler=cosine`` the budget sets the learning-rate schedule, so ``max_steps``/``max_tokens`` then count
as breaking too.

Some changes cannot be continued at all, even with ``--allow-config-change`` (:func:`impossible_changes`): they change
which parameters exist or their shapes (the saved weights and optimizer state would not fit), or they would be
silently ignored because the checkpoint's LoRA adapters keep their own settings. The trainer also refuses, in one
line, any optimizer state that does not fit the model it built (``training.dist_checkpoint.restore_optimizer``).
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


UNCONTINUABLE = {
    "model": "the checkpoint holds that model's weights; the KL reference and the architecture come from model=",
    "lora_rank": "the checkpoint's trainable parameters (and their optimizer state) have the saved LoRA rank",
    "lora_target_modules": "the checkpoint's adapters sit on the saved modules",
    "iib_latent_dim": "the saved latent-injection and CVAE parameters have that width",
    "iib_cvae_hidden": "the saved CVAE parameters have that width",
}
"""Fields whose change cannot be continued from a checkpoint, with the reason."""
LORA_FIXED = {"lora_alpha", "lora_dropout"}
"""With LoRA on, the checkpoint's adapter config keeps these: a change would be silently ignored."""


def impossible_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Changes that no resume can honour, as ``field: old -> new (why)`` strings."""
    out = []
    for key, value in new.items():
        if key not in saved or saved[key] == value:
            continue
        why = UNCONTINUABLE.get(key)
        if why is None and key in LORA_FIXED and saved.get("lora_rank"):
            why = "the checkpoint's LoRA adapters keep their saved config"
        if why:
            out.append(f"{key}: {saved[key]!r} -> {value!r} ({why})")
    return out


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
