"""Rollout diversity metrics on hand-built trees."""

import pytest

from ibtpo.core.tree import Tree
from ibtpo.testbed.task import extract_answer


def _chain(tree, text, tokenizer):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    tree.root.add_child(ids, [0.0] * len(ids), [0.0] * len(ids))


def test_distinct_answers_and_completions(tokenizer):
    from ibtpo.rollout.metrics import diversity_metrics

    a = Tree(question_id="a", prompt_ids=[1])
    for text in ["1+2=3\n\nA:3", "1+2=3\n\nA:3", "2+1=3\n\nA:3", "1+2=4\n\nA:4"]:
        _chain(a, text, tokenizer)  # answers {3, 4}; 3 distinct completions of 4
    b = Tree(question_id="b", prompt_ids=[1])
    for text in ["5+5=10\n\nA:10", "no answer here"]:
        _chain(b, text, tokenizer)  # answers {10} (the second has none); 2 distinct of 2
    m = diversity_metrics([a, b], tokenizer, extract_answer)
    assert m["diversity/distinct_answers"] == pytest.approx((2 + 1) / 2)
    assert m["diversity/distinct_completions"] == pytest.approx((3 / 4 + 2 / 2) / 2)
