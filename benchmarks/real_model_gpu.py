"""A real pretrained model learning with ibtpo: GRPO and IB-TPO from the same base, the same generated-token budget.

    PYTHONPATH=src python benchmarks/real_model_gpu.py --model DIR [--run-budget-s 130] [--out benchmarks/results]
    PYTHONPATH=src python benchmarks/real_model_gpu.py --model TINY_DIR --device cpu --set max_completion_length=8 ...

Both runs train on the ``arith`` task (generated one- and two-step word problems, ``ibtpo.data.word_problems``) and
evaluate on its held-out split before, every ``--eval-every`` steps, and after. IB-TPO runs first, for
``--run-budget-s`` seconds (``max_train_time_s``; a first run that fails is retried once with the eager rollout
backend); GRPO then gets exactly the tokens IB-TPO generated as its budget (``max_tokens``), under the same time
limit. Each run is a ``ibtpo train`` subprocess (its plain progress lines go to its log and are echoed).

Printed and written to ``--out`` (``real_model_<machine>.md`` / ``.json`` / ``.png``): one table of strict and lenient
accuracy before/after per method, tokens, steps, wall time per step split rollout/update, new tokens/s, the
rollout/trainer log-prob gap, entropy and IB-Score, and the time split of the whole command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMON = {
    "task": "arith", "test_size": 512, "eval_questions": 128, "eval_k": 4, "eval_temperature": 0.7,
    "eval_top_p": 0.95, "eval_batch_questions": 128, "temperature": 0.7, "top_p": 0.95,
    "max_completion_length": 256, "questions_per_step": 32, "dtype": "float32", "lora_rank": 0,
    "learning_rate": 1e-5, "mini_batch_size": 64, "lr_scheduler": "constant", "warmup_steps": 0,
    "format_reward_weight": 0.1,
    "update_memory_gib": 16, "rollout_max_rows": 512, "eval_every": 5, "save_every": 0, "keep_checkpoints": 1,
    "plots": False, "tensorboard": False, "progress": True, "progress_every": 1, "seed": 0, "threads": 4,
    "max_steps": 10_000, "max_tokens": 0,
}
"""Settings shared by both runs (``--set key=value`` overrides any)."""
METHODS = {"ib_tpo": {"algorithm": "ib_tpo", "ib_probe_every": 0},
           "grpo": {"algorithm": "grpo", "ib_probe_every": 1_000_000, "ib_probe_questions": 16}}
"""Per-method settings: GRPO's IB-Score comes from the IB probe before and after (its own trees are flat)."""


