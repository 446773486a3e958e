"""The one definition of a correct answer, used everywhere a reward is read as right or wrong.

A completion is correct when its reward is at least ``CORRECT_THRESHOLD`` (1.0): the answer checks (the testbed
verifier, math-verify) give 1 for a right answer and 0 otherwise, and what may be added on top stays below 1 for a
wrong answer (``format_reward_weight`` < 1 is enforced by the config). Partial credit below 1 is not correct.
Readers: p_hat of tree nodes (so the IB-Score, the IB rule and the tree estimators), the IB filter's accuracy
metrics, the iib sampler's CVAE training pairs, and evaluation (avg@k, pass@k, maj@k, greedy accuracy).
A missing reward (None: unscorable) is not correct.
"""

from __future__ import annotations

CORRECT_THRESHOLD = 1.0


def is_correct(reward: float | None) -> bool:
    """Does this reward mean a correct answer (reward >= CORRECT_THRESHOLD)?"""
    return reward is not None and reward >= CORRECT_THRESHOLD
