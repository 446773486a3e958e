"""Are two runs' metric streams identical? Compares RUN_A/metrics.jsonl and RUN_B/metrics.jsonl step by step,
every logged value except timings (perf/*, *time*), over the steps both hold (optionally only steps < --below).

How a refactor is checked for unchanged behaviour: run the same command on the old and the new code (e.g.
``PYTHONPATH=OLD/src ibtpo train out_dir=A ...`` and ``PYTHONPATH=src ibtpo train out_dir=B ...``), then
``python experiments/compare_streams.py A B``. Exits 1 when a value differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def records(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--below", type=int, default=None, help="compare only steps < N (e.g. one run stopped earlier)")
    args = ap.parse_args()
    a, b = records(args.run_a), records(args.run_b)
    steps = sorted(s for s in set(a) & set(b) if args.below is None or s < args.below)
    compared, differing = 0, []
    for s in steps:
        for key, value in a[s].items():
            if key.startswith("perf/") or "time" in key or key not in b[s]:
                continue
            compared += 1
            if b[s][key] != value:
                differing.append((s, key, value, b[s][key]))
    for s, key, x, y in differing[:10]:
        print(f"step {s} {key}: {x!r} != {y!r}")
    print(f"{len(steps)} steps, {compared} values compared, {len(differing)} differing")
    return 1 if differing or not steps else 0


if __name__ == "__main__":
    sys.exit(main())
