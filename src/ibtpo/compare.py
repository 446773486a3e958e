"""``ibtpo compare``: presets x seeds at the same generated-token budget, and the report that answers "does it beat
GRPO at the same cost?".

Every run trains from the same base policy with the same shared settings and evaluation set; only ``algorithm`` and
``seed`` differ, and every run stops on the token budget (``max_tokens``), not on steps. Runs live in
``OUT/runs/<preset>/seed<k>``; a finished run (``summary.json``) is reused, an interrupted one resumed from its last
checkpoint, so an interrupted comparison continues where it stopped. The report (``OUT/report.md``, ``report.json``,
``OUT/plots/*.png``) is rebuilt from the run directories alone.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from ibtpo.reporting.plots import moving_average, series
from ibtpo.training.metrics import read_metrics

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
TAIL = 0.1
"""Per-step metrics (entropy, Eff-Rate) are read as the mean over the last 10% of a run's steps."""


def ci95(values: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    return T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def run_dir(out: Path, preset: str, seed: int) -> Path:
    return Path(out) / "runs" / preset / f"seed{seed}"


def tokens_to_reach(evals: list[tuple[float, float]], target: float) -> float | None:
    """Generated tokens at which held-out accuracy first reaches `target`, interpolated linearly between evaluations
    ((tokens, accuracy) pairs in order); None if it never does."""
    prev = None
    for tokens, acc in evals:
        if acc >= target:
            if prev is None or acc == prev[1]:
                return tokens
            t0, a0 = prev
            return t0 + (target - a0) / (acc - a0) * (tokens - t0)
        prev = (tokens, acc)
    return None


def run_record(path: Path) -> dict[str, Any]:
    """The numbers of one finished run that the report needs."""
    summary = json.loads((path / "summary.json").read_text())
    records = read_metrics(path / "metrics.jsonl")
    acc_key = next(k for k in summary["final"] if "/avg@" in k)
    pass_key = acc_key.replace("avg@", "pass@")
    tokens, evals, steps = 0, [], []
    for r in records:
        tokens = r.get("train/tokens", tokens)
        if acc_key in r:
            evals.append((tokens, r[acc_key]))
        if "actor/entropy" in r:
            steps.append(r)
    tail = steps[-max(1, int(len(steps) * TAIL)):]
    traj = [r["rollout/trajectories_per_question"] for r in steps]
    per_traj = [r["rollout/new_tokens_per_question"] / r["rollout/trajectories_per_question"] for r in steps]
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").exists() else {}
    probes = [r for r in records if "probe/ib/score_mean" in r]
    return {"final_acc": summary["final"][acc_key], "final_pass": summary["final"][pass_key],
            "best_acc": max(a for _, a in evals), "evals": evals, "acc_key": acc_key,
            "entropy": statistics.mean(r["actor/entropy"] for r in tail),
            "eff_rate": statistics.mean(r["eff_rate"] for r in tail),
            "ib_score": probes[-1]["probe/ib/score_mean"] if probes else None,
            "cov": probes[-1].get("probe/ib/cov_conf_gain") if probes else None,
            "tokens": summary["generated_tokens"], "steps": summary["steps"],
            "trajectories": statistics.mean(traj), "tokens_per_trajectory": statistics.mean(per_traj),
            "threads": config.get("threads"), "minutes": summary["wall_clock_s"] / 60}


def _tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _fmt_ci(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values) * scale
    return f"{mean:.{digits}f} +/- {ci95(values) * scale:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def build_report(out: Path, presets: list[str], seeds: list[int], baseline: str = "grpo") -> dict[str, Any]:
    """Collect every finished run; write report.md, report.json and the plots; return the report data."""
    out = Path(out)
    runs = {p: {s: run_record(run_dir(out, p, s)) for s in seeds if (run_dir(out, p, s) / "summary.json").exists()}
            for p in presets}
    base = runs.get(baseline, {})
    target = statistics.mean(r["final_acc"] for r in base.values()) if base else None
    rows = []
    for p in presets:
        rs = runs[p]
        if not rs:
            continue
        reach = [tokens_to_reach(r["evals"], target) for r in rs.values()] if target is not None else []
        reached = [t for t in reach if t is not None]
        paired = [rs[s]["final_acc"] - base[s]["final_acc"] for s in rs if s in base] if p != baseline else []
        ib = [r["ib_score"] for r in rs.values() if r["ib_score"] is not None]
        rows.append({
            "preset": p, "seeds": sorted(rs), "final_acc": [r["final_acc"] for r in rs.values()],
            "final_pass": [r["final_pass"] for r in rs.values()], "best_acc": [r["best_acc"] for r in rs.values()],
            "diff_vs_baseline": paired, "tokens_to_baseline": reached, "reached": f"{len(reached)}/{len(reach)}",
            "entropy": statistics.mean(r["entropy"] for r in rs.values()),
            "eff_rate": statistics.mean(r["eff_rate"] for r in rs.values()),
            "ib_score": statistics.mean(ib) if ib else None,
            "tokens": statistics.mean(r["tokens"] for r in rs.values()),
            "steps": statistics.mean(r["steps"] for r in rs.values()),
            "trajectories": statistics.mean(r["trajectories"] for r in rs.values()),
            "tokens_per_trajectory": statistics.mean(r["tokens_per_trajectory"] for r in rs.values()),
            "threads": sorted({r["threads"] for r in rs.values() if r["threads"] is not None}),
            "minutes": statistics.mean(r["minutes"] for r in rs.values())})
    base_tokens = statistics.mean(r["tokens"] for r in base.values()) if base else None
    acc_key = next((r["acc_key"] for rs in runs.values() for r in rs.values()), "avg@k")
    lines = [f"# Comparison at equal generated-token budget ({acc_key.split('/')[-1]} on the held-out set)", "",
             f"Mean +/- 95% t-interval over seeds (points). Baseline `{baseline}` final accuracy: "
             + (f"{100 * target:.1f}%." if target is not None else "not run."), "",
             "| preset | seeds | final acc | diff vs " + baseline + " (paired) | final pass@k | best acc | tokens to "
             + baseline + " final acc (x baseline budget) | final entropy | Eff-Rate | IB-Score (probe) | tokens | "
             "steps | trajectories / question | new tokens / trajectory | minutes (threads) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = "-"
        if r["tokens_to_baseline"]:
            t = statistics.mean(r["tokens_to_baseline"])
            reach = f"{_tokens(t)} ({t / base_tokens:.2f}x) [{r['reached']}]" if base_tokens else _tokens(t)
        elif target is not None:
            reach = f"not reached [{r['reached']}]"
        diff = _fmt_ci(r["diff_vs_baseline"]) if r["diff_vs_baseline"] else "-"
        ib = f"{r['ib_score']:.3f}" if r["ib_score"] is not None else "-"
        lines.append(f"| {r['preset']} | {len(r['seeds'])} | {_fmt_ci(r['final_acc'])} | {diff} | "
                     f"{_fmt_ci(r['final_pass'])} | {_fmt_ci(r['best_acc'])} | {reach} | {r['entropy']:.4f} | "
                     f"{r['eff_rate']:.3f} | {ib} | {_tokens(r['tokens'])} | {r['steps']:.0f} | "
                     f"{r['trajectories']:.1f} | {r['tokens_per_trajectory']:.1f} | {r['minutes']:.1f} "
                     f"({','.join(map(str, r['threads'])) or '?'}) |")
    lines += ["", "Final entropy and Eff-Rate: mean over the last 10% of steps; IB-Score: the last probe reading. "
              "New tokens / trajectory: generated tokens per question / trajectories per question (shared prefixes "
              "count once). Minutes depend on the torch threads of each run and on what else ran on the machine.",
              "Plots against generated tokens: `plots/compare_vs_tokens.png`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    data = {"baseline": baseline, "baseline_final_acc": target, "rows": rows}
    (out / "report.json").write_text(json.dumps(data, indent=1))
    plot_comparison(out, runs)
    return data


PLOT_KEYS = [("held-out accuracy", None), ("actor/entropy", "actor/entropy"), ("eff_rate", "eff_rate"),
             ("IB-Score (probe)", "probe/ib/score_mean"), ("Cov (probe)", "probe/ib/cov_conf_gain"),
             ("response_length/mean", "response_length/mean")]


def _curve(path: Path, key: str | None, acc_key: str) -> tuple[np.ndarray, np.ndarray]:
    """A run's metric against generated tokens (held-out accuracy when `key` is None); per-step metrics smoothed."""
    xs, ys = series(read_metrics(path / "metrics.jsonl"), key or acc_key, "tokens")
    if key is not None and len(ys) > 40:
        ys = moving_average(ys, max(5, len(ys) // 40))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_comparison(out: Path, runs: dict[str, dict[int, dict]]) -> Path:
    """One line per preset (mean over seeds on a common token grid), against generated tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    for ax, (title, key) in zip(axes.flat, PLOT_KEYS):
        for i, (preset, rs) in enumerate(runs.items()):
            curves = [_curve(run_dir(out, preset, s), key, r["acc_key"]) for s, r in rs.items()]
            curves = [(x, y) for x, y in curves if len(x) > 1]
            if not curves:
                continue
            grid = np.linspace(max(c[0][0] for c in curves), min(c[0][-1] for c in curves), 60)
            mean = np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)
            ax.plot(grid, mean, color=f"C{i % 10}", ls="-" if i < 10 else "--", lw=1.6,
                    label=f"{preset} ({len(curves)})")
        ax.set_title(title)
        ax.set_xlabel("generated tokens")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("presets at equal generated-token budget (mean over seeds)")
    fig.tight_layout()
    path = Path(out) / "plots" / "compare_vs_tokens.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _train_quietly(cfg_dict: dict, resume: bool) -> dict:
    """One run in a worker process (no progress bar: several runs share the terminal)."""
    from ibtpo.config.schema import TrainConfig
    from ibtpo.training.run import train

    cfg = TrainConfig(**{**cfg_dict, "progress": False})
    summary = train(cfg, resume=resume, console=Console(stderr=True, quiet=True))
    return {"steps": summary["steps"], "final": summary["final"]}


def run_parallel(todo: list[tuple[str, Any, bool]], jobs: int, console: Console) -> None:
    """Run (label, config, resume) entries `jobs` at a time in worker processes; print each one as it ends.

    Each run uses ``cfg.threads`` torch threads: keep jobs x threads at most the number of cores. A failed run
    stops the comparison after the runs in flight end (their checkpoints stay; a second call resumes them).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for label, cfg, resume in todo:
            futures[pool.submit(_train_quietly, cfg.model_dump(), resume)] = label
            console.print(f"[bold]{label}[/bold] queued" + (" (resuming its last checkpoint)" if resume else ""))
        for done, fut in enumerate(as_completed(futures), start=1):
            result = fut.result()
            acc = next((f"{100 * v:.1f}%" for k, v in result["final"].items() if "/avg@" in k), "-")
            console.print(f"{futures[fut]} finished: {result['steps']} steps, final accuracy {acc} "
                          f"({done}/{len(futures)} of this call)")

