"""Where along a trajectory a policy is unsure, and where it goes wrong: per step depth, on a built-in task.

    python experiments/step_uncertainty.py [MODEL] [--task chain] [--questions 128] [--samples 8] [--json OUT] [--set KEY=VALUE ...]

Samples `--samples` independent trajectories (T=1, the task's length cap) per test question, splits them into steps
(the run's delimiter) and reports per step depth d (1 = first step): how many trajectories reach it, the mean token
entropy of the step, the mean step confidence conf = exp(mean token log-prob) (the IB rule's conf; an unbranched
node whose next step has confidence c scores IB = -(1+beta)/beta * c, so the least confident steps are where the
IB rule forks inside a trajectory), and, on the chain task, where mistakes happen: the share of the steps at depth d
that are wrong given the trajectory's own earlier steps (``ibtpo.testbed.chain.check_steps``: the right operation
applied to the carried total), the share of trajectories whose first mistake is at depth d, and the hazard
P(first mistake at d | no mistake before d).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import defaultdict

import torch

from ibtpo.config.schema import build_config, parse_overrides
from ibtpo.training.models import load_policy
from ibtpo.rollout.grow import grow_problem_trees
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.rollout.samplers import TreeShape
from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.data.tasks import build_rewards, build_task
from ibtpo.testbed.chain import check_steps


def step_table(model_name: str, task: str, questions: int, samples: int, seed: int = 0,
               settings: dict | None = None) -> dict:
    """Per-depth rows (see the module doc) and trajectory-level totals."""
    cfg = build_config(None, {"task": task, **({"model": model_name} if model_name else {}), **(settings or {})})
    model, tok = load_policy(cfg.model)
    problems = list(build_task(cfg).test_problems[:questions])
    prompt_of = {p.id: p.prompt for p in problems}
    spec = RolloutSpec("independent", TreeShape(b0=samples, rounds=1),
                       SamplingParams(temperature=1.0, max_new_tokens=cfg.max_completion_length),
                       StepSplitter(tok, cfg.step_delimiter, cfg.min_step_tokens))
    trees = grow_problem_trees(spec, model, tok, problems, build_rewards(cfg).check,
                               torch.Generator().manual_seed(seed), random.Random(seed))
    rows: dict[int, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    first_error: list[int | None] = []
    lengths, steps, rewards = [], [], []
    for tree in trees:
        for leaf in tree.leaves():
            nodes = leaf.lineage()
            lengths.append(leaf.end)
            steps.append(len(nodes))
            rewards.append(leaf.reward)
            texts = [tok.decode(node.token_ids, skip_special_tokens=True) for node in nodes]
            verdicts = check_steps(prompt_of[tree.question_id], texts) if task == "chain" else [None] * len(nodes)
            for d, (node, ok) in enumerate(zip(nodes, verdicts), start=1):
                rows[d]["entropy"].append(statistics.mean(node.entropies))
                rows[d]["conf"].append(node.confidence())
                if ok is not None:
                    rows[d]["wrong"].append(not ok)
            first_error.append(next((d for d, ok in enumerate(verdicts, start=1) if ok is False), None))
    n = len(first_error)
    table = []
    for d in sorted(rows):
        reached_right = sum(1 for w in first_error if w is None or w >= d)
        at = sum(1 for w in first_error if w == d)
        checked = task == "chain"
        table.append({"depth": d, "reached": len(rows[d]["conf"]), "entropy": statistics.mean(rows[d]["entropy"]),
                      "conf": statistics.mean(rows[d]["conf"]),
                      "step_error": statistics.mean(rows[d]["wrong"]) if checked else None,
                      "first_error_share": at / n if checked else None,
                      "hazard": at / reached_right if checked and reached_right else None})
    return {"task": task, "model": cfg.model, "questions": len(problems), "samples": samples, "rows": table,
            "mean_tokens": statistics.mean(lengths), "mean_steps": statistics.mean(steps),
            "reward": statistics.mean(rewards)}


def render(res: dict) -> str:
    lines = [f"{res['model']} on {res['task']}: {res['questions']} test questions x {res['samples']} samples (T=1); "
             f"mean {res['mean_tokens']:.1f} tokens, {res['mean_steps']:.1f} steps, reward {res['reward']:.3f}",
             f"{'depth':>5}{'reached':>9}{'entropy':>9}{'conf':>7}{'wrong':>7}{'1st err':>9}{'hazard':>8}"]
    for r in res["rows"]:
        we, fe, hz = (f"{r[k]:.3f}" if r[k] is not None else "-" for k in ("step_error", "first_error_share", "hazard"))
        lines.append(f"{r['depth']:>5}{r['reached']:>9}{r['entropy']:>9.3f}{r['conf']:>7.3f}{we:>7}{fe:>9}{hz:>8}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=None, help="policy (default: the task's shipped one)")
    ap.add_argument("--task", default="chain", choices=("sum", "chain"))
    ap.add_argument("--questions", type=int, default=128)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the table as JSON here")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="run-config settings of the task (e.g. chain_start_last=true)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = step_table(args.model, args.task, args.questions, args.samples, settings=parse_overrides(args.set))
    print(render(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
