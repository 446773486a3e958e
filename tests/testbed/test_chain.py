"""The chain task: gold solutions are long, step-delimited and exact; splits are disjoint; the reward is exact."""

import re
import statistics

import pytest

from ibtpo.testbed.chain import ChainTask, chain_reward
from ibtpo.testbed.task import STEP_DELIMITER, SumTask

_OP = re.compile(r"([a-z])([+-])(\d+)")


def _parse(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    body = prompt.removeprefix("Q:").removesuffix(STEP_DELIMITER)
    start = re.match(r"\d+", body).group(0)
    ops = _OP.findall(body[len(start):])
    assert "".join(k for k, _, _ in ops) == "abcdefghijklmnopqrstuvwxyz"[:len(ops)]  # labels in order
    return int(start), [(s, int(d)) for _, s, d in ops]


def test_gold_solution_applies_every_operation_in_order_and_stays_in_range():
    task = ChainTask()
    for p in task.test_problems[:200]:
        start, ops = _parse(p.prompt)
        assert task.min_ops <= len(ops) <= task.max_ops
        steps = p.solution.split(STEP_DELIMITER)
        assert len(steps) == len(ops) + 1 and steps[-1] == f"A:{p.answer}"
        total = start
        for k, ((sign, d), step) in enumerate(zip(ops, steps)):
            new = total + d if sign == "+" else total - d
            assert step == f"{'abcdefghijklmnopqrstuvwxyz'[k]}{sign}{d}={new}"  # the operation, the carried total
            assert 0 <= new <= task.max_total and 1 <= d <= task.max_operand
            total = new
        assert p.answer == str(total)
        assert chain_reward([p.prompt], [p.solution], answer=[p.answer]) == [1.0]


def test_solutions_are_long_enough_for_trees():
    """The issue's floor: >= 8 steps and >= 80 generated tokens (one per character, plus EOS) on average."""
    ps = ChainTask().test_problems
    assert statistics.mean(p.solution.count(STEP_DELIMITER) + 1 for p in ps) >= 8
    assert statistics.mean(len(p.solution) + 1 for p in ps) >= 80
    assert max(len(p.prompt) + len(p.solution) + 1 for p in ps) <= 256 - 64  # the model's positions, with room
    assert max(len(p.solution) + 1 for p in ps) <= ChainTask.max_tokens


def test_splits_are_disjoint_reproducible_and_apart_from_the_sum_stream():
    task = ChainTask(test_size=300)
    test_prompts = {p.prompt for p in task.test_problems}
    train = [task.train_problem(i) for i in range(2000)] + [task.train_problem(i, "warmup") for i in range(2000)]
    assert not test_prompts & {p.prompt for p in train}
    assert [p.prompt for p in ChainTask(test_size=300).test_problems] == [p.prompt for p in task.test_problems]
    assert ChainTask(seed=1).train_problem(0) != ChainTask(seed=2).train_problem(0)
    assert task.train_problem(0).prompt != task.train_problem(0, "warmup").prompt
    assert SumTask().train_problem(5).prompt != task.train_problem(5).prompt


def test_a_forced_sign_flip_keeps_totals_in_range():
    task = ChainTask(min_ops=12, max_ops=12, max_operand=5, max_total=10, test_size=50)
    for p in task.test_problems:
        start, ops = _parse(p.prompt)
        total = start
        for sign, d in ops:
            total = total + d if sign == "+" else total - d
            assert 0 <= total <= 10


def test_reward_is_exact_on_the_final_answer_only():
    out = chain_reward(["q"] * 4, ["a+3=8\n\nA:8", "A:80", "a+3=9\n\nA:8", "A:8 extra"], answer=["8"] * 4)
    assert out == [1.0, 0.0, 1.0, 0.0]  # steps are not checked (outcome reward), the answer is


@pytest.mark.parametrize("kwargs", [{"min_ops": 5, "max_ops": 4}, {"max_operand": 60, "max_total": 99},
                                    {"min_ops": 0}, {"max_ops": 27}])
def test_bad_settings_name_the_field(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ChainTask(**kwargs)


def test_step_verdicts_judge_each_step_given_its_own_carried_total():
    from ibtpo.testbed.chain import check_steps

    prompt = "Q:50a+10b-5c+7\n\n"
    gold = ChainTask.make(50, [("+", 10), ("-", 5), ("+", 7)], "x")
    assert check_steps(gold.prompt, gold.solution.split(STEP_DELIMITER)) == [True] * 4 and gold.prompt == prompt
    # a wrong sum at step 1 is carried: step 2 is right given 61, the answer repeats the carried total
    assert check_steps(prompt, ["a+10=61", "b-5=56", "c+7=63", "A:63"]) == [False, True, True, True]
    # a misread operation, a skipped label, an answer that does not repeat the total, a step after the answer
    assert check_steps(prompt, ["a+11=61", "c+7=68", "b-5=63", "A:60", "A:60"]) == [False, False, False, False, False]


def test_shipped_policy_was_warmed_up_on_the_default_task_and_left_room_for_rl():
    """The shipped chain policy's record names the generator settings it learned from: they must be the task's and
    the run config's defaults (else task=chain would train it on a distribution it never saw); and it is
    deliberately under-trained (the issue's rule), so well below perfect on the test split."""
    import dataclasses
    import json

    from ibtpo.config.schema import build_config
    from ibtpo.training.models import TESTBED_POLICIES

    summary = json.loads((TESTBED_POLICIES["testbed-chain"] / "pretrain_summary.json").read_text())
    expected = dataclasses.asdict(ChainTask())  # a key the record lacks was added later, at its default
    assert set(summary["task"]) <= set(expected) and {**expected, **summary["task"]} == expected
    cfg = build_config(None, {"task": "chain"})
    assert (cfg.chain_min_ops, cfg.chain_max_ops, cfg.chain_max_operand, cfg.chain_max_total) == tuple(
        summary["task"][k] for k in ("min_ops", "max_ops", "max_operand", "max_total"))
    assert summary["pretrain_config"]["task"] == "chain"
    assert 0.05 <= summary["test_sampled_avg@4_T1"] <= 0.6


def test_start_last_layout_puts_the_start_on_the_line_before_step_one_and_is_judged_alike():
    from ibtpo.testbed.chain import check_steps

    task = ChainTask(start_last=True, test_size=64)
    for p in task.test_problems:
        head, start = p.prompt.removeprefix("Q:").removesuffix(STEP_DELIMITER).split(STEP_DELIMITER + "S=")
        assert _OP.fullmatch(head[:len(_OP.match(head).group(0))]) and start.isdigit()
        assert all(check_steps(p.prompt, p.solution.split(STEP_DELIMITER)))
    # the same problem in both layouts has the same gold solution; a step that ignores the start is wrong
    same = ChainTask.make(50, [("+", 10), ("-", 5)], "x", start_last=True)
    assert same.prompt == "Q:a+10b-5\n\nS=50\n\n" and same.solution == ChainTask.make(50, [("+", 10), ("-", 5)], "x").solution
    assert check_steps(same.prompt, ["a+10=61", "b-5=56", "A:56"]) == [False, True, True]
    assert ChainTask(start_last=True).test_problems[0].prompt != ChainTask().test_problems[0].prompt
