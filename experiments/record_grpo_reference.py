"""Record the GRPO result of a finished ``ibtpo compare`` report as the testbed's reference for end-of-run summaries.

    python experiments/record_grpo_reference.py reports/compare

Reads REPORT_DIR/report.json (the GRPO row: final held-out accuracy per seed) and the GRPO runs' config.yaml (the
shared settings, which must agree across seeds), and writes src/ibtpo/testbed/grpo_reference.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ibtpo.compare import ci95, run_dir
from ibtpo.config.schema import build_config
from ibtpo.training.reference import REFERENCE_PATH, shared_settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", type=Path)
    args = ap.parse_args()
    report = json.loads((args.report_dir / "report.json").read_text())
    row = next(r for r in report["rows"] if r["preset"] == "grpo")
    settings = [shared_settings(build_config(run_dir(args.report_dir, "grpo", s) / "config.yaml"))
                for s in row["seeds"]]
    if any(s != settings[0] for s in settings):
        raise SystemExit("the GRPO runs of this report do not share their settings")
    acc = row["final_acc"]
    ref = {"source": f"{args.report_dir}/report.md", "seeds": row["seeds"], "final_acc": acc,
           "mean": statistics.mean(acc), "ci95": ci95(acc), "settings": settings[0]}
    REFERENCE_PATH.write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {REFERENCE_PATH}: GRPO {100 * ref['mean']:.1f}% +/- {100 * ref['ci95']:.1f} over {len(acc)} seeds")


if __name__ == "__main__":
    main()
