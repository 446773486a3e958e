"""Where does IIB-LPO's self-reward put its weight? Reward-level vs advantage-level addition, one batch.

On the base policy, one iib_lpo rollout batch of 64 questions (4 rollouts + 2 latent branches each, IB filter keeps 8):
with the bonus w * z(IB score) added to the *reward* before GRPO's group normalisation, a group whose kept outcomes
are all equal gets advantages of unit scale from the bonus alone; added to the *advantage* (what the trainer does),
it stays at w * z. Prints the share of rows in such groups and their share of the total |advantage| under both.
Run: .venv/bin/python experiments/self_reward_scale.py  (about 30 s; output in experiments/results/self_reward_scale.txt)
"""

from __future__ import annotations

import tempfile

import torch

from ibtpo.methods.grpo import grpo_advantage
from ibtpo.methods.iib_lpo.core import group_zscore
from ibtpo.config.schema import TrainConfig
from ibtpo.training.batch import flatten_paths
from ibtpo.methods.iib_lpo.ib_filter import apply_ib_filter
from ibtpo.training.trainer import Trainer


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(algorithm="iib_lpo", out_dir=tmp, questions_per_step=64, threads=2, tensorboard=False)
        trainer = Trainer(cfg)
        trees = trainer.rollout()
    metrics = apply_ib_filter(trainer.policy, trainer.tokenizer, trees, trainer.rewards.extract, cfg.iib_beta,
                              cfg.temperature, cfg.iib_keep)
    batch = flatten_paths(trees, trainer.tokenizer.pad_token_id)
    scores = torch.tensor([leaf.info["ib_score"] for leaf in batch.leaves])
    bonus = cfg.iib_self_reward * group_zscore(scores, batch.group_ids)
    mask = torch.ones((batch.size, 1))
    on_reward = grpo_advantage(rewards=batch.rewards + bonus, response_mask=mask, group_ids=batch.group_ids)[:, 0]
    on_advantage = grpo_advantage(rewards=batch.rewards, response_mask=mask, group_ids=batch.group_ids)[:, 0] + bonus
    constant = torch.zeros(batch.size, dtype=torch.bool)
    for g in batch.group_ids.unique():
        rows = batch.group_ids == g
        constant[rows] = bool(batch.rewards[rows].std() == 0)
    print(f"kept rows {batch.size} of {sum(len(t.leaves()) for t in trees)}; kept accuracy "
          f"{metrics['iib/kept_accuracy']:.3f}, dropped accuracy {metrics['iib/dropped_accuracy']:.3f}")
    before = sum(len({(leaf.reward or 0) > 0 for leaf in t.leaves()}) == 1 for t in trees)
    after = len({int(g) for g in batch.group_ids[constant]})
    print(f"questions whose outcomes are all equal: {before} of {len(trees)} over all 12 trajectories, {after} over the "
          f"8 kept (the filter keeps mostly correct ones)")
    print(f"rows in groups whose kept outcomes are all equal: {int(constant.sum())} ({float(constant.float().mean()):.1%})")
    for name, adv in (("bonus on the reward", on_reward), ("bonus on the advantage", on_advantage)):
        share = float(adv[constant].abs().sum() / adv.abs().sum())
        print(f"{name:>24}: share of total |advantage| in those groups {share:.1%}, "
              f"mean |A| there {float(adv[constant].abs().mean()):.3f}")


if __name__ == "__main__":
    main()
