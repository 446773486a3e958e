"""Every command on a CUDA device (skipped without one): eval, score, compare, IIB-LPO training, and bf16 + LoRA."""

import json
import math

import pytest
import torch

from ibtpo.cli import main

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SMALL = ["device=cuda", "questions_per_step=2", "num_generations=2", "max_completion_length=10", "eval_questions=4",
         "eval_k=2", "tree_b0=2", "tree_l=2", "tree_min_room=2", "ib_probe_questions=2", "progress=false",
         "tensorboard=false", "plots=false"]


def test_eval_and_score_on_cuda(tmp_path, tiny_model_dir):
    out = tmp_path / "eval.json"
    assert main(["eval", f"model={tiny_model_dir}", "device=cuda", "eval_questions=4", "eval_k=3",
                 "max_completion_length=10", "rollout_max_rows=4", "--json", str(out)]) == 0
    assert json.loads(out.read_text())
    assert main(["score", f"model={tiny_model_dir}", "device=cuda", "max_completion_length=10", "tree_b0=2", "tree_l=3",
                 "tree_min_room=2", "--questions", "3", "--batch", "3", "--out", str(tmp_path / "score")]) == 0
    assert (tmp_path / "score" / "score.json").exists()


@pytest.mark.parametrize("algorithm", ["iib_lpo", "ib_tpo"])
def test_train_presets_on_cuda_in_bf16(tmp_path, tiny_model_dir, algorithm):
    run = tmp_path / algorithm
    extra = ["iib_keep=4"] if algorithm == "iib_lpo" else []  # G = tree_b0 x (1 + iib_forks) = 6
    assert main(["train", f"model={tiny_model_dir}", f"algorithm={algorithm}", f"out_dir={run}", "max_steps=2",
                 "dtype=bfloat16", "beta=0.01", "micro_batch_size=2", *SMALL, *extra]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "actor/loss" in r]
    assert len(train) == 2 and all(math.isfinite(r["actor/loss"]) for r in train)
    assert all("rollout/logp_diff_mean" in r for r in train)


def test_lora_and_compare_on_cuda(tmp_path, tiny_model_dir):
    assert main(["train", f"model={tiny_model_dir}", "algorithm=grpo", f"out_dir={tmp_path / 'lora'}", "max_steps=1",
                 "lora_rank=4", "beta=0.01", *SMALL]) == 0
    assert main(["compare", "--presets", "grpo", "--seeds", "0", "--tokens", "40", "--out", str(tmp_path / "cmp"),
                 f"model={tiny_model_dir}", *SMALL]) == 0
    assert (tmp_path / "cmp" / "report.md").exists()


def test_pretrain_on_cuda(tmp_path):
    out = tmp_path / "policy"
    assert main(["pretrain", "--out", str(out), "device=cuda", "steps=3", "batch_size=4", "num_examples=16",
                 "hidden_size=16", "intermediate_size=32"]) == 0
    assert (out / "pretrain_summary.json").exists()
