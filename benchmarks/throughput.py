"""Throughput of the testbed policy on this machine: sampling and training tokens per second.

    python benchmarks/throughput.py [--repeats 5] [--threads 2]

Sampling: one GRPO rollout batch (16 questions x 8 samples, T=1, cap 48) through the independent sampler;
counts generated tokens. Training: one forward+backward+AdamW step of the GRPO loss on a batch of that shape; counts
all tokens of the padded batch. Also compares sampling with the group's shared prompt cache against encoding every
sample's prompt separately (the prefix-reuse idea in its simplest form). Prints medians over repeats.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from ibtpo.algos.advantages import get_adv_estimator
from ibtpo.algos.losses import LossConfig, get_policy_loss
from ibtpo.training.models import load_policy
from ibtpo.backends.eager import Engine
from ibtpo.backends.factory import sample
from ibtpo.rollout.samplers import GrowContext, TreeShape, grow_trees
from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.testbed.task import SumTask
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model, tok = load_policy("testbed")
    task = SumTask()
    problems = [task.train_problem(i) for i in range(args.questions)]
    prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    params = SamplingParams(temperature=1.0, max_new_tokens=48)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows = {"sample (shared prompt cache)": [], "sample (prompt per row)": [], "train step": []}
    for r in range(args.repeats + 1):  # first round is warm-up, not counted
        gen = torch.Generator().manual_seed(r)
        model.eval()
        t0 = time.perf_counter()
        engine = Engine(model, params, tok.eos_token_id, tok.pad_token_id, gen)
        ctx = GrowContext(engine, StepSplitter(tok), TreeShape(b0=args.generations, rounds=1), params.max_new_tokens,
                          lambda tree, leaves: None, random.Random(r))
        trees = grow_trees("independent", ctx, prompts, [p.id for p in problems], [{}] * len(problems))
        dt = time.perf_counter() - t0
        new = sum(t.new_tokens for t in trees)
        t0 = time.perf_counter()
        flat = [p for p in prompts for _ in range(args.generations)]
        sep = sample(model, flat, params, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(r), n=1)
        dt_sep = time.perf_counter() - t0
        new_sep = sum(len(g[0].token_ids) for g in sep)
        for i, t in enumerate(trees):
            for j, leaf in enumerate(t.leaves()):
                leaf.reward = float((i + j) % 2)
        batch = flatten_paths(trees, tok.pad_token_id)
        adv = get_adv_estimator("grpo")(rewards=batch.rewards, response_mask=batch.response_mask,
                                        group_ids=batch.group_ids)
        model.train()
        t0 = time.perf_counter()
        logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask)
        loss, _ = get_policy_loss("ppo_clip")(batch.old_logp, logp, adv, batch.response_mask, LossConfig())
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt_train = time.perf_counter() - t0
        if r == 0:
            continue
        rows["sample (shared prompt cache)"].append((new / dt, dt))
        rows["sample (prompt per row)"].append((new_sep / dt_sep, dt_sep))
        rows["train step"].append((batch.attention_mask.sum().item() / dt_train, dt_train))
    print(f"threads={args.threads} batch={args.questions}x{args.generations} repeats={args.repeats} (medians)")
    print(f"{'what':<30}{'tokens/s':>12}{'seconds':>10}")
    for name, vals in rows.items():
        print(f"{name:<30}{statistics.median(v[0] for v in vals):>12.0f}{statistics.median(v[1] for v in vals):>10.3f}")
    shared = statistics.median(v[1] for v in rows["sample (shared prompt cache)"])
    separate = statistics.median(v[1] for v in rows["sample (prompt per row)"])
    print(f"shared-prompt-cache time / per-row time = {shared / separate:.2f}")


if __name__ == "__main__":
    main()
