"""Where the IB rule forks on the testbed: at the root (a fresh sample) or inside a trajectory, and how much of a
trajectory a fork shares. Grows IBTrees (the run's tree settings) with a policy on training questions.

    python experiments/fork_sites.py [MODEL_OR_RUN_DIR ...] [--task sum|chain] [--questions 128]

With tree shape (B0, L, K, B) = (4, 9, 1, 1) every tree gets B0 = 4 chains from the root and 8 forks; a fork at
the root shares nothing, a fork after k tokens shares k.
"""

from __future__ import annotations

import argparse

import torch

from ibtpo.config.schema import build_config
from ibtpo.training.models import load_policy
from ibtpo.evaluation.probe import grow_probe
from ibtpo.data.tasks import BuiltinSource, build_rewards
from ibtpo.training.checkpoint import latest_checkpoint
from ibtpo.config.components import rollout_spec, tree_shape


def fork_sites(name: str | None, questions: int, task: str = "sum") -> str:
    from pathlib import Path

    cfg = build_config(None, {"threads": 2, "task": task})
    name = name or cfg.model
    ckpt = latest_checkpoint(Path(name)) if (Path(name) / "checkpoints").is_dir() else None
    model, tok = load_policy(str(ckpt) if ckpt else name)
    source = BuiltinSource(cfg)
    problems = [source.train_problem(i) for i in range(questions)]
    trees = grow_probe(rollout_spec(cfg, tok, "ib"), model, tok, problems, build_rewards(cfg).check, seed=0,
                       batch_questions=64)
    root_forks = inner_forks = shared = 0
    for t in trees:
        root_forks += len(t.root.children) - tree_shape(cfg, "ib").b0
        for node in t.nodes():
            if node.children and node is not t.root:
                extra = len(node.children) - 1  # a branching node: every child beyond the first came from a fork
                inner_forks += extra
                shared += extra * node.end
    forks = root_forks + inner_forks
    per_traj = sum(t.new_tokens for t in trees) / sum(len(t.leaves()) for t in trees)
    return (f"{name}: {forks} forks on {len(trees)} questions; at the root {root_forks} ({root_forks / forks:.0%}), "
            f"inside {inner_forks}; an inner fork shares {shared / max(1, inner_forks):.1f} tokens on average; "
            f"new tokens per trajectory {per_traj:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=[None], help="policies or run dirs (default: the task's shipped one)")
    ap.add_argument("--task", choices=("sum", "chain"), default="sum")
    ap.add_argument("--questions", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name in args.models:
        print(fork_sites(name, args.questions, args.task))


if __name__ == "__main__":
    main()
