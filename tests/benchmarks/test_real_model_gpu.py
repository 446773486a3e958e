"""The CPU side of the real-model GPU command: carrying a file in two parts, the run summary and table, and the
driver end to end on a tiny chat model."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parts = _load("device_parts")
driver = _load("real_model_gpu")


def test_a_file_split_in_two_parts_is_rebuilt_and_checked(tmp_path):
    data = bytes(range(256)) * 4099  # ~1 MiB, not a multiple of the chunk
    src = tmp_path / "w.whl"
    src.write_bytes(data)
    p1, p2, sums = parts.split(src, tmp_path / "parts", 300_000)
    assert p1.stat().st_size == 300_000 and p1.stat().st_size + p2.stat().st_size == len(data)
    stored = parts.store(p1, tmp_path / "store")  # call 1: outside the checkout
    out = parts.join(stored, p2, sums, tmp_path / "store" / "w.whl")  # call 2
    assert out.read_bytes() == data


def test_a_missing_or_foreign_part_is_one_line_and_exit_3(tmp_path, capsys):
    src = tmp_path / "w.whl"
    src.write_bytes(b"x" * 5000)
    p1, p2, sums = parts.split(src, tmp_path / "parts", 1000)
    assert parts.main(["join", str(tmp_path / "gone" / "part1"), str(p2), str(sums), str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "machine was given back" in err and err.count("\n") == 1
    p1.write_bytes(b"y" * 1000)  # another file's first part
    assert parts.main(["join", str(p1), str(p2), str(sums), str(tmp_path / "o")]) == 3
    assert "does not match" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(parts.PartsError):
        parts.split(src, tmp_path / "p", 5000)


def _records():
    val = "val/arith/"
    ev0 = {"step": 0, f"{val}avg@4": 0.3, f"{val}strict_avg@4": 0.1, f"{val}lenient_avg@4": 0.4,
           f"{val}strict_greedy_acc": 0.2, f"{val}cap_hit_rate": 0.3}
    steps = [{"step": s, "train/tokens": 1000 * s, "perf/rollout_time_s": 2.0, "perf/update_time_s": 1.0,
              "rollout/logp_diff_mean": 0.01, "rollout/logp_diff_max": 0.2, "actor/entropy": 0.5,
              "reward/mean": 0.1 * s, "ib/score_mean": -1.0 + s} for s in (1, 2)]
    steps[-1].update({f"{val}avg@4": 0.5, f"{val}strict_avg@4": 0.35, f"{val}lenient_avg@4": 0.5,
                      f"{val}strict_greedy_acc": 0.4, f"{val}cap_hit_rate": 0.1})
    return [ev0, *steps]


def test_summary_and_table_from_a_runs_records():
    s = driver.summarize(_records())
    assert (s["steps"], s["tokens"], s["evaluations"]) == (2, 2000, [0, 2])
    assert s["strict_avg@4_before"] == 0.1 and s["strict_avg@4_after"] == 0.35
    assert s["tokens_per_s"] == 500.0 and s["ib_score"] == 0.5 and s["cap_hit_last"] == 0.1
    table = driver.build_table({"grpo": s, "ib_tpo": {"error": "exit 1: boom"}})
    rows = table.splitlines()
    assert rows[2].startswith("| grpo | 10.0% -> 35.0% | 40.0% -> 50.0% | 20.0% -> 40.0% | 2,000 | 2 | 2.00 + 1.00")
    assert "failed: exit 1: boom" in rows[3]
    lines = driver.targets({"grpo": s, "ib_tpo": {**s, "strict_avg@4_after": 0.30}})
    assert lines[0].endswith("+25.0 points -> MET") and "IB-TPO - GRPO = -5.0 points" in lines[1]
    assert driver.slug("NVIDIA H200") == "nvidia_h200"


@pytest.mark.slow
def test_the_driver_runs_both_methods_on_a_tiny_chat_model(tmp_path):
    from ibtpo.core.tiny_models import save_tiny_model

    model = save_tiny_model("qwen3", tmp_path / "m")
    out = tmp_path / "results"
    sets = ["max_completion_length=8", "questions_per_step=2", "eval_questions=2", "eval_k=2", "test_size=4",
            "threads=1", "max_steps=2", "tree_min_room=2", "eval_every=1", "mini_batch_size=0"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_model_gpu.py"), "--model", str(model),
                           "--device", "cpu", "--run-budget-s", "120", "--runs-dir", str(tmp_path / "runs"),
                           "--out", str(out), "--set", *sets], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(out.glob("real_model_*.json")).read_text())
    res = report["results"]
    assert set(res) == {"ib_tpo", "grpo"} and res["ib_tpo"]["steps"] == 2
    assert res["grpo"]["settings"]["max_tokens"] == res["ib_tpo"]["tokens"]  # the same token budget
    assert res["grpo"]["tokens"] >= res["ib_tpo"]["tokens"] or res["grpo"]["steps"] == 2
    assert "[ib_tpo] step 1/2" in proc.stdout and "| ib_tpo |" in proc.stdout
    assert next(out.glob("real_model_*.png")).stat().st_size > 0


@pytest.mark.slow
def test_the_shell_command_stores_part_one_and_sets_up_without_parts(tmp_path):
    parts_dir, store = tmp_path / "parts", tmp_path / "store"
    parts_dir.mkdir()
    (parts_dir / "part1").write_bytes(b"p" * 1000)
    env = {**__import__("os").environ, "PARTS_DIR": str(parts_dir), "STORE": str(store), "PYTHON": sys.executable,
           "OUT": str(tmp_path / "out"), "WHEELS": str(tmp_path / "no-wheels"), "PARTS": ""}
    call1 = subprocess.run(["bash", str(ROOT / "benchmarks" / "real_model_gpu.sh"), "store"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert call1.returncode == 0 and (store / "part1").read_bytes() == b"p" * 1000, call1.stderr
    call2 = subprocess.run(["bash", str(ROOT / "benchmarks" / "real_model_gpu.sh"), "run"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert call2.returncode == 0, call2.stdout + call2.stderr
    assert "setup done" in call2.stdout and "== done" in call2.stdout and "transformers" in call2.stdout
    assert "IBTree" not in call2.stdout and "== real" not in call2.stdout  # PARTS="" runs no part
    assert (tmp_path / "out" / "real_model_gpu.log").exists()
