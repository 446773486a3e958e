"""A real pretrained chat model through the CLI: eval, score and two LoRA training steps.

Runs when IBTPO_REAL_MODEL names a transformers model directory (``scripts/real_model.sh`` builds
SmolLM2-135M-Instruct); skipped otherwise. Kept small: a few questions, short caps.
"""

import json
import os
from pathlib import Path

import pytest

from ibtpo.cli import main

MODEL = os.environ.get("IBTPO_REAL_MODEL")
pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not MODEL, reason="set IBTPO_REAL_MODEL=DIR (scripts/real_model.sh builds one)")]
GSM = Path(__file__).parents[1] / "fixtures" / "math" / "gsm8k.jsonl"
EASY = [{"id": "add", "prompt": "What is 2 + 3?", "answer": "5"},
        {"id": "mul", "prompt": "What is 4 times 5?", "answer": "20"}]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_eval_applies_the_chat_template_and_scores_plain_answers(tmp_path, capsys):
    data = tmp_path / "easy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in EASY))
    samples = tmp_path / "samples.jsonl"
    assert main(["eval", f"model={MODEL}", f"eval_datasets=[{data}]", "eval_k=2", "max_completion_length=128",
                 "--samples", str(samples), "--json", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    assert "real-model defaults (not set by you)" in err and "chat template" in err
    rows = _lines(samples)
    assert len(rows) == 2 * 3 and all(r["prompt"].startswith("<|im_start|>") for r in rows)
    greedy = {r["question_id"]: r for r in rows if r["sample"] == "greedy"}
    # a 135M instruct model answers these in plain text; the math reward must find those answers
    assert sum(r["score"] for r in greedy.values()) >= 1, [r["completion"] for r in greedy.values()]
    result = json.loads((tmp_path / "r.json").read_text())["datasets"]["easy"]
    assert result["cap_hit_rate"] < 0.5


def test_score_writes_samples(tmp_path):
    out = tmp_path / "score"
    assert main(["score", f"model={MODEL}", f"--dataset={GSM}", "--questions=2", f"--out={out}", "tree_b0=2",
                 "tree_l=2", "max_completion_length=64"]) == 0
    assert len(_lines(out / "samples.jsonl")) >= 4


def test_two_lora_steps_then_eval_of_the_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", f"model={MODEL}", f"dataset={GSM}", f"eval_datasets=[{GSM}]", "algorithm=grpo",
                 "lora_rank=8", "max_steps=2", "questions_per_step=2", "num_generations=2",
                 "max_completion_length=48", "eval_questions=1", "eval_k=1", "eval_greedy=false", f"out_dir={run}",
                 "tensorboard=false", "plots=false", "progress=false"]) == 0
    steps = [r for r in _lines(run / "metrics.jsonl") if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2] and all("actor/loss" in r for r in steps)
    ckpt = run / "checkpoints" / "step-000002"
    assert (ckpt / "adapter_config.json").exists() and (ckpt / "base_model.json").exists()
    assert main(["eval", f"model={run}", f"eval_datasets=[{GSM}]", "eval_questions=1", "eval_k=1",
                 "max_completion_length=32", "--json", str(tmp_path / "after.json")]) == 0


def test_two_steps_on_the_arith_task_with_the_memory_plan_and_log_lines(tmp_path, capsys):
    run = tmp_path / "arith"
    assert main(["train", f"model={MODEL}", "task=arith", "test_size=2", "algorithm=grpo", "lora_rank=8",
                 "max_steps=2", "questions_per_step=2", "num_generations=2", "max_completion_length=48",
                 "eval_questions=2", "eval_k=1", f"out_dir={run}", "tensorboard=false", "plots=false",
                 "threads=1"]) == 0
    err = capsys.readouterr().err
    assert "memory plan (update_memory_gib=2)" in err and "prompt_template=answer_line" in err
    assert [line.split()[1] for line in err.splitlines() if line.startswith("step ")] == ["0/2", "1/2", "2/2"]
    records = _lines(run / "metrics.jsonl")
    assert [r["step"] for r in records if "train/tokens" in r] == [1, 2]
    final = records[-1]
    for key in ("strict_avg@1", "lenient_avg@1", "strict_greedy_acc", "lenient_greedy_acc"):
        assert 0.0 <= final[f"val/arith/{key}"] <= 1.0
    assert final["val/arith/strict_avg@1"] <= final["val/arith/avg@1"]  # strict is the math check plus the format
