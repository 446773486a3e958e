"""A tree's kept statistics (``Tree.statistics``): equal to the direct computations, computed once, and never stale
after the tree changes (a child added, a node split, a reward or tokens assigned)."""

import math

import pytest

from ibtpo.core.tree import Tree, compute_p_hat
from tests.core.test_tree import build_tree


def _direct(t: Tree) -> dict:
    """Each statistic computed the way its readers did before they shared one."""
    compute_p_hat(t.root)
    leaves = t.leaves()
    rewards = [float(leaf.reward or 0.0) for leaf in leaves]
    mu = sum(rewards) / len(rewards)
    std = (sum((r - mu) ** 2 for r in rewards) / (len(rewards) - 1)) ** 0.5 if len(rewards) > 1 else 0.0

    def value(node):
        under = [x for x in node.iter_nodes() if not x.children]
        total = 0.0
        for x in under:
            total += float(x.reward or 0.0)
        return total / len(under)

    return {"leaves": leaves, "nodes": t.nodes(), "lineages": [leaf.lineage() for leaf in leaves],
            "completions": [Tree.completion(leaf)[:2] for leaf in leaves], "std": std,
            "values": {id(n): value(n) for n in t.root.iter_nodes()},
            "p_hat": [(n.p_hat, n.n_leaves) for n in t.root.iter_nodes()]}


def _check(t: Tree) -> None:
    kept = t.statistics()
    want = _direct(t)
    assert kept.leaves == want["leaves"] and kept.nodes == want["nodes"] and kept.lineages == want["lineages"]
    assert kept.completions == want["completions"]
    assert kept.reward_std == want["std"]
    assert kept.values == pytest.approx(want["values"], rel=1e-15)
    assert [(n.p_hat, n.n_leaves) for n in t.root.iter_nodes()] == want["p_hat"]


def test_statistics_equal_the_direct_computations():
    t, n = build_tree()
    _check(t)
    kept = t.statistics()
    assert kept.reward_std == pytest.approx(math.sqrt(1 / 3))  # rewards 1, 0, 1, 0
    assert kept.values[id(n["a"])] == 0.5 and kept.values[id(t.root)] == 0.5
    assert t.root.p_hat == 0.5 and n["a"].n_leaves == 2


def test_computed_once_while_the_tree_is_unchanged():
    t, _ = build_tree()
    kept = t.statistics()
    assert t.statistics() is kept
    calls = []
    assert kept.derive("x", lambda: calls.append(1) or 42) == 42
    assert kept.derive("x", lambda: calls.append(1) or 0) == 42 and calls == [1]
    t.root.children[0].info["dropped"] = True  # an annotation, not a change of the tree: kept
    t.root.children[0].finished = True
    compute_p_hat(t.root)  # the same values again: kept
    assert t.statistics() is kept


def test_a_p_hat_written_from_outside_is_computed_again():
    t, n = build_tree()
    kept = t.statistics()
    t.root.p_hat, n["a"].n_leaves = 0.123, 7
    assert t.statistics() is not kept and t.root.p_hat == 0.5 and n["a"].n_leaves == 2


@pytest.mark.parametrize("change", ["add_child", "split", "reward", "tokens", "logprobs"])
def test_never_stale_after_the_tree_changes(change):
    t, n = build_tree()
    before = t.statistics()
    before.derive("x", lambda: "old")
    if change == "add_child":
        n["b"].add_child([23], [-0.2], [0.1]).reward = 0.0
    elif change == "split":
        n["b"].split(1)
    elif change == "reward":
        n["a0"].reward = 0.0
    elif change == "tokens":
        n["c"].token_ids = [40, 41]
    else:
        n["a1"].logprobs = [-3.0, -4.0]
    after = t.statistics()
    assert after is not before and "x" not in after.derived
    _check(t)
    if change == "reward":
        assert after.reward_std == 0.5 and t.root.p_hat == 0.25
    if change == "tokens":
        assert after.completions[3][0] == [40, 41, 31]


def test_a_new_root_is_a_new_tree():
    t, _ = build_tree()
    kept = t.statistics()
    t.root = build_tree()[0].root.children[1]
    t.root.parent = None
    assert t.statistics() is not kept


def test_split_keeps_a_leaf_s_reward_and_text_on_its_tail():
    t, n = build_tree()
    n["b"].text = "decoded"
    tail = n["b"].split(2)
    assert (tail.reward, tail.text) == (1.0, "decoded") and (n["b"].reward, n["b"].text) == (None, None)
    kept = t.statistics()
    assert tail in kept.leaves and kept.completions[kept.leaves.index(tail)][0] == [20, 21, 22]


def test_empty_and_one_leaf_trees():
    t = Tree("q", [1])
    assert t.statistics().leaves == [] and t.statistics().reward_std == 0.0
    t.root.add_child([2], [-0.1], [0.0]).reward = 1.0
    assert t.statistics().reward_std == 0.0 and t.statistics().completions == [([2], [-0.1])]


def test_a_pickled_or_copied_tree_computes_its_own_statistics():
    import copy
    import pickle

    from ibtpo.training.batch import flatten_paths

    t = Tree(question_id="q", prompt_ids=[1, 2])
    a = t.root.add_child([5, 6], [-0.5, -0.1], [0.2, 0.3])
    a.add_child([7], [-0.2], [0.1]).reward = 1.0
    a.add_child([8], [-0.3], [0.1]).reward = 0.0
    kept = t.statistics()
    for other in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t)):
        stats = other.statistics()
        assert stats is not kept and stats.root is other.root
        assert sorted(stats.values.values()) == sorted(kept.values.values())
        batch = flatten_paths([other], pad_id=0)  # reads the node values by node identity
        assert batch.size == 2 and batch.rewards.tolist() == [1.0, 0.0]
