"""Math rewards (math-verify equivalence, answer extraction, format), loading reward fns by spec, and GuardedReward."""

from pathlib import Path

import pytest

from ibtpo.rewards.functions import (REWARD_FUNCTIONS, GuardedReward, RewardError, boxed_format, extract_math_answer,
                              load_reward_fn, math_accuracy, weighted_sum)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "custom_rewards.py"


def score(reference: str, completion: str) -> float | None:
    return math_accuracy(["q"], [completion], None, answer=[reference])[0]


@pytest.mark.parametrize("reference, completion", [
    ("\\frac{1}{2}", "So the probability is \\boxed{1/2}."),
    ("1/2", "\\boxed{0.5}"),
    ("0.5", "\\boxed{\\dfrac12}"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}"),
    ("\\sqrt{2}/2", "$\\boxed{\\frac{\\sqrt{2}}{2}}$"),
    ("\\frac{\\sqrt{2}}{2}", "\\boxed{\\frac{1}{\\sqrt{2}}}"),
    ("72", "\\boxed{72}"),
    ("72", "First I get \\boxed{70}. Wait, I forgot the last two: the total is \\boxed{72}."),
    ("7", "3 + 4 = 7, so\nAnswer: 7"),
    ("\\frac{1}{3}", "Answer: $\\frac13$"),
    ("1,200", "Answer: 1200"),
    ("(1, 2)", "The point is \\boxed{(1,2)}"),
    ("[1, 2)", "\\boxed{[1,2)}"),
    ("x^2+1", "\\boxed{1 + x^2}"),
    ("\\{1, 2\\}", "\\boxed{\\{2, 1\\}}"),
    ("\\boxed{3}", "\\boxed{3}"),
    ("$\\frac{3}{4}$", "The final answer is $\\frac{3}{4}$."),
    ("10", "\\boxed{\\boxed{10}}"),
])
def test_equivalent_answers_score_one(reference, completion):
    assert score(reference, completion) == 1.0


@pytest.mark.parametrize("reference, completion", [
    ("72", "\\boxed{73}"),
    ("72", "The total is \\boxed{72}. Hmm, no: \\boxed{71}."),  # the last box wins
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    ("(1, 2)", "\\boxed{(2, 1)}"),
    ("[1, 2)", "\\boxed{[1, 2]}"),
    ("x^2+1", "\\boxed{y^2+1}"),
    ("7", "I think it is 8"),  # plain text: the last number of the last line
    ("7", "I do not know"),  # no box, no Answer line, no number
    ("7", "The answer is \\boxed{7"),  # unclosed box
    ("7", ""),
    ("7", "\\boxed{}"),
])
def test_wrong_or_missing_answers_score_zero(reference, completion):
    assert score(reference, completion) == 0.0


def test_unparsable_reference_is_none_and_odd_output_never_raises():
    odd = ["\\boxed{\\frac{", "}}}{{{", "$$$", "\\boxed{" + "(" * 300 + "}", "Answer:", "\x00\\boxed{\u2603}", None]
    refs = ["1"] * len(odd)
    assert math_accuracy(["q"] * len(odd), odd, None, answer=refs) == [0.0] * len(odd)
    refs = ["", "\\frac{", None, "1"]
    assert math_accuracy(["q"] * 4, ["\\boxed{1}"] * 4, None, answer=refs) == [None, None, None, 1.0]
    with pytest.raises(RewardError, match="'answer' column"):
        math_accuracy(["q"], ["\\boxed{1}"])


def test_conversational_completions_use_the_last_message():
    assert math_accuracy(["q"], [[{"role": "assistant", "content": "\\boxed{4}"}]], answer=["4"]) == [1.0]


