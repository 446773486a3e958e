"""IB monitoring of a finished run, as window means: IB-Score, Cov(conf, gain), step entropy, token entropy, Eff-Rate.

    python experiments/ib_curves.py RUN_DIR [--window 20]

Reads RUN_DIR/metrics.jsonl (any algorithm; every run logs ib/* from its own trees) and prints one row per window of
training steps, so the paper's picture (Cov falls under GRPO, entropy collapses) can be checked at a glance.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ibtpo.training.metrics import read_metrics

KEYS = ["ib/score_mean", "ib/cov_conf_gain", "ib/step_entropy", "actor/entropy", "eff_rate", "reward/mean"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--window", type=int, default=20)
    args = ap.parse_args()
    rows = [r for r in read_metrics(Path(args.run_dir) / "metrics.jsonl") if "ib/score_mean" in r]
    print(f"{'steps':>9} " + " ".join(f"{k:>17}" for k in KEYS))
    for start in range(0, len(rows), args.window):
        seg = rows[start:start + args.window]
        cells = " ".join(f"{statistics.mean(r[k] for r in seg):>17.4f}" for k in KEYS)
        print(f"{seg[0]['step']:>4}-{seg[-1]['step']:<4} {cells}")


if __name__ == "__main__":
    main()
