"""IB monitoring of a finished run: the probe's readings at every probe step, and window means of per-step metrics.

    python experiments/ib_curves.py RUN_DIR [--window 20] [--phases 4]

Reads RUN_DIR/metrics.jsonl. Table 1 (every run with ib_probe_every > 0): at each probe step, the probe's IB-Score and
Cov(conf, gain) with their standard errors over questions, Tsallis-2 step entropy, token entropy, Eff-Rate and mean
reward of the probe trees, next to the training batch's token entropy and Eff-Rate (mean over the window of steps
ending there) and held-out accuracy when evaluated at that step. Table 2 (tree-based runs): window means of the ib/*
metrics read from the run's own trees. So the paper's picture (under GRPO, Cov falls toward zero and entropy
collapses) can be checked at a glance.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ibtpo.training.metrics import read_metrics


def _fmt(r: dict, key: str, width: int = 9, digits: int = 4) -> str:
    return f"{r[key]:>{width}.{digits}f}" if key in r else f"{'-':>{width}}"


def probe_table(records: list[dict]) -> list[str]:
    probes = [r for r in records if "probe/reward_mean" in r]
    steps = [r for r in records if "actor/entropy" in r]
    acc_key = next((k for r in records for k in r if "/avg@" in k), None)
    lines = [f"{'step':>5} {'IB-Score':>9} {'+/-se':>7} {'Cov':>8} {'+/-se':>7} {'step H2':>8} {'tok H':>7} "
             f"{'Eff':>6} {'reward':>7} | {'train H':>8} {'train Eff':>9} | {'held-out':>8}"]
    prev = -1
    for p in probes:
        window = [r for r in steps if prev < r["step"] <= p["step"]]
        train_h = f"{statistics.mean(r['actor/entropy'] for r in window):>8.4f}" if window else f"{'-':>8}"
        train_e = f"{statistics.mean(r['eff_rate'] for r in window):>9.3f}" if window else f"{'-':>9}"
        lines.append(f"{p['step']:>5} {_fmt(p, 'probe/ib/score_mean')} {_fmt(p, 'probe/ib/score_se', 7, 3)} "
                     f"{_fmt(p, 'probe/ib/cov_conf_gain', 8)} {_fmt(p, 'probe/ib/cov_se', 7)} "
                     f"{_fmt(p, 'probe/ib/step_entropy', 8)} {_fmt(p, 'probe/token_entropy', 7)} "
                     f"{_fmt(p, 'probe/eff_rate', 6, 3)} {_fmt(p, 'probe/reward_mean', 7, 3)} | {train_h} {train_e} | "
                     f"{_fmt(p, acc_key, 8, 3) if acc_key else '-':>8}")
        prev = p["step"]
    return lines


def probe_phases(records: list[dict], phases: int) -> list[str]:
    """Probe readings averaged over consecutive phases of the run (se of a mean of n readings: sqrt(sum se^2) / n)."""
    probes = [r for r in records if "probe/ib/score_mean" in r]
    if len(probes) < 2 * phases:
        return []
    lines = [f"{'steps':>9} {'probes':>6} {'IB-Score':>9} {'+/-se':>6} {'Cov':>8} {'+/-se':>7} {'step H2':>8} "
             f"{'tok H':>7} {'Eff':>6} {'reward':>7}"]
    bounds = [round(i * len(probes) / phases) for i in range(phases + 1)]
    for lo, hi in zip(bounds, bounds[1:]):
        seg = probes[lo:hi]

        def avg(key):
            return statistics.mean(r[key] for r in seg)

        def se(key):
            return (sum(r[key] ** 2 for r in seg)) ** 0.5 / len(seg)

        lines.append(f"{seg[0]['step']:>4}-{seg[-1]['step']:<4} {len(seg):>6} {avg('probe/ib/score_mean'):>9.4f} "
                     f"{se('probe/ib/score_se'):>6.3f} {avg('probe/ib/cov_conf_gain'):>8.4f} "
                     f"{se('probe/ib/cov_se'):>7.4f} {avg('probe/ib/step_entropy'):>8.4f} "
                     f"{avg('probe/token_entropy'):>7.4f} {avg('probe/eff_rate'):>6.3f} {avg('probe/reward_mean'):>7.3f}")
    return lines


def own_tree_table(records: list[dict], window: int) -> list[str]:
    keys = ["ib/score_mean", "ib/cov_conf_gain", "ib/step_entropy", "actor/entropy", "eff_rate", "reward/mean"]
    rows = [r for r in records if "ib/score_mean" in r and "actor/entropy" in r  # independent runs: a probe copy
            and r["ib/score_mean"] != r.get("probe/ib/score_mean")]
    lines = [f"{'steps':>9} " + " ".join(f"{k:>17}" for k in keys)]
    for start in range(0, len(rows), window):
        seg = rows[start:start + window]
        cells = " ".join(f"{statistics.mean(r[k] for r in seg):>17.4f}" for k in keys)
        lines.append(f"{seg[0]['step']:>4}-{seg[-1]['step']:<4} {cells}")
    return lines if rows else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--window", type=int, default=20, help="steps per row of the own-tree table")
    ap.add_argument("--phases", type=int, default=4, help="rows of the probe-phase table")
    args = ap.parse_args()
    records = read_metrics(Path(args.run_dir) / "metrics.jsonl")
    table = probe_table(records)
    if len(table) > 1:
        print("IB probe (fixed test questions; training columns = mean over the steps since the previous probe)")
        print("\n".join(table))
    phases = probe_phases(records, args.phases)
    if phases:
        print(f"\nIB probe averaged over {args.phases} phases of the run")
        print("\n".join(phases))
    own = own_tree_table(records, args.window)
    if own:
        print("\nIB metrics from the run's own trees (window means)")
        print("\n".join(own))


if __name__ == "__main__":
    main()
