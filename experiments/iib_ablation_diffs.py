"""Paired (by seed) differences of final held-out avg@4 between IIB-LPO and its ablations in `reports/compare`.

Run: .venv/bin/python experiments/iib_ablation_diffs.py  (output in experiments/results/iib_ablation_diffs.txt)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ibtpo.compare import ci95

RUNS = Path("reports/compare/runs")
PAIRS = [("iib_lpo", "iib_lpo_no_filter"), ("iib_lpo", "iib_lpo_no_latent"), ("iib_lpo", "iib_lpo_random_z"),
         ("iib_lpo_no_filter", "ib_tpo"), ("iib_lpo_no_filter", "grpo")]


def final_acc(preset: str, seed: int) -> float:
    summary = json.loads((RUNS / preset / f"seed{seed}" / "summary.json").read_text())
    return 100 * summary["final"]["val/sum/avg@4"]


def main() -> None:
    print("paired difference a - b of final avg@4 (points), seeds 0 1 2: per seed, mean +/- 95% t")
    for a, b in PAIRS:
        diffs = [final_acc(a, s) - final_acc(b, s) for s in range(3)]
        print(f"{a:>18} - {b:<18} {' '.join(f'{d:+5.1f}' for d in diffs)}   "
              f"{statistics.mean(diffs):+.1f} +/- {ci95(diffs):.1f}")


if __name__ == "__main__":
    main()
