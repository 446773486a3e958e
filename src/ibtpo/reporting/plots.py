"""PNG plots of a run's metrics.jsonl: training dynamics against step and generated tokens; the IB instrument."""

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


def series(records: list[dict], key: str, x_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of every record holding `key`; x is the step ("step") or the generated tokens so far ("tokens")."""
    xs, ys, tokens = [], [], 0.0
    for r in records:
        tokens = r.get("train/tokens", tokens)
        if key in r:
            xs.append(r["step"] if x_key == "step" else tokens)
            ys.append(r[key])
    return xs, ys


def moving_average(ys: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (same length as ys)."""
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


IB_PANELS = [  # key substrings: the run's own trees per step and the probe (``probe/...``) every ib_probe_every steps
    ("IB-Score (mean over branching nodes)", ("ib/score_mean",)),
    ("Cov(conf, gain)", ("ib/cov_conf_gain",)),
    ("Tsallis-2 step entropy", ("ib/step_entropy",)),
    ("token entropy", ("actor/entropy", "probe/token_entropy")),
    ("Eff-Rate", ("eff_rate",)),
    ("held-out accuracy", ("avg@", "pass@", "greedy_acc")),
]


PROBE_SE = {"score_mean": "probe/ib/score_se", "cov_conf_gain": "probe/ib/cov_se"}


def _draw(ax, records: list[dict], keys: list[str], x_key: str, legend: bool) -> None:
    """One panel: per-step metrics as a faint raw curve + moving average, sparse ones as markers."""
    seen = set()
    for i, key in enumerate(keys):
        xs, ys = series(records, key, x_key)
        if (tuple(xs), tuple(ys)) in seen:  # e.g. ib/* copied from probe/ib/* in independent runs: draw once
            continue
        seen.add((tuple(xs), tuple(ys)))
        if len(xs) > 40:
            ax.plot(xs, ys, alpha=0.25, lw=0.8, color=f"C{i}")
            ax.plot(xs, moving_average(ys, max(5, len(ys) // 40)), color=f"C{i}", lw=1.8, label=key)
        elif xs:
            se_key = PROBE_SE.get(key.rsplit("/", 1)[-1])
            errs = [r.get(se_key) for r in records if key in r] if se_key else []
            if errs and all(e is not None for e in errs):  # probe readings: +/- one standard error over questions
                ax.errorbar(xs, ys, yerr=errs, marker="o", ms=3, capsize=2, color=f"C{i}", label=f"{key} (+/- se)")
            else:
                ax.plot(xs, ys, marker="o", ms=3, color=f"C{i}", label=key)
    if legend and ax.lines:
        ax.legend(fontsize=7)


def _figure(records: list[dict], panels, x_key: str, label: str, title: str, path: Path, legend_all: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if not k.startswith("perf/") and not k.endswith("_se")})
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.4 * rows))
    for ax, (name, patterns) in zip(axes.flat, panels):
        matched = [k for k in keys if any(p in k for p in patterns)]
        _draw(ax, records, matched, x_key, legend=legend_all or name == "held-out accuracy")
        ax.set_title(name)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, records: list[dict]) -> list[Path]:
    """Write plots/vs_step.png, plots/vs_tokens.png and plots/ib.png (IB instrument next to entropy and Eff-Rate) of
    a run's metric records (``training.metrics.read_metrics``) into RUN_DIR/plots."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    paths = []
    for x_key, label in (("step", "RL step"), ("tokens", "generated tokens")):
        paths.append(_figure(records, PANELS, x_key, label, f"{run_dir.name}: training dynamics vs {label}",
                             out_dir / f"vs_{x_key}.png", legend_all=False))
    paths.append(_figure(records, IB_PANELS, "step", "RL step",
                         f"{run_dir.name}: IB-Score instrument (own trees per step; probe = fixed test questions)",
                         out_dir / "ib.png", legend_all=True))
    return paths
