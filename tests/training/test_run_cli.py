"""End to end through the real CLI: a tiny run writes its run directory; SIGKILL + --resume equals no kill."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

REQUIRED = ["reward/mean", "eff_rate", "actor/entropy", "actor/pg_loss", "actor/pg_clipfrac", "actor/kl",
            "response_length/mean", "rollout/new_tokens_per_question", "rollout/trajectories_per_question",
            "perf/step_time_s"]
SMALL = ["questions_per_step=4", "num_generations=4", "eval_questions=8", "eval_k=2", "progress=false"]


def ibtpo(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ibtpo.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_run_directory_then_eval(tmp_path):
    """The main job's path (default algorithm: IB-TPO on IBTrees), with a small tree and budget."""
    run = tmp_path / "run"
    proc = ibtpo("train", f"out_dir={run}", "max_steps=3", "eval_every=2", "save_every=2", "tree_b0=2", "tree_l=3",
                 *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "plots/vs_step.png", "plots/vs_tokens.png",
                 "checkpoints/latest"]:
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents*"))
    recs = records(run)
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    for r in recs[1:]:
        assert all(k in r for k in REQUIRED), set(REQUIRED) - set(r)
    assert {"val/sum/avg@2", "val/sum/pass@2", "val/sum/greedy_acc"} <= set(recs[0]) & set(recs[2]) & set(recs[3])
    assert recs[3]["train/tokens"] == sum(r["rollout/new_tokens_per_question"] * 4 for r in recs[1:])
    again = ibtpo("train", f"out_dir={run}", "max_steps=1", *SMALL)  # never silently clobber a saved run
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (run / "checkpoints" / "latest").exists()
    ev = ibtpo("eval", f"model={run}", "eval_questions=8", "eval_k=2", "--json", str(tmp_path / "ev.json"))
    assert ev.returncode == 0, ev.stderr[-2000:]
    res = json.loads((tmp_path / "ev.json").read_text())["datasets"]["sum"]
    assert res["questions"] == 8 and 0 <= res["pass@2"] <= 1 and res["avg@2"] <= res["pass@2"]


def _without_perf(recs):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in recs]


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    args = ["algorithm=grpo", "max_steps=8", "save_every=2", "eval_every=3", "tensorboard=false", "plots=false",
            *SMALL]
    full = tmp_path / "full"
    assert ibtpo("train", f"out_dir={full}", *args).returncode == 0

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "ibtpo.cli", "train", f"out_dir={cut}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill as soon as a step past the first checkpoint was logged
        path = cut / "metrics.jsonl"
        if path.exists() and any(json.loads(ln)["step"] >= 3 for ln in path.read_text().splitlines() if ln.endswith("}")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    resumed_from = int((cut / "checkpoints" / "latest").read_text().split("-")[1])
    assert 2 <= resumed_from < 8
    # a checkpoint write that was killed half-way leaves a temp dir; it must not be picked up
    junk = cut / "checkpoints" / f".tmp-step-{resumed_from + 2:06d}"
    junk.mkdir(exist_ok=True)
    (junk / "model.safetensors").write_bytes(b"garbage")

    res = ibtpo("train", "--resume", str(cut))
    assert res.returncode == 0, res.stderr[-2000:]
    assert _without_perf(records(cut)) == _without_perf(records(full))
    wa = load_file(full / "checkpoints" / "step-000008" / "model.safetensors")
    wb = load_file(cut / "checkpoints" / "step-000008" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_checkpoint_is_one_line_error(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("max_steps: 2\n")
    proc = ibtpo("train", "--resume", str(run))
    assert proc.returncode == 2 and "no checkpoint to resume from" in proc.stderr
    assert "Traceback" not in proc.stderr
