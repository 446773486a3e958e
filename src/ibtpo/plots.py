"""PNG plots of a run's metrics.jsonl: training dynamics against step and against generated tokens."""

from __future__ import annotations

from pathlib import Path

PANELS = [
    ("held-out accuracy", ("avg@", "pass@", "greedy_acc")),
    ("reward/mean", ("reward/mean",)),
    ("actor/entropy", ("actor/entropy",)),
    ("eff_rate", ("eff_rate",)),
    ("response_length/mean", ("response_length/mean",)),
    ("actor/pg_clipfrac", ("actor/pg_clipfrac",)),
    ("ib/score_mean", ("ib/score_mean",)),
    ("ib/cov_conf_gain", ("ib/cov_conf_gain",)),
    ("rollout/new_tokens_per_question", ("rollout/new_tokens_per_question",)),
]


def _series(records: list[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    xs, ys, tokens = [], [], 0.0
    for r in records:
        tokens = r.get("train/tokens", tokens)
        if key in r:
            xs.append(r["step"] if x_key == "step" else tokens)
            ys.append(r[key])
    return xs, ys


def _moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (same length as ys)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write plots/vs_step.png and plots/vs_tokens.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ibtpo.training.metrics import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    keys = sorted({k for r in records for k in r})
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    paths = []
    for x_key, label in (("step", "RL step"), ("tokens", "generated tokens")):
        fig, axes = plt.subplots(3, 3, figsize=(14, 10))
        for ax, (title, patterns) in zip(axes.flat, PANELS):
            for key in keys:
                if any(p in key for p in patterns) and not key.startswith("perf/"):
                    xs, ys = _series(records, key, x_key)
                    if len(xs) > 40:  # per-step metric: faint raw curve + moving average
                        ax.plot(xs, ys, alpha=0.25, lw=0.8, color="C0")
                        ax.plot(xs, _moving_average(ys, max(5, len(ys) // 40)), color="C0", lw=1.8)
                    elif xs:
                        ax.plot(xs, ys, marker="o", ms=3, label=key.split("/")[-1]
                                if title == "held-out accuracy" else None)
            ax.set_title(title)
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            if title == "held-out accuracy" and ax.lines:
                ax.legend(fontsize=8)
        fig.suptitle(f"{run_dir.name}: training dynamics vs {label}")
        fig.tight_layout()
        path = out_dir / f"vs_{x_key}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