def machine_name(device: str) -> str:
    """The accelerator's name (torch, else nvidia-smi), or the CPU's model name."""
    if device.startswith("cuda"):
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001
            pass
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                  text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "unknown GPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def slug(name: str) -> str:
    """A file-name form of a machine name: 'NVIDIA H200' -> 'nvidia_h200'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40] or "machine"


def read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: list[dict], set_name: str = "arith", k: int = 4) -> dict:
    """What the table shows of one run, from its metrics.jsonl records (step 0 = the evaluation before training)."""
    val = f"val/{set_name}/"
    evals = [r for r in records if f"{val}avg@{k}" in r]
    steps = [r for r in records if "train/tokens" in r]
    first, last = (evals[0], evals[-1]) if evals else ({}, {})

    def acc(rec: dict, name: str) -> float | None:
        return rec.get(f"{val}{name}")

    def col(key: str) -> list[float]:
        return [r[key] for r in steps if isinstance(r.get(key), (int, float))]

    tokens = steps[-1]["train/tokens"] if steps else 0
    roll, upd = col("perf/rollout_time_s"), col("perf/update_time_s")
    ib = [r["ib/score_mean"] for r in records if isinstance(r.get("ib/score_mean"), (int, float))]
    out = {"steps": len(steps), "tokens": tokens, "evaluations": [e["step"] for e in evals],
           "rollout_s_per_step": _mean(roll), "update_s_per_step": _mean(upd),
           "tokens_per_s": tokens / sum(roll) if roll and sum(roll) > 0 else None,
           "logp_gap_mean": _mean(col("rollout/logp_diff_mean")), "logp_gap_max": max(col("rollout/logp_diff_max"),
                                                                                      default=None),
           "entropy": _mean(col("actor/entropy")), "ib_score": _mean(ib), "reward_first": (col("reward/mean") or
                                                                                            [None])[0],
           "reward_last": (col("reward/mean") or [None])[-1], "cap_hit_last": acc(last, "cap_hit_rate"),
           "tree_depth": _mean(col("rollout/tree_depth")), "trajectories_per_question":
               _mean(col("rollout/trajectories_per_question"))}
    for name in (f"strict_avg@{k}", f"lenient_avg@{k}", f"avg@{k}", "strict_greedy_acc", "lenient_greedy_acc",
                 "greedy_acc"):
        out[f"{name}_before"], out[f"{name}_after"] = acc(first, name), acc(last, name)
    out["curve"] = [{"step": e["step"], "tokens": e.get("train/tokens", 0), "strict": acc(e, f"strict_avg@{k}"),
                     "lenient": acc(e, f"lenient_avg@{k}")} for e in evals]
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def build_table(results: dict[str, dict], k: int = 4) -> str:
    """One markdown table: a row per method (results: method -> :func:`summarize` output)."""
    head = ["method", f"strict avg@{k} before -> after", f"lenient avg@{k} before -> after",
            "strict greedy before -> after", "tokens", "steps", "s/step rollout + update", "new tok/s",
            "logp gap mean / max", "entropy", "IB-Score", "cap hits (after)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in results.items():
        if r.get("error"):
            lines.append(f"| {method} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        row = [method,
               f"{_pct(r.get(f'strict_avg@{k}_before'))} -> {_pct(r.get(f'strict_avg@{k}_after'))}",
               f"{_pct(r.get(f'lenient_avg@{k}_before'))} -> {_pct(r.get(f'lenient_avg@{k}_after'))}",
               f"{_pct(r.get('strict_greedy_acc_before'))} -> {_pct(r.get('strict_greedy_acc_after'))}",
               f"{r['tokens']:,}", str(r["steps"]),
               f"{_num(r.get('rollout_s_per_step'), '.2f')} + {_num(r.get('update_s_per_step'), '.2f')}",
               _num(r.get("tokens_per_s"), ",.0f"),
               f"{_num(r.get('logp_gap_mean'), '.4f')} / {_num(r.get('logp_gap_max'), '.3f')}",
               _num(r.get("entropy"), ".3f"), _num(r.get("ib_score"), ".3f"), _pct(r.get("cap_hit_last"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def targets(results: dict[str, dict], k: int = 4) -> list[str]:
    """The issue's learning targets against what was measured."""
    out = []
    g, i = results.get("grpo", {}), results.get("ib_tpo", {})
    key = f"strict_avg@{k}"
    if g.get(f"{key}_before") is not None and g.get(f"{key}_after") is not None:
        gain = 100 * (g[f"{key}_after"] - g[f"{key}_before"])
        out.append(f"TARGET GRPO strict held-out accuracy >= +15 points over the base: {gain:+.1f} points -> "
                   f"{'MET' if gain >= 15 else 'NOT MET'}")
    if g.get(f"{key}_after") is not None and i.get(f"{key}_after") is not None:
        n = 128 * k  # completions per evaluation: the binomial standard error of a difference of two accuracies
        p1, p2 = g[f"{key}_after"], i[f"{key}_after"]
        se = ((p1 * (1 - p1) + p2 * (1 - p2)) / n) ** 0.5
        diff = 100 * (p2 - p1)
        out.append(f"TARGET IB-TPO within noise of GRPO or better: IB-TPO - GRPO = {diff:+.1f} points "
                   f"(2 s.e. = {200 * se:.1f}) -> {'MET' if diff >= -200 * se else 'NOT MET'}")
    return out


