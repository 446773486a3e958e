"""Fault matrix: bad inputs and faults tried through the real CLI, as a new user (or a crashing machine) would.

Every case runs ``ibtpo`` in a subprocess on the shipped testbed policy with a tiny budget and is classified:

- ``one_line``: exit code 2, exactly one ``ibtpo: error:`` line on stderr, no traceback (and the fragment the case
  expects is in that line);
- ``ok``: the case expects success (e.g. resuming past a torn metrics line) and got exit code 0 with a finished run;
- anything else is a failure, kept with its stderr tail.

Cases that touch a saved run also check that nothing saved was lost or corrupted: every complete checkpoint of the
run is still there, byte for byte, and config.yaml is unchanged after a refused command; a run that must continue
does continue (``--resume`` finishes it). Faults are real where the machine allows (a small tmpfs that fills up, a
read-only remount, a file-size limit, SIGKILL) and simulated by patching the writer in the subprocess otherwise.

    python experiments/fault_matrix.py [--only SUBSTR] [--jobs 2] [--out experiments/results/fault_matrix.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_cases_inputs  # noqa: E402,F401  (registers its cases)
import fault_cases_runs  # noqa: E402,F401
import fault_cases_plugins  # noqa: E402,F401  (issue 27: plugin boundary, non-finite, timeouts, SIGTERM, exactness)
import fault_harness as H  # noqa: E402
from fault_harness import CASES, ROOT, Workspace, classify  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run only cases whose category/name contains one of these "
                    "comma-separated strings")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "fault_matrix.json"))
    args = ap.parse_args()
    wanted = [w for w in args.only.split(",")]
    cases = [c for c in CASES if any(w in f"{c.category}/{c.name}" for w in wanted)]
    with tempfile.TemporaryDirectory() as tmp:
        H.BASE = H.make_base(Path(tmp))

        def one(i_c):
            i, c = i_c
            ws = Workspace(Path(tmp) / f"case{i:03d}")
            ws.path.mkdir()
            t0 = time.time()
            try:
                proc, problem = c.run(ws)
            except subprocess.TimeoutExpired as exc:
                proc, problem = subprocess.CompletedProcess(exc.cmd, -9, "", "TIMEOUT"), None
            res = classify(c, proc, problem)
            res["seconds"] = round(time.time() - t0, 1)
            print(f"[{i + 1}/{len(cases)}] {res['outcome']:<13} {c.category}/{c.name}: {res['message'][:150]}",
                  flush=True)
            return res

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one, enumerate(cases)))
    tried = [r for r in results if r["outcome"] != "skipped"]
    summary = {
        "tried": len(tried),
        "by_category": {cat: sum(r["category"] == cat for r in tried) for cat in dict.fromkeys(r["category"] for r in tried)},
        "expected_errors": sum(r["expect"] in ("error", "interrupted") for r in tried),
        "one_line_exit_2": sum(r["outcome"] == "one_line" for r in tried),
        "expected_success": sum(r["expect"] == "ok" for r in tried),
        "succeeded": sum(r["outcome"] == "ok" for r in tried),
        "failed": sum(r["outcome"] == "failed" for r in tried),
        "tracebacks": sum(r["traceback"] for r in tried),
        "lost_corrupted_or_stuck_runs": sum(r["outcome"] == "lost_or_stuck" for r in tried),
        "skipped": [r["name"] for r in results if r["outcome"] == "skipped"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "cases": results}, indent=1))
    print(json.dumps(summary, indent=1))
    for r in results:
        if r["outcome"] in ("failed", "lost_or_stuck"):
            print(f"--- {r['category']}/{r['name']} ({r['outcome']}, rc {r['rc']}): {r.get('problem', '')}\n"
                  f"{r.get('stderr_tail', '')[-600:]}")


if __name__ == "__main__":
    main()
