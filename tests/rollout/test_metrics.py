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


class _CountingTokenizer:
    """The tokenizer, counting decode calls."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decodes = tokenizer, 0

    def decode(self, ids, **kwargs):
        self.decodes += 1
        return self.tokenizer.decode(ids, **kwargs)


def test_rewarded_leaves_are_not_decoded_again(tokenizer):
    from ibtpo.rewards.scoring import reward_leaves
    from ibtpo.rollout.metrics import diversity_metrics

    trees = []
    for texts in (["1+2=3\n\nA:3", "1+2=3\n\nA:3", "1+2=4\n\nA:4"], ["5+5=10\n\nA:10", "no answer here"]):
        t = Tree(question_id="q", prompt_ids=[1])
        for text in texts:
            _chain(t, text, tokenizer)
        trees.append(t)
    want = diversity_metrics(trees, tokenizer, extract_answer)  # no leaf text yet: decoded here
    counting = _CountingTokenizer(tokenizer)
    for t in trees:
        reward_leaves(lambda prompts, completions, ids, **_: [1.0] * len(completions), counting, "p", t, t.leaves())
    assert counting.decodes == 5 and trees[0].leaves()[2].text == "1+2=4\n\nA:4"  # once per leaf, by the reward
    assert diversity_metrics(trees, counting, extract_answer) == want and counting.decodes == 5
