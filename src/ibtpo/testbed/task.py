"""The CPU testbed task: multi-term sums solved step by step, in any order.

A problem is a sum of a few small numbers, e.g. ``Q:7+15+3+9``. A solution adds one remaining term to the
running total per step; every step ends with the delimiter "\\n\\n"; the last step is the final answer::

    Q:7+15+3+9\\n\\n          <- prompt
    15+3=18\\n\\n             <- step 1: a real choice (which two terms first)
    18+9=27\\n\\n             <- step 2: a real choice (which remaining term next)
    27+7=34\\n\\n             <- step 3
    A:34<eos>                 <- final answer, checked exactly

The order of the terms is free, so the policy makes real choices at every step (which terms to combine), and some
choices are easier than others (small intermediate sums). The reward is 1 if the final answer equals the sum, else 0;
the steps are not checked, as in outcome-reward math RL.

Problems are generated from (seed, split, index), so any split is reproducible and unbounded. The test split is a
fixed list of ``test_size`` problems; the train stream skips every problem whose question is in the test split, so the
two are disjoint by construction.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from ibtpo.rewards.functions import register_reward

STEP_DELIMITER = "\n\n"
_ANSWER_RE = re.compile(r"A:(-?\d+)\s*$")


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer and a gold step-by-step solution (for supervised warm-up)."""

    id: str
    prompt: str
    answer: str
    solution: str


class GeneratedTask:
    """Splits of a seedable problem generator: a fixed test list, and train / warm-up streams that skip its questions.

    A subclass is a frozen dataclass with ``seed`` and ``test_size`` fields and a ``draw(rng, pid)`` method."""

    split_tags: ClassVar[dict[str, int]] = {"train": 1, "test": 2, "warmup": 3}
    """Seed tag of each split (a task with its own tags draws streams unrelated to another task's)."""
    max_tokens: ClassVar[int] = 48
    """A length cap (tokens) that every gold solution fits in."""

    def _rng(self, split: str, index: int) -> random.Random:
        return random.Random((self.seed * 1_000_003 + self.split_tags[split]) * 2_147_483_647 + index)

    def draw(self, rng: random.Random, pid: str) -> Problem:  # pragma: no cover - abstract
        raise NotImplementedError

    @cached_property
    def test_problems(self) -> tuple[Problem, ...]:
        return tuple(self.draw(self._rng("test", i), f"test-{i}") for i in range(self.test_size))

    @cached_property
    def _test_prompts(self) -> frozenset[str]:
        return frozenset(p.prompt for p in self.test_problems)

    def train_problem(self, index: int, split: str = "train") -> Problem:
        """The index-th problem of the train stream (or of the warm-up stream); never a test question."""
        attempt = 0
        while True:
            p = self.draw(self._rng(split, index * 64 + attempt), f"{split}-{index}")
            if p.prompt not in self._test_prompts:
                return p
            attempt += 1


@dataclass(frozen=True)
class SumTask(GeneratedTask):
    """Seedable generator of step-structured sum problems with disjoint train/test splits."""

    min_terms: int = 3
    """Fewest terms in a problem."""
    max_terms: int = 4
    """Most terms in a problem."""
    max_value: int = 30
    """Terms are drawn uniformly from 1..max_value."""
    seed: int = 1234
    """Seed of the problem generator (independent of the training seed)."""
    test_size: int = 512
    """Number of problems in the fixed test split."""

    def _terms(self, rng: random.Random) -> list[int]:
        n = rng.randint(self.min_terms, self.max_terms)
        return [rng.randint(1, self.max_value) for _ in range(n)]

    def draw(self, rng: random.Random, pid: str) -> Problem:
        """A random problem and its gold solution."""
        return self.make(self._terms(rng), rng, pid)

    def make(self, terms: list[int], rng: random.Random, pid: str) -> Problem:
        """Build a problem from its terms; the gold solution adds the terms in a random order."""
        prompt = "Q:" + "+".join(map(str, terms)) + STEP_DELIMITER
        order = list(terms)
        rng.shuffle(order)
        total, steps = order[0], []
        for t in order[1:]:
            steps.append(f"{total}+{t}={total + t}")
            total += t
        steps.append(f"A:{total}")
        return Problem(id=pid, prompt=prompt, answer=str(total), solution=STEP_DELIMITER.join(steps))


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion ("A:<int>" at its end), or None when there is none."""
    m = _ANSWER_RE.search(completion)
    return m.group(1) if m else None


@register_reward("sum")
def sum_reward(prompts: list[str], completions: list[str], completion_ids=None, answer=None, **_) -> list[float]:
    """Exact-match outcome reward (TRL signature): 1.0 when the final answer equals the reference, else 0.0."""
    return [1.0 if extract_answer(c) == a else 0.0 for c, a in zip(completions, answer)]
