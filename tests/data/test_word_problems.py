"""The arith task: generated word problems, disjoint splits, strict and lenient scores, and the run wiring."""

import re

import pytest

from ibtpo.config.schema import build_config
from ibtpo.data.tasks import build_rewards, build_source
from ibtpo.data.word_problems import WordProblemTask, last_number, lenient_correct, strict_correct


def test_problems_are_integer_and_reproducible():
    a, b = WordProblemTask(seed=3, test_size=50), WordProblemTask(seed=3, test_size=50)
    assert [p.prompt for p in a.test_problems] == [p.prompt for p in b.test_problems]
    other = WordProblemTask(seed=4, test_size=50)
    assert [p.prompt for p in a.test_problems] != [p.prompt for p in other.test_problems]
    for p in a.test_problems + tuple(a.train_problem(i) for i in range(200)):
        assert re.fullmatch(r"\d+", p.answer), p
        assert p.prompt.endswith("?") and re.search(r"\d", p.prompt)


def test_one_and_two_step_answers_follow_the_story():
    task = WordProblemTask(seed=0, test_size=1)
    checks = [  # (story, a word that tells it from the ones below it, how its numbers give the answer)
        ("add", "gets", lambda n: n[0] + n[1]),
        ("sub", "gave", lambda n: n[0] - n[1]),
        ("div", "shares", lambda n: n[0] // n[1] if n[0] % n[1] == 0 else None),
        ("add_sub", "finds", lambda n: n[0] + n[1] - n[2]),
        ("mul_sub", "fills", lambda n: n[0] * n[1] - n[2]),
        ("div_mul", "packed", lambda n: n[0] // n[1] * n[2] if n[0] % n[1] == 0 else None),
        ("sub_add", "shop", lambda n: n[0] - n[1] + n[2]),
        ("mul_add", "has", lambda n: n[0] + n[1] * n[2]),  # after the other stories that say "has"
        ("mul", "buys", lambda n: n[0] * n[1]),
    ]
    checked = set()
    for i in range(400):
        p = task.train_problem(i)
        n = [int(x) for x in re.findall(r"\d+", p.prompt)]
        kind, _, fn = next(c for c in checks if c[1] in p.prompt.split())
        assert int(p.answer) == fn(n) and int(p.answer) >= 0, (kind, p)
        checked.add(kind)
    assert len(checked) == 9


def test_train_stream_never_holds_a_test_question():
    task = WordProblemTask(seed=1, test_size=300)
    test = {p.prompt for p in task.test_problems}
    train = [task.train_problem(i).prompt for i in range(3000)]
    assert not test & set(train)
    assert len(set(train)) > 2000  # a large space, not a handful of repeats


@pytest.mark.parametrize("text,answer,strict,lenient", [
    ("3 + 4 = 7\nAnswer: 7", "7", True, True),
    ("so she has \\boxed{32} marbles.", "32", True, True),
    ("3 + 4 = 7. She has 7 apples.", "7", False, True),
    ("Answer: 8\n(7 was wrong)", "8", True, False),
    ("Answer: 9", "7", False, False),
    ("The total is 1,200", "1200", False, True),
    ("", "3", False, False),
    ("No numbers here.", "3", False, False),
])
def test_strict_and_lenient_scores(text, answer, strict, lenient):
    assert strict_correct(text, answer) is strict
    assert lenient_correct(text, answer) is lenient


def test_last_number():
    assert last_number("a 3 b 4.5 c 1,000.") == "1000"
    assert last_number("none") is None


def test_task_arith_selects_the_source_rewards_and_prompt():
    cfg = build_config(overrides={"task": "arith", "test_size": 20})
    src = build_source(cfg, None)
    assert src.name == "arith" and len(src.test_sets["arith"]) == 20
    q = src.train_problem(0)
    assert q.prompt.endswith("'Answer: X', where X is the final answer alone.")
    rewards = build_rewards(cfg)
    assert rewards.check.name == "math" and set(rewards.formats) == {"strict", "lenient"}
    boxed = build_source(build_config(overrides={"task": "arith", "test_size": 5, "prompt_template": "boxed"}), None)
    assert "\\boxed{}" in boxed.train_problem(0).prompt
    assert build_rewards(build_config()).formats == {}  # the testbed tasks report no format scores
