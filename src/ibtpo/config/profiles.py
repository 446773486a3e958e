"""Defaults that fit the model: the testbed keeps the config's own, a real pretrained model gets a profile.

The config's field defaults are tuned for the CPU testbed (48-token sums, 512 test questions, lr 1e-4 on a 0.5M
model). For any other ``model``, the settings of :data:`REAL_MODEL_PROFILE` that the user did not give (in the YAML
file, on the command line, or in a resumed run's saved config) are filled from it, and :func:`describe_profile`
says which at the start of a run or an evaluation. A resumed run keeps its saved values (they were all given).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TESTBED = "testbed"

REAL_MODEL_PROFILE: dict[str, Any] = {
    "max_completion_length": 512,  # GSM-style solutions of small instruct models run 100-400 tokens
    "eval_questions": 64,  # per evaluation set; before and after training, and every eval_every steps
    "eval_batch_questions": 16,  # questions sampled together (progress moves per batch)
    "ib_probe_every": 0,  # the IB probe is monitoring only; tree samplers read IB metrics off their own trees
    "lr_scheduler": "cosine",
    "warmup_steps": 5,
    "update_memory_gib": 2.0,  # micro-batches (and checkpointing where it pays) sized to this; training.memory
}
"""Fields set for a real model when not given."""

REAL_MODEL_LR = {"full": 1e-6, "lora": 2e-5}
"""learning_rate for a real model when not given: full fine-tuning (TRL's GRPO default) or LoRA adapters."""


def _trained_from(model: str) -> str | None:
    """The ``model`` a run directory, or a checkpoint inside one, was trained from (None if `model` is neither)."""
    path = Path(model)
    for run_dir in (path, path.parent.parent):  # RUN_DIR, or RUN_DIR/checkpoints/step-N
        saved = run_dir / "config.yaml"
        if (run_dir / "checkpoints").is_dir() and saved.is_file():
            try:
                return str((yaml.safe_load(saved.read_text()) or {}).get("model", TESTBED))
            except (OSError, yaml.YAMLError):
                return None
    return None


def is_testbed(model: str) -> bool:
    """Is `model` the testbed policy, or a run (or checkpoint) trained from it?"""
    return model == TESTBED or _trained_from(model) == TESTBED


def profile_values(given: dict[str, Any]) -> dict[str, Any]:
    """The profile's values for the fields absent from `given` (resolved config keys); {} for the testbed."""
    if is_testbed(str(given.get("model", TESTBED))):
        return {}
    lr = REAL_MODEL_LR["lora" if int(given.get("lora_rank") or 0) > 0 else "full"]
    wanted = {**REAL_MODEL_PROFILE, "learning_rate": lr}
    return {k: v for k, v in wanted.items() if k not in given}


def describe_profile(applied: dict[str, Any]) -> str | None:
    """One line naming the profile settings that were applied (None when none were)."""
    if not applied:
        return None
    items = ", ".join(f"{k}={v}" for k, v in applied.items())
    return f"real-model defaults (not set by you): {items}"
