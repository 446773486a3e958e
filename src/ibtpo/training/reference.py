"""The GRPO result recorded on the testbed at the main job's budget, so any comparable run can say how it did.

``testbed/grpo_reference.json`` is written by ``python experiments/record_grpo_reference.py REPORT_DIR`` from a
finished ``ibtpo compare`` report (the GRPO rows and their config). A run is comparable when every shared setting
(model, task, sampling, learning rate, evaluation, token budget) equals the recorded one; only the algorithm differs.
"""

from __future__ import annotations

import json
from pathlib import Path

from ibtpo.config.schema import TrainConfig

REFERENCE_PATH = Path(__file__).parents[1] / "testbed" / "grpo_reference.json"
SHARED_FIELDS = ("model", "dtype", "task", "task_min_terms", "task_max_terms", "task_max_value", "task_seed",
                 "test_size", "questions_per_step", "temperature", "top_p", "top_k", "max_completion_length",
                 "learning_rate", "lr_scheduler", "warmup_steps", "beta", "loss_agg_mode", "ppo_epochs",
                 "mini_batch_size", "eval_questions", "eval_k", "eval_temperature", "max_tokens")


def shared_settings(cfg: TrainConfig) -> dict:
    return {k: getattr(cfg, k) for k in SHARED_FIELDS}


def lookup(cfg: TrainConfig, path: Path = REFERENCE_PATH) -> dict | None:
    """The recorded GRPO result if `cfg` shares its settings (and is not itself a GRPO run), else None."""
    if not path.exists() or cfg.algorithm == "grpo" or cfg.dataset or cfg.lora_rank:  # recorded on the testbed task
        return None
    ref = json.loads(path.read_text())
    return ref if ref["settings"] == shared_settings(cfg) else None
