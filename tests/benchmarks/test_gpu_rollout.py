"""Smoke test of benchmarks/gpu_rollout.py on CPU (tiny shape): every phase runs and the report is complete."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_rollout_smoke(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_rollout.py"), "--shape", "tiny", "--device", "cpu",
           "--dtype", "bfloat16", "--cap", "12", "--greedy-prompts", "2", "--greedy-cap", "8", "--micro-rows", "2,4",
           "--micro-ctx", "16", "--plan", "static:independent:2,static:ib:2,eager:independent:2,generate:independent:2",
           "--max-rows", "3", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == [] and report["skipped"] == []
    fp32, half = report["greedy"]  # the float32 check is the gate; bf16 rounding may flip a near-tie
    assert fp32["label"] == "float32" and fp32["result"] == "PASS" and fp32["tokens_compared"] > 0
    assert half["label"] == "bfloat16" and half["result"] in ("PASS", "FAIL")
    runs = {(r["backend"], r["sampler"]): r for r in report["runs"]}
    assert set(runs) == {("static", "independent"), ("static", "ib"), ("eager", "independent"),
                         ("generate", "independent")}
    assert runs["static", "independent"]["trajectories"] == 16 and runs["static", "ib"]["trajectories"] == 24
    assert all(r["new_tokens"] > 0 and r["tokens_per_s"] > 0 for r in report["runs"])
    assert report["ratios"][0]["backend"] == "static" and report["bandwidth_gb_s"] > 0
    assert [m["rows"] for m in report["micro"]] == [2, 4] and "IBTree (4,9,1,1) / independent" in proc.stdout


def test_bad_plan_is_a_usage_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_rollout.py"), "--plan", "fast:ib:2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--plan: bad entry 'fast:ib:2'" in proc.stderr
