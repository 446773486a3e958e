"""Tree rollouts against independent sampling on the shipped base policy, at the paper's group sizes.

    python benchmarks/rollout.py [--task sum|chain] [--configs NAME ...] [--repeats 3] [--questions 64] [--batch 16]
                                 [--threads 2] [--json out.json] [KEY=VALUE ...]

For each sampler, the same fixed test questions (the first --questions of the task's test split, in rollout batches
of --batch, T=1, the task's length cap: 48 for sum, 128 for chain) are grown into trees by the task's shipped
policy; per question we count trajectories, new tokens (a shared prefix counts
once), Eff-Rate (share of questions whose rewards are not all equal), mean reward and wall-clock. Every repeat runs
all samplers in a rotated order with the same seed; ratios to independent G=8 are taken within a repeat, and the
table shows medians over repeats. "re-encoding" grows the same IBTree with prefix cache reuse off (each fork
re-encodes prompt + path), to show what the reuse saves. 'steps' = sequential decode steps per batch (rounds wait
for each other); 'bound' = the fewest possible if each tree ran its rounds on its own (max over trees of the sum of
its continuations' lengths), i.e. what an asynchronous per-tree scheduler could reach at best.

Where forks land: each tree sampler's forks are counted by the step depth of the node they branch from (0 = the
root, i.e. a fresh trajectory; d = after the d-th step), summed over repeats, with the share at the root and the
tokens an inner fork shares with its sibling on average.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from ibtpo.config.schema import build_config, parse_overrides
from ibtpo.training.models import load_policy
from ibtpo.rewards.scoring import reward_leaves
from ibtpo.backends.eager import Engine
from ibtpo.rollout.rules import BranchingOptions
from ibtpo.rollout.samplers import GrowContext, TreeShape, grow_trees
from ibtpo.methods.treepo import FixedWidthOptions
from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.data.tasks import build_rewards, build_task
# name -> (sampler, shape, reuse prefix caches, the sampler's options; None: its defaults)
CONFIGS = {
    "independent G=8": ("independent", TreeShape(b0=8, rounds=1), True, None),
    "independent G=12": ("independent", TreeShape(b0=12, rounds=1), True, None),
    "IBTree (4,9,1,1)": ("ib", TreeShape(b0=4, rounds=9, k=1, b=1), True, None),
    "IBTree (4,9,1,1) re-encoding": ("ib", TreeShape(b0=4, rounds=9, k=1, b=1), False, None),
    "IBTree (4,9,1,1) no root": ("ib", TreeShape(b0=4, rounds=9, k=1, b=1), True,
                                 BranchingOptions(root_candidate=False)),
    "entropy tree (4,9,1,1)": ("entropy", TreeShape(b0=4, rounds=9, k=1, b=1), True, None),
    "random tree (4,9,1,1)": ("random", TreeShape(b0=4, rounds=9, k=1, b=1), True, None),
    "fixed-width G=12 (seg 8, w 2, d 6)": ("fixed_width", TreeShape(b0=4, rounds=9, k=1, b=1), True,
                                           FixedWidthOptions(segment_length=8, width=2, max_depth=6)),
}


class RecordingEngine(Engine):
    """Records, per decode loop, the longest continuation drawn for each question (sequential decode steps)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loops: list[dict[str, int]] = []

    def expand(self, requests):
        out = super().expand(requests)
        longest: dict[str, int] = {}
        for r, group in zip(requests, out):
            for c in group:
                longest[r.tree.question_id] = max(longest.get(r.tree.question_id, 0), len(c.token_ids))
        if longest:
            self.loops.append(longest)
        return out

    def sequential_steps(self) -> tuple[int, int]:
        """(decode steps of the round-synchronous loops, lower bound if each tree ran its rounds on its own)."""
        synced = sum(max(loop.values()) for loop in self.loops)
        per_tree: dict[str, int] = {}
        for loop in self.loops:
            for q, n in loop.items():
                per_tree[q] = per_tree.get(q, 0) + n
        return synced, max(per_tree.values())


