"""A learnable task for small real models: generated one- and two-step arithmetic word problems (``task=arith``).

Each problem is a short story with integer quantities and one question whose answer is a non-negative integer, e.g.::

    Mia has 14 marbles. She buys 3 bags with 6 marbles in each bag. How many marbles does Mia have now?   -> 32

One-step problems use one operation (+, -, x, /: divisions are exact); two-step problems chain two. The prompt asks
for a final line ``Answer: X`` (``prompt_template`` may ask for a box instead); the reward is the math reward
(``rewards.functions.math_accuracy``). Problems come from (seed, split, index) like the testbed's tasks
(``testbed.task.GeneratedTask``): the test split is a fixed list and the training stream skips every question of
it, so the splits are disjoint by construction.

Two scores of a completion (:func:`strict_correct`, :func:`lenient_correct`), reported side by side in evaluation
(``val/arith/strict_acc``, ``val/arith/lenient_acc``): *strict* is the requested format (an ``Answer:`` marker or a
``\\boxed{}``) holding the correct value; *lenient* is the last number of the completion equal to the answer,
whatever the format. Much of an RL gain at this scale is format learning; the gap between them shows how much.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ibtpo.rewards.answers import find_final_answer
from ibtpo.data.datasets import PROMPT_PRESETS
from ibtpo.rewards.functions import math_accuracy
from ibtpo.testbed.task import GeneratedTask, Problem

INSTRUCTION = PROMPT_PRESETS["answer_line"]
"""Default prompt template of the task (the ``answer_line`` preset)."""

NAMES = ("Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom", "Ines", "Kai")
ITEMS = ("marbles", "apples", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards", "beads")
CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets")
_LAST_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _one_step(rng: random.Random, name: str, item: str) -> tuple[str, int]:
    kind = rng.choice(("add", "sub", "mul", "div"))
    if kind == "add":
        a, b = rng.randint(5, 60), rng.randint(2, 40)
        return f"{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?", a + b
    if kind == "sub":
        a = rng.randint(10, 80)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} {item} and gave {b} of them away. How many {item} does {name} have left?", a - b
    box = rng.choice(CONTAINERS)
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    if kind == "mul":
        return f"{name} buys {a} {box} with {b} {item} in each. How many {item} does {name} buy?", a * b
    return (f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?", a)


def _two_step(rng: random.Random, name: str, item: str) -> tuple[str, int]:
    kind = rng.choice(("mul_add", "add_sub", "mul_sub", "div_mul", "sub_add"))
    box = rng.choice(CONTAINERS)
    if kind == "mul_add":
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 30)
        return (f"{name} has {c} {item}. {name} buys {a} {box} with {b} {item} in each. How many {item} does {name} "
                f"have now?", c + a * b)
    if kind == "add_sub":
        a, b = rng.randint(5, 50), rng.randint(2, 30)
        c = rng.randint(1, a + b - 1)
        return (f"{name} has {a} {item} and finds {b} more. Then {name} gives {c} {item} to a friend. How many {item} "
                f"does {name} have now?", a + b - c)
    if kind == "mul_sub":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        return (f"{name} fills {a} {box} with {b} {item} each, then eats or loses {c} of the {item}. How many {item} "
                f"are left?", a * b - c)
    if kind == "div_mul":
        per, groups = rng.randint(2, 9), rng.randint(2, 8)
        take = rng.randint(1, groups)
        return (f"{per * groups} {item} are packed equally into {groups} {box}. {name} takes {take} of the {box}. "
                f"How many {item} does {name} take?", per * take)
    a = rng.randint(20, 90)
    b = rng.randint(1, a - 1)
    c = rng.randint(1, 40)
    return (f"A shop had {a} {item}. It sold {b} of them and then received a delivery of {c} more. How many {item} "
            f"does the shop have now?", a - b + c)


@dataclass(frozen=True)
class WordProblemTask(GeneratedTask):
    """Seedable generator of one- and two-step arithmetic word problems with disjoint train/test splits."""

    two_step_share: float = 0.5
    """Share of two-step problems."""
    seed: int = 1234
    """Seed of the problem generator (independent of the training seed)."""
    test_size: int = 512
    """Number of problems in the fixed test split."""

    split_tags = {"train": 11, "test": 12, "warmup": 13}
    max_tokens = 256

    def draw(self, rng: random.Random, pid: str) -> Problem:
        """A random problem: its question text (no instruction) and integer answer; no gold solution."""
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        text, answer = (_two_step if rng.random() < self.two_step_share else _one_step)(rng, name, item)
        return Problem(id=pid, prompt=text, answer=str(answer), solution="")


def last_number(text: str) -> str | None:
    """The last number written in `text` (thousands commas dropped, a trailing ``.0`` kept as is), or None."""
    found = _LAST_NUMBER_RE.findall(text or "")
    return found[-1].replace(",", "").rstrip(".") if found else None


def lenient_correct(text: str, answer: str) -> bool:
    """The last number of the completion equals the integer answer (any format)."""
    value = last_number(text)
    if value is None:
        return False
    try:
        return float(value) == float(answer)
    except ValueError:
        return False


def strict_correct(text: str, answer: str) -> bool:
    """The answer is stated in the requested format (``\\boxed{}`` or an ``Answer:`` marker) and is correct by the
    math reward."""
    found = find_final_answer(text or "")
    if found is None or found.rule not in ("boxed", "answer_marker"):
        return False
    return math_accuracy([""], [text], None, answer=[answer])[0] >= 1.0


FORMAT_SCORES = {"strict": strict_correct, "lenient": lenient_correct}
"""Extra per-completion scores of the task in evaluation: name -> fn(completion text, answer) -> bool."""
