"""How far the sampler's behaviour log-probs are from a training forward of the same policy, on one rollout batch.

The trainer uses the log-probs recorded while sampling as the "old" log-probs (no recompute pass). They come from
KV-cached decoding, the training forward from one full pass, so they can differ in the last float bits. This matters
for losses with a non-smooth term at ratio 1: KL-Cov's |log pi - log pi_old| has gradient +-coef wherever the two
differ, even on the first, on-policy update (verl recomputes old log-probs, so there the difference is exactly 0).

    python experiments/logp_mismatch.py [--algorithm kl_cov] [--steps 3]
"""

from __future__ import annotations

import argparse

import torch

from ibtpo.config.schema import build_config
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths
from ibtpo.training.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algorithm", default="kl_cov")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cfg = build_config(None, {"algorithm": args.algorithm, "out_dir": "/tmp/ibtpo_logp_mismatch", "overwrite": True,
                              "tensorboard": False, "threads": 1})
    trainer = Trainer(cfg)
    print(f"{'batch':>5} {'tokens':>7} {'differ':>7} {'share':>6} {'max |d|':>9}")
    for i in range(args.steps):
        batch = flatten_paths(trainer.rollout(), trainer.tokenizer.pad_token_id)
        with torch.no_grad():
            logp, _ = token_logprobs(trainer.policy, batch.input_ids, batch.attention_mask, cfg.temperature)
        d = (logp - batch.old_logp)[batch.response_mask.bool()]
        differ = int((d != 0).sum())
        print(f"{i:>5} {d.numel():>7} {differ:>7} {differ / d.numel():>6.1%} {float(d.abs().max()):>9.2e}")


if __name__ == "__main__":
    main()
