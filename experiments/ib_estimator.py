"""How well the IB-Score estimator recovers the closed-form value on the synthetic step process.

    python experiments/ib_estimator.py [--seeds 0 1 2] [--trees 300]

For each process seed, grows --trees Monte Carlo trees at the root (B children from pi, m rollouts each, 0/1 leaf
rewards, p_hat through the real tree code) for B = m in 2, 4, 8, 16, 32, and prints the bias, its standard error and
the RMSE of IB(root) and Cov(conf, gain) against the exact values (``algos.synthetic_steps``).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from ibtpo.methods.ib_tpo import cov_conf_gain, ib_score
from ibtpo.algos.synthetic_steps import StepProcess
from ibtpo.core.tree import compute_p_hat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trees", type=int, default=300)
    ap.add_argument("--beta", type=float, default=5.0)
    args = ap.parse_args()
    print(f"{'seed':>4} {'B=m':>4} {'IB bias':>9} {'IB se':>7} {'IB rmse':>8} {'Cov bias':>9} {'Cov rmse':>9}")
    for seed in args.seeds:
        proc = StepProcess(seed=seed)
        exact = proc.exact((), args.beta)
        rng = np.random.default_rng(7)
        for bm in (2, 4, 8, 16, 32):
            ib, cov = [], []
            for _ in range(args.trees):
                tree = proc.sample_tree((), bm, bm, rng)
                compute_p_hat(tree.root)
                ib.append(ib_score(tree.root, args.beta, "product"))
                cov.append(cov_conf_gain(tree.root, "product"))
            ib, cov = np.array(ib) - exact["ib"], np.array(cov) - exact["cov"]
            print(f"{seed:>4} {bm:>4} {ib.mean():>9.4f} {ib.std(ddof=1) / math.sqrt(len(ib)):>7.4f} "
                  f"{math.sqrt((ib ** 2).mean()):>8.4f} {cov.mean():>9.4f} {math.sqrt((cov ** 2).mean()):>9.4f}")


if __name__ == "__main__":
    main()
