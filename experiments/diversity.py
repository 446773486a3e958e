"""Diversity of the final policies of `reports/compare`: distinct answers and distinct solutions per question.

The IIB-LPO paper reports diversity gains; per-step rollout diversity is not comparable across samplers (trees share
prefixes), so this samples every finished run's final policy the same way: k = 8 completions at T = 1.0 for each of
the first 256 held-out questions (seed 0), and reports per question the number of distinct final answers, the share
of distinct completions (= distinct step sequences on the testbed), avg@8 and pass@8; mean over questions, then
mean +/- 95% t-interval over seeds. The base policy is the first row.

Run: .venv/bin/python experiments/diversity.py [--presets grpo ib_tpo iib_lpo ...] [--seeds 0 1 2]
     (output also in experiments/results/diversity.txt when run with the defaults)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from ibtpo.compare import ci95
from ibtpo.config.schema import TrainConfig
from ibtpo.training.models import load_policy
from ibtpo.backends.factory import sample
from ibtpo.core.sampling import SamplingParams
from ibtpo.data.tasks import build_rewards, build_source
from ibtpo.training.checkpoint import latest_checkpoint

RUNS = Path("reports/compare/runs")
DEFAULT_PRESETS = ["grpo", "ib_tpo", "iib_lpo", "iib_lpo_no_filter", "iib_lpo_no_latent", "iib_lpo_random_z"]


def measure(model, tok, problems, rewards, k: int = 8) -> dict[str, float]:
    prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    gen = torch.Generator().manual_seed(0)
    groups = sample(model, prompts, SamplingParams(temperature=1.0, max_new_tokens=48), tok.eos_token_id,
                    tok.pad_token_id, generator=gen, n=k)
    answers, distinct, acc, passed = [], [], [], []
    for p, group in zip(problems, groups):
        texts = [tok.decode(g.token_ids, skip_special_tokens=True) for g in group]
        correct = rewards.check([p.prompt] * k, texts, None, **{c: [v] * k for c, v in p.reward_columns().items()})
        answers.append(len({rewards.extract(t) for t in texts} - {None}))
        distinct.append(len({tuple(g.token_ids) for g in group}) / k)
        acc.append(sum(c >= 1 for c in correct) / k)
        passed.append(float(any(c >= 1 for c in correct)))
    return {"distinct answers": statistics.mean(answers), "distinct solutions": statistics.mean(distinct),
            "avg@8": statistics.mean(acc), "pass@8": statistics.mean(passed)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--questions", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = TrainConfig()
    _, tok = load_policy(cfg.model, cfg.dtype)
    source, rewards = build_source(cfg, tok), build_rewards(cfg)
    problems = source.test_sets[source.name][:args.questions]
    rows = {"base policy": [measure(load_policy(cfg.model, cfg.dtype)[0].eval(), tok, problems, rewards)]}
    for preset in args.presets:
        found = [latest_checkpoint(RUNS / preset / f"seed{s}") for s in args.seeds
                 if (RUNS / preset / f"seed{s}" / "summary.json").exists()]  # finished runs only
        rows[preset] = [measure(load_policy(str(f), cfg.dtype)[0].eval(), tok, problems, rewards)
                        for f in found if f is not None]
    keys = list(rows["base policy"][0])
    print(f"{len(problems)} held-out questions, 8 samples each at T = 1.0; mean +/- 95% t over seeds")
    print(f"| policy | seeds | {' | '.join(keys)} |")
    print("|---|---|" + "---|" * len(keys))
    for name, results in rows.items():
        cells = []
        for key in keys:
            values = [r[key] for r in results]
            scale = 100 if key.startswith(("avg", "pass", "distinct solutions")) else 1
            mean = statistics.mean(values) * scale if values else float("nan")
            cells.append(f"{mean:.2f}" + (f" +/- {ci95(values) * scale:.2f}" if len(values) > 1 else ""))
        print(f"| {name} | {len(results)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