def fork_sites(trees, b0: int) -> tuple[dict[int, int], int]:
    """(forks by the step depth of the node they branch from, tokens shared by the inner forks in all)."""
    depths: dict[int, int] = {}
    shared = 0
    for t in trees:
        extra = len(t.root.children) - b0
        if extra > 0:
            depths[0] = depths.get(0, 0) + extra
        for node in t.nodes():
            if len(node.children) > 1:  # every child beyond the first came from a fork
                depths[node.depth] = depths.get(node.depth, 0) + len(node.children) - 1
                shared += (len(node.children) - 1) * node.end
    return depths, shared


def run_one(model, tok, problems, sampler, shape, seed, batch, reuse=True, cap=48, reward_fn=None,
            options=None) -> dict:
    splitter = StepSplitter(tok)
    gen = torch.Generator().manual_seed(seed)
    prompt_of = {p.id: p.prompt for p in problems}

    def score(tree, leaves):
        reward_leaves(reward_fn, tok, prompt_of[tree.question_id], tree, leaves)

    trees, steps = [], []
    t0 = time.perf_counter()
    for i in range(0, len(problems), batch):
        chunk = problems[i:i + batch]
        engine = RecordingEngine(model, SamplingParams(temperature=1.0, max_new_tokens=cap), tok.eos_token_id,
                                 tok.pad_token_id, gen, prefix_reuse=reuse)
        ctx = GrowContext(engine, splitter, shape, cap, score, random.Random(seed + i), options=options)
        trees += grow_trees(sampler, ctx, [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in chunk],
                            [p.id for p in chunk], [{"answer": p.answer} for p in chunk])
        steps.append(engine.sequential_steps())
    wall = time.perf_counter() - t0
    n = len(trees)
    traj = sum(len(t.leaves()) for t in trees) / n
    new = sum(t.new_tokens for t in trees) / n
    depths, shared = fork_sites(trees, shape.b0) if sampler != "independent" else ({}, 0)
    return {
        "trajectories": traj,
        "new_tokens": new,
        "traj_per_1k": 1000 * traj / new,
        "eff_rate": sum(len({x.reward for x in t.leaves()}) > 1 for t in trees) / n,
        "reward": statistics.mean(x.reward for t in trees for x in t.leaves()),
        "reused_prefix": sum(t.meta.get("reused_prefix_tokens", 0) for t in trees) / n,
        "encoded_prefix": sum(t.meta.get("encoded_prefix_tokens", 0) for t in trees) / n,
        "ms_per_q": 1000 * wall / n,
        "seq_steps": statistics.mean(a for a, _ in steps),
        "per_tree_steps": statistics.mean(b for _, b in steps),
        "traj_tokens": statistics.mean(x.end for t in trees for x in t.leaves()),
        "traj_steps": statistics.mean(x.depth for t in trees for x in t.leaves()),
        "fork_depths": depths,
        "inner_shared_tokens": shared,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=("sum", "chain"), default="sum", help="built-in task (and its shipped policy)")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), metavar="NAME",
                    help="samplers to run (default: all); independent G=8 always runs, the ratios' base")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="questions per rollout batch (questions_per_step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-reuse", action="store_true", help="re-encode prefixes instead of reusing their cache")
    ap.add_argument("--json", help="also write the raw per-repeat numbers here")
    ap.add_argument("overrides", nargs="*", help="run-config settings KEY=VALUE (e.g. model=DIR chain_start_last=true)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = build_config(None, {"task": args.task, **parse_overrides(args.overrides)})
    cap, reward_fn = cfg.max_completion_length, build_rewards(cfg).check
    model, tok = load_policy(cfg.model)
    model.eval()
    problems = list(build_task(cfg).test_problems[: args.questions])
    names = [k for k in CONFIGS if not args.configs or k in args.configs or k == "independent G=8"]
    run_one(model, tok, problems[: args.batch], "independent", TreeShape(b0=8, rounds=1), 0, args.batch, cap=cap,
            reward_fn=reward_fn)  # warm-up
    raw: dict[str, list[dict]] = {k: [] for k in names}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for name in order:
            sampler, shape, reuse, options = CONFIGS[name]
            raw[name].append(run_one(model, tok, problems, sampler, shape, seed=rep, batch=args.batch,
                                     reuse=reuse and not args.no_reuse, cap=cap, reward_fn=reward_fn, options=options))
            print(f"  repeat {rep + 1}/{args.repeats} {name}: {raw[name][-1]['ms_per_q']:.1f} ms/question", flush=True)
    base = raw["independent G=8"]
    header = (f"{'sampler':<36}{'traj/q':>7}{'new tok/q':>10}{'traj/1k tok':>12}{'Eff-Rate':>9}{'reward':>8}"
              f"{'reused/q':>9}{'enc/q':>7}{'steps':>7}{'bound':>7}{'ms/q':>8}{'tokens x':>9}{'time x':>8}")
    print(f"\n{cfg.model} on {args.task}: {args.questions} test questions, batches of {args.batch}, cap {cap}, T=1, "
          f"medians of {args.repeats} "
          f"repeats; 'x' = ratio to independent G=8 within a repeat")
    print(header)
    print("-" * len(header))
    summary = {}
    for name in names:
        rows = raw[name]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k not in ("fork_depths", "inner_shared_tokens")}
        med["tokens_x"] = statistics.median(r["new_tokens"] / b["new_tokens"] for r, b in zip(rows, base))
        med["time_x"] = statistics.median(r["ms_per_q"] / b["ms_per_q"] for r, b in zip(rows, base))
        summary[name] = med
        print(f"{name:<36}{med['trajectories']:>7.1f}{med['new_tokens']:>10.1f}{med['traj_per_1k']:>12.1f}"
              f"{med['eff_rate']:>9.3f}{med['reward']:>8.3f}{med['reused_prefix']:>9.0f}{med['encoded_prefix']:>7.0f}"
              f"{med['seq_steps']:>7.0f}{med['per_tree_steps']:>7.0f}{med['ms_per_q']:>8.1f}"
              f"{med['tokens_x']:>9.2f}{med['time_x']:>8.2f}")
    print(f"\nmean trajectory: {summary['independent G=8']['traj_tokens']:.1f} tokens, "
          f"{summary['independent G=8']['traj_steps']:.1f} steps (independent G=8)")
    print("\nwhere forks land (step depth of the node a fork branches from, 0 = root; all repeats):")
    for name in names:
        if CONFIGS[name][0] == "independent":
            continue
        depths: dict[int, int] = {}
        for r in raw[name]:
            for d, c in r["fork_depths"].items():
                depths[int(d)] = depths.get(int(d), 0) + c
        forks = sum(depths.values())
        inner = forks - depths.get(0, 0)
        shared = sum(r["inner_shared_tokens"] for r in raw[name])
        summary[name]["fork_depths"] = dict(sorted(depths.items()))
        summary[name]["root_fork_share"] = depths.get(0, 0) / forks if forks else None
        hist = " ".join(f"{d}:{c}" for d, c in sorted(depths.items()))
        print(f"  {name:<36} root {depths.get(0, 0) / max(1, forks):>4.0%}; an inner fork shares "
              f"{shared / max(1, inner):5.1f} tokens; {hist}")
    if "IBTree (4,9,1,1)" not in summary or "independent G=12" not in summary:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"args": vars(args), "raw": raw, "median": summary}, fh, indent=1)
        return
    ib, g12 = summary["IBTree (4,9,1,1)"], summary["independent G=12"]
    print(f"\nIBTree G=12 new tokens: {ib['tokens_x']:.2f}x independent G=8 (target <= 1.05), "
          f"{ib['new_tokens'] / g12['new_tokens']:.2f}x independent G=12 (target <= 0.70); "
          f"wall-clock {ib['time_x']:.2f}x independent G=8 (target <= 0.90)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "raw": raw, "median": summary}, fh, indent=1)


if __name__ == "__main__":
    main()