def plot(results: dict[str, dict], path: Path, machine: str) -> None:
    """Strict and lenient held-out accuracy against generated tokens, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key in zip(axes, ("strict", "lenient")):
        for method, r in results.items():
            pts = [(c["tokens"], c[key]) for c in r.get("curve", []) if c[key] is not None]
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=method)
        ax.set_title(f"{key} held-out accuracy")
        ax.set_xlabel("generated tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend()
    fig.suptitle(f"SmolLM2-135M-Instruct on arith, {machine}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_method(method: str, overrides: dict, run_dir: Path, timeout_s: float, log: Path) -> tuple[int, float]:
    """``ibtpo train`` as a subprocess (its lines echoed as they come); (exit code, wall seconds)."""
    args = [sys.executable, "-m", "ibtpo.cli", "train", *(f"{k}={v}" for k, v in overrides.items()),
            f"out_dir={run_dir}", "overwrite=true"]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        watchdog = threading.Timer(timeout_s, proc.kill)  # a run that hangs or overruns is stopped
        watchdog.start()
        try:
            for line in proc.stdout:
                fh.write(line)
                if line.startswith(("step ", "memory plan", "warning", "held-out")) or "Error" in line:
                    print(f"  [{method}] {line.rstrip()}", flush=True)
            code = proc.wait()
        finally:
            watchdog.cancel()
        if time.perf_counter() - t0 >= timeout_s:
            print(f"  [{method}] killed at the time limit ({timeout_s:.0f} s)", flush=True)
    return code, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the base model directory (SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--run-budget-s", type=float, default=130.0, help="max_train_time_s of each run")
    ap.add_argument("--slack-s", type=float, default=90.0, help="a run is killed this long after its budget")
    ap.add_argument("--methods", default="ib_tpo,grpo", help="the first sets the token budget of the others")
    ap.add_argument("--set", nargs="*", default=[], help="key=value overrides of both runs")
    ap.add_argument("--runs-dir", default="/tmp/ibtpo-real-model-runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    machine = machine_name(args.device)
    common = {**COMMON, "model": args.model, "device": args.device}
    for item in args.set:
        key, _, value = item.partition("=")
        common[key] = value
    k = int(common["eval_k"])
    out_dir, runs = Path(args.out), Path(args.runs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine}; model {args.model}; each run {args.run_budget_s:.0f} s", flush=True)
    results: dict[str, dict] = {}
    timing: dict[str, float] = {}
    budget_tokens = None
    for method in args.methods.split(","):
        over = {**common, **METHODS.get(method, {"algorithm": method}), "max_train_time_s": args.run_budget_s}
        if budget_tokens:
            over["max_tokens"] = budget_tokens
        run_dir = runs / method
        print(f"== {method}" + (f" (token budget {budget_tokens:,}, from the first run)" if budget_tokens else ""),
              flush=True)
        code, wall = run_method(method, over, run_dir, args.run_budget_s + args.slack_s, runs / f"{method}.log")
        if code != 0 and not budget_tokens and "rollout_backend" not in over:
            print(f"  [{method}] exit {code}; retrying once with rollout_backend=eager", flush=True)
            over["rollout_backend"] = "eager"
            code, wall2 = run_method(method, over, run_dir, args.run_budget_s + args.slack_s,
                                     runs / f"{method}_eager.log")
            wall += wall2
        timing[method] = wall
        summary = summarize(read_records(run_dir / "metrics.jsonl"), "arith", k)
        summary.update(exit_code=code, wall_s=wall, settings=over)
        if code != 0:
            tail = (runs / f"{method}.log").read_text().strip().splitlines()[-1:] if (runs / f"{method}.log").exists() \
                else []
            summary["error"] = f"exit {code}: {tail[0][:160] if tail else ''}"
        results[method] = summary
        if not budget_tokens and summary["tokens"]:
            budget_tokens = summary["tokens"]
    table = build_table(results, k)
    lines = targets(results, k)
    total = time.perf_counter() - t_start
    split = ", ".join(f"{m} {t:.0f} s" for m, t in timing.items())
    header = (f"SmolLM2-135M-Instruct on the arith task, {machine}: {common['questions_per_step']} questions/step, "
              f"cap {common['max_completion_length']}, T={common['temperature']}, lr {common['learning_rate']}, "
              f"{common['eval_questions']} held-out questions x {k} samples (T={common['eval_temperature']}); "
              f"time: {split}, total {total:.0f} s")
    report = "\n".join([header, "", table, "", *lines])
    print("\n" + report, flush=True)
    name = f"real_model_{slug(machine)}"
    (out_dir / f"{name}.md").write_text(report + "\n")
    (out_dir / f"{name}.json").write_text(json.dumps({"machine": machine, "results": results, "timing_s": timing,
                                                      "total_s": total, "targets": lines}, indent=2, default=str))
    try:
        plot(results, out_dir / f"{name}.png", machine)
    except Exception as exc:  # noqa: BLE001  (the table matters more than the plot)
        print(f"plot failed: {exc}")
    print(f"wrote {out_dir / name}.md / .json / .png", flush=True)
    return 0 if all(r.get("exit_code") == 0 for r in results.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
