"""The long testbed task: a chain of additions and subtractions carried forward, one operation per step.

A problem is a start number followed by ``num_ops`` labelled operations, e.g. ``Q:53a-4b-6c+2d-9e+3``. A
solution applies them in label order, carrying each intermediate result into the next step; every step ends with the
delimiter "\\n\\n" and the last step is the final answer::

    Q:53a-4b-6c+2d-9e+3\\n\\n    <- prompt
    a-4=49\\n\\n                 <- step 1
    b-6=43\\n\\n                 <- step 2: carries 49 forward, reads operation b from the prompt
    ...
    e+3=39\\n\\n                 <- step 5
    A:39<eos>                  <- final answer, checked exactly

Why it suits tree rollouts: solutions have ``num_ops + 1`` steps (10 to 12 with the defaults) and about 91 generated
tokens, and a mistake can happen at every step (a carry or a borrow, reading the wrong operation from the prompt,
copying the running total wrongly), so the steps a policy is unsure about are spread along the whole trajectory
instead of sitting at its start. One wrong step makes the final answer wrong (the error is carried forward), so a
prefix that is still right is worth re-sampling from. Every running total stays in 0..``max_total`` (an operation's
sign is flipped when it would leave that range), so every step is the same kind of arithmetic (a two-digit total
plus or minus a one-digit operand with the defaults) whatever its depth. The default operand range (1..9) is what
lets a 5-minute warm-up reach a base policy with a usable reward signal (12% sampled accuracy; with 1..30 the same
warm-up reached 5%).

The reward is 1 if the final answer equals the exact result, else 0 (the steps are not checked, as in outcome-reward
math RL). Splits: as for the sum task, problems are generated from (seed, split, index); the train and warm-up
streams skip every problem whose question is in the fixed test split.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import ClassVar

from ibtpo.testbed.task import STEP_DELIMITER, GeneratedTask, Problem, extract_answer
from ibtpo.rewards.functions import register_reward

LABELS = string.ascii_lowercase
"""Labels of the operations, in order."""


@dataclass(frozen=True)
class ChainTask(GeneratedTask):
    """Seedable generator of carried-forward +/- chains with disjoint train/test splits."""

    min_ops: int = 9
    """Fewest operations in a problem (a solution has one step per operation plus the answer step)."""
    max_ops: int = 11
    """Most operations in a problem."""
    max_operand: int = 9
    """Operands are drawn uniformly from 1..max_operand."""
    max_total: int = 99
    """Start value and every running total lie in 0..max_total."""
    seed: int = 1234
    """Seed of the problem generator (independent of the training seed)."""
    test_size: int = 512
    """Number of problems in the fixed test split."""
    start_last: bool = False
    """Write the start value after the operations, on its own line just before the first step (``S=53``), instead
    of right after ``Q:``: step 1 then finds the total it carries where every later step does (on the line above)."""

    max_tokens: ClassVar[int] = 128
    """A length cap (tokens) that every gold solution fits in with room to spare."""
    split_tags: ClassVar[dict[str, int]] = {"train": 11, "test": 12, "warmup": 13}

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops <= len(LABELS):
            raise ValueError(f"ChainTask: need 1 <= min_ops ({self.min_ops}) <= max_ops ({self.max_ops}) <= "
                             f"{len(LABELS)}")
        if not 1 <= self.max_operand <= self.max_total // 2:
            raise ValueError(f"ChainTask: need 1 <= max_operand ({self.max_operand}) <= max_total // 2 "
                             f"({self.max_total // 2}), so a flipped sign always stays in range")

    def draw(self, rng: random.Random, pid: str) -> Problem:
        """A random problem and its gold solution."""
        start = total = rng.randint(0, self.max_total)
        ops = []
        for _ in range(rng.randint(self.min_ops, self.max_ops)):
            d = rng.randint(1, self.max_operand)
            sign = rng.choice("+-")
            if not 0 <= (total + d if sign == "+" else total - d) <= self.max_total:
                sign = "-" if sign == "+" else "+"  # the other sign stays in range since d <= max_total // 2
            ops.append((sign, d))
            total = total + d if sign == "+" else total - d
        return self.make(start, ops, pid, self.start_last)

    @staticmethod
    def make(start: int, ops: list[tuple[str, int]], pid: str, start_last: bool = False) -> Problem:
        """Build a problem from its start value and operations; the gold solution applies them in label order."""
        written = "".join(f"{k}{s}{d}" for k, (s, d) in zip(LABELS, ops))
        prompt = ("Q:" + written + STEP_DELIMITER + f"S={start}" if start_last else "Q:" + str(start) + written) \
            + STEP_DELIMITER
        total, steps = start, []
        for k, (sign, d) in zip(LABELS, ops):
            total = total + d if sign == "+" else total - d
            steps.append(f"{k}{sign}{d}={total}")
        steps.append(f"A:{total}")
        return Problem(id=pid, prompt=prompt, answer=str(total), solution=STEP_DELIMITER.join(steps))


_PROMPT_OP = re.compile(r"([a-z])([+-])(\d+)")
_STEP = re.compile(r"([a-z])([+-])(\d+)=(-?\d+)")


def check_steps(prompt: str, steps: list[str]) -> list[bool]:
    """Step-level verdicts of a solution, each given the solution's own earlier steps: step k is right iff it applies
    the k-th labelled operation of the prompt to the total carried from step k-1 (the start for step 1); the answer
    step "A:<int>" is right iff it repeats the carried total. A step after the answer step is wrong."""
    body = prompt.removeprefix("Q:").strip()
    head, sep, tail = body.partition(STEP_DELIMITER + "S=")  # the start_last layout: "Q:<ops>\n\nS=<start>"
    start = re.fullmatch(r"\d+", tail) if sep else re.match(r"\d+", body)
    ops = _PROMPT_OP.findall(head if sep else body[start.end():]) if start else []
    total = int(start.group(0)) if start else None
    out, done = [], False
    for k, text in enumerate(s.strip() for s in steps):
        m = _STEP.fullmatch(text)
        if done or total is None:
            out.append(False)
        elif k < len(ops) and m and m.group(1, 2, 3) == ops[k]:
            out.append(int(m.group(4)) == (total + int(ops[k][2]) if ops[k][1] == "+" else total - int(ops[k][2])))
            total = int(m.group(4))
        elif k == len(ops) and text.startswith("A:"):
            out.append(extract_answer(text) == str(total))
            done = True
        else:
            out.append(False)
            total = int(m.group(4)) if m else total
    return out


@register_reward("chain")
def chain_reward(prompts: list[str], completions: list[str], completion_ids=None, answer=None, **_) -> list[float]:
    """Exact-match outcome reward (TRL signature): 1.0 when the final "A:<int>" equals the reference, else 0.0."""
    return [1.0 if extract_answer(c) == a else 0.0 for c, a in zip(completions, answer)]
