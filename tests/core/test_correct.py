"""The one definition of a correct answer and its readers."""

import pytest

from ibtpo.core.correct import CORRECT_THRESHOLD, is_correct


@pytest.mark.parametrize("reward,expected", [(None, False), (0.0, False), (0.1, False), (0.999, False), (1.0, True),
                                             (1.1, True), (5.0, True), (-1.0, False)])
def test_is_correct_threshold(reward, expected):
    assert CORRECT_THRESHOLD == 1.0
    assert is_correct(reward) is expected


def test_p_hat_uses_the_definition():
    from ibtpo.core.tree import Tree, compute_p_hat

    t = Tree(question_id="q", prompt_ids=[1])
    for r in (1.1, 0.1, 1.0, 0.9, None):
        t.root.add_child([5], [-0.1], [0.0]).reward = r
    compute_p_hat(t.root)
    assert t.root.p_hat == pytest.approx(2 / 5)


def test_evaluation_counts_the_same_answers_correct(tiny_model, tokenizer):
    """avg@k / greedy with a reward of 0.5 (partial credit) for every completion: nothing is correct."""
    from ibtpo.core.sampling import SamplingParams
    from ibtpo.evaluation.heldout import evaluate
    from ibtpo.rollout.spec import RolloutSpec
    from ibtpo.data.tasks import PromptedQuestion

    problems = [PromptedQuestion("a", "1+1=", "2"), PromptedQuestion("b", "2+2=", "4")]
    for value, acc in ((0.5, 0.0), (1.0, 1.0)):
        res = evaluate(tiny_model, tokenizer, problems, lambda prompts, completions, *a, **k: [value] * len(completions),
                       RolloutSpec.independent(2, SamplingParams(temperature=1.0, max_new_tokens=3)), seed=0)
        assert res["avg@2"] == acc and res["pass@2"] == acc


def test_format_weight_below_threshold_is_enforced():
    from ibtpo.config.schema import ConfigError, build_config

    with pytest.raises(ConfigError, match="format_reward_weight: got 1.0"):
        build_config(None, {"format_reward_weight": 1.0})
