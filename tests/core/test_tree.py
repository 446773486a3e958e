import json

import pytest

from ibtpo.core.tree import Node, Tree, compute_p_hat


def build_tree():
    """root -> a(2 tok) -> {a0 (R=1), a1 (R=0)};  root -> b(3 tok, R=1);  root -> c(1 tok) -> c0 (R=0)."""
    t = Tree(question_id="q", prompt_ids=[5, 6])
    a = t.root.add_child([10, 11], [-0.1, -0.2], [0.5, 0.6])
    a0 = a.add_child([12], [-0.3], [0.1])
    a1 = a.add_child([13, 14], [-1.0, -2.0], [0.2, 0.3])
    b = t.root.add_child([20, 21, 22], [-0.5] * 3, [0.0] * 3)
    c = t.root.add_child([30], [-0.7], [0.4])
    c0 = c.add_child([31], [-0.01], [0.0])
    a0.reward, a1.reward, b.reward, c0.reward = 1.0, 0.0, 1.0, 0.0
    return t, dict(a=a, a0=a0, a1=a1, b=b, c=c, c0=c0)


def test_paths_offsets_and_completion():
    t, n = build_tree()
    assert [x.path for x in t.nodes()] == ["0", "0/0", "0/1", "1", "2", "2/0"]
    assert n["a1"].offset == 2 and n["a1"].end == 4 and n["a1"].depth == 2
    assert Tree.completion(n["a1"])[0] == [10, 11, 13, 14]
    assert Tree.completion(n["a1"])[1] == [-0.1, -0.2, -1.0, -2.0]
    assert len(t.leaves()) == 4 and t.new_tokens == 2 + 1 + 2 + 3 + 1 + 1


def test_p_hat_bottom_up():
    t, n = build_tree()
    compute_p_hat(t.root)
    assert t.root.p_hat == pytest.approx(0.5) and t.root.n_leaves == 4
    assert n["a"].p_hat == pytest.approx(0.5) and n["a"].n_leaves == 2
    assert n["b"].p_hat == 1.0 and n["c"].p_hat == 0.0 and n["c0"].p_hat == 0.0


def test_split_keeps_paths_tokens_and_rewards():
    t, n = build_tree()
    before = {tuple(Tree.completion(leaf)[0]): leaf.reward for leaf in t.leaves()}
    tail = n["b"].split(1)
    assert n["b"].token_ids == [20] and tail.token_ids == [21, 22] and tail.reward == 1.0 and n["b"].reward is None
    assert tail.path == "1/0" and tail.offset == 1 and tail.depth == 2
    tail_a = n["a"].split(1)
    assert [c.path for c in tail_a.children] == ["0/0/0", "0/0/1"] and tail_a.children[1].offset == 2
    after = {tuple(Tree.completion(leaf)[0]): leaf.reward for leaf in t.leaves()}
    assert after == before
    with pytest.raises(ValueError):
        n["c"].split(1)


def test_confidence_modes():
    node = Node(path="0", token_ids=[1, 2], logprobs=[-0.2, -0.6])
    assert node.confidence("mean") == pytest.approx(2.718281828 ** -0.4)
    assert node.confidence("product") == pytest.approx(2.718281828 ** -0.8)


def test_json_round_trip_and_stats(tokenizer):
    t, _ = build_tree()
    t.meta["reused_prefix_tokens"] = 7
    data = json.loads(json.dumps(t.to_dict()))
    assert data["trajectories"] == 4 and data["branching_nodes"] == 2 and data["depth"] == 2
    assert data["p_hat"] == 0.5 and data["meta"]["reused_prefix_tokens"] == 7
    back = Tree.from_dict(data)
    assert [Tree.completion(x)[0] for x in back.leaves()] == [Tree.completion(x)[0] for x in t.leaves()]
    assert [x.reward for x in back.leaves()] == [x.reward for x in t.leaves()]
    assert "text" in Tree(question_id="z", prompt_ids=[5], root=t.root).to_dict(tokenizer)["nodes"][0]


def test_render_tree(tokenizer):
    from ibtpo.rollout.render import render_tree

    t = Tree(question_id="q", prompt_ids=tokenizer("Q:1+2", add_special_tokens=False)["input_ids"])
    a = t.root.add_child(tokenizer("1+2=3\n\n", add_special_tokens=False)["input_ids"], [0.0] * 7, [0.0] * 7)
    a.add_child(tokenizer("A:3", add_special_tokens=False)["input_ids"], [0.0] * 3, [0.0] * 3).reward = 1.0
    a.add_child(tokenizer("A:4", add_special_tokens=False)["input_ids"], [0.0] * 3, [0.0] * 3).reward = 0.0
    text = render_tree(t, tokenizer)
    assert text.splitlines() == [
        '[prompt] "Q:1+2"  p=0.50  (2 trajectories, 13 new tokens)',
        '└─ "1+2=3\\n\\n"  p=0.50',
        '   ├─ "A:3"  p=1.00  R=1',
        '   └─ "A:4"  p=0.00  R=0',
    ]
