"""Warm up one chain base policy with given task and pretrain settings and print its held-out accuracy.

    python experiments/chain_pretrain_sweep.py OUT_DIR [task.KEY=V ...] [KEY=V ...] [--threads 1]

``task.*`` keys set the ChainTask generator (min_ops, max_ops, max_operand, max_total, start_last); the others are PretrainConfig
fields (steps, num_examples, batch_size, learning_rate, ...). Writes the policy and its ``pretrain_summary.json`` to
OUT_DIR (``ibtpo.training.testbed_policy.build_base_policy``). Used to choose the shipped chain policy's settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ibtpo.training.testbed_policy import build_base_policy
from ibtpo.testbed.chain import ChainTask
from ibtpo.testbed.pretrain import PretrainConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("kv", nargs="*")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    task_kw, pre_kw = {}, {"task": "chain"}
    for item in args.kv:
        key, val = item.split("=", 1)
        num = {"true": True, "false": False}.get(val.lower()) if val.lower() in ("true", "false") else (
            float(val) if "." in val or "e" in val else int(val))
        (task_kw if key.startswith("task.") else pre_kw)[key.removeprefix("task.")] = num
    summary = build_base_policy(PretrainConfig(**pre_kw), Path(args.out), task=ChainTask(**task_kw),
                                threads=args.threads, progress=False)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