def test_extract_math_answer_maps_equivalent_forms_to_one_string():
    halves = {extract_math_answer(t) for t in
              ["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "Answer: 1/2", "\\boxed{\\dfrac12}", "\\boxed{0.50}"]}
    assert halves == {"1/2"}
    assert extract_math_answer("\\boxed{\\sqrt{2}/2}") == extract_math_answer("\\boxed{\\frac{1}{\\sqrt{2}}}")
    assert extract_math_answer("\\boxed{x^2+1}") == extract_math_answer("Answer: $1+x^2$")
    assert extract_math_answer("so \\boxed{72}") == "72" != extract_math_answer("\\boxed{73}")
    assert extract_math_answer("\\boxed{@@}") == "@@"  # not parsable: the raw string
    assert extract_math_answer("no answer given") is None
    assert extract_math_answer("") is None


def test_boxed_format():
    good = ["blah \\boxed{3}", "work\nAnswer: 3", "**Answer:** $\\frac12$\n\n", "a \\boxed{x} b"]
    bad = ["", "the answer is 3", "\\boxed{}", "\\boxed{3", "Answer: 3\nmore text after it", "Answer:"]
    assert boxed_format(["q"] * len(good), good) == [1.0] * len(good)
    assert boxed_format(["q"] * len(bad), bad) == [0.0] * len(bad)


def test_weighted_sum_and_none():
    def first(prompts, completions, completion_ids=None, **kw):
        return [1.0, None, 0.0]

    def second(completions, **kw):
        return [2.0, 2.0, 4.0]

    fn = weighted_sum([first, second], [1.0, 0.5])
    assert fn(["a", "b", "c"], ["x", "y", "z"]) == [2.0, None, 2.0]
    with pytest.raises(RewardError, match="one weight per function"):
        weighted_sum([first], [1.0, 2.0])


def test_load_registered_module_and_file_reward_fns():
    assert load_reward_fn("math") is math_accuracy and load_reward_fn("format") is boxed_format
    from tests.fixtures import custom_rewards

    assert load_reward_fn("tests.fixtures.custom_rewards:length_penalty") is custom_rewards.length_penalty
    fn = load_reward_fn(f"{FIXTURE}:length_penalty")
    assert fn(completions=["abc", ""]) == pytest.approx([-0.03, 0.0])
    assert load_reward_fn(f"{FIXTURE}:drops_last") is not None


@pytest.mark.parametrize("spec, message", [
    ("nope", "unknown reward function 'nope': known ones are " + ", ".join(sorted(REWARD_FUNCTIONS))),
    ("no_such_pkg.rewards:score", "cannot import reward module 'no_such_pkg.rewards': ModuleNotFoundError: "
                                  "No module named 'no_such_pkg'"),
    ("tests.fixtures.custom_rewards:missing",
     "reward module 'tests.fixtures.custom_rewards' has no attribute 'missing'"),
    ("tests.fixtures.custom_rewards:NOT_A_FUNCTION", "is not callable (it is a int)"),
    ("tests.fixtures.custom_rewards:", "unknown reward function 'tests.fixtures.custom_rewards:'"),
    ("does/not/exist.py:score", "reward file not found: does/not/exist.py"),
])
def test_load_errors_name_the_culprit(spec, message):
    with pytest.raises(RewardError) as err:
        load_reward_fn(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_file_that_raises_on_import(tmp_path):
    bad = tmp_path / "bad_rewards.py"
    bad.write_text("import json\nraise RuntimeError('no config here\\nmore')\n")
    with pytest.raises(RewardError, match=r"^cannot load reward file .*bad_rewards.py: RuntimeError: no config here$"):
        load_reward_fn(f"{bad}:score")


def batch(*completions):
    n = len(completions)
    return dict(prompts=["p"] * n, completions=list(completions), completion_ids=None,
                answer=["7"] * n, question_id=[f"q{i}" for i in range(n)])


def test_guard_fail_names_question_and_exception():
    guard = GuardedReward(load_reward_fn("tests.fixtures.custom_rewards:contains_answer"), "contains")
    assert guard(**batch("7", "8")) == [1.0, 0.0]  # question_id is not passed to the function
    with pytest.raises(RewardError) as err:
        guard(**batch("7", "boom", "7"))
    assert str(err.value) == "reward function contains raised on question q1: ZeroDivisionError: cannot score boom"


def test_guard_zero_scores_only_bad_rows_and_counts():
    guard = GuardedReward(load_reward_fn("tests.fixtures.custom_rewards:contains_answer"), "contains", on_error="zero")
    assert guard(**batch("7", "boom", "x7", "boom 7")) == [1.0, 0.0, 1.0, 0.0]
    assert [qid for qid, _ in guard.errors] == ["q1", "q3"] and "ZeroDivisionError" in guard.errors[0][1]
    assert guard.error_count == 2
    assert guard.pop_stats() == {"reward/errors": 2, "reward/none": 0}
    assert guard.pop_stats() == {"reward/errors": 0, "reward/none": 0}
    assert len(guard.errors) == 2  # the record stays; only the counts reset


def test_guard_counts_none_and_checks_what_is_returned():
    guard = GuardedReward(math_accuracy, "math")
    assert guard(**dict(batch("\\boxed{7}", "\\boxed{7}"), answer=["7", "\\frac{"])) == [1.0, None]
    assert guard.pop_stats() == {"reward/errors": 0, "reward/none": 1}
    with pytest.raises(RewardError, match=r"^reward function short returned 3 scores for 4 completions$"):
        GuardedReward(load_reward_fn("tests.fixtures.custom_rewards:drops_last"), "short")(**batch("a", "b", "c", "d"))
    with pytest.raises(RewardError, match="returned dict, expected a list of 1 scores"):
        GuardedReward(lambda completions, **kw: {}, "d")(**batch("a"))
    with pytest.raises(RewardError, match="returned a str score for question q0: '1'"):
        GuardedReward(lambda completions, **kw: ["1"], "s")(**batch("a"))
    with pytest.raises(RewardError, match="non-finite score nan for question q0"):
        GuardedReward(lambda completions, **kw: [float("nan")], "n")(**batch("a"))
    with pytest.raises(RewardError, match="on_error must be"):
        GuardedReward(math_accuracy, "math", on_error="ignore")


def test_guard_batch_only_failure():
    def batch_only(completions, **kw):
        if len(completions) > 1:
            raise RuntimeError("batch too big")
        return [1.0]

    with pytest.raises(RewardError, match="raised on a batch of 2 .no single question fails alone.: RuntimeError"):
        GuardedReward(batch_only, "b")(**batch("a", "b"))
    assert GuardedReward(batch_only, "b", on_error="zero")(**batch("a", "b")) == [1.0, 1.0]


def test_math_reward_works_outside_the_main_thread():
    import threading

    out = []
    worker = threading.Thread(target=lambda: out.append(score("0.5", "\\boxed{\\frac{1}{2}}")))
    worker.start()
    worker.join()
    assert out == [1.0]


@pytest.mark.parametrize("gold, completion, expected", [
    ("12", "The answer is \\boxed{12\\%}", 1.0),        # percent sign dropped
    ("(3,5)", "\\boxed{3,5}", 1.0),                     # a bare pair matches the interval
    ("1000000", "\\boxed{1e6}", 0.0),                   # scientific notation does not parse
    ("\\infty", "\\boxed{oo}", 0.0),                    # sympy's name for infinity is not read
    ("7", "Answer: 7 dollars", 1.0),                    # prose after "Answer:": its first number
])
def test_known_math_verify_limits_documented_in_the_readme(gold, completion, expected):
    """Behaviour of math-verify that users should know about (docs/real_models.md, "Rewards and evaluation"); a
    change in math-verify that fixes one of these shows up here."""
    assert math_accuracy([""], [completion], None, answer=[gold]) == [expected]
