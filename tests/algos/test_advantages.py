import math

import pytest
import torch

import functools

from ibtpo.core.registry import options_from
from ibtpo.algos.advantages import ADV_ESTIMATORS, get_adv_estimator, group_stats


def test_group_stats_unbiased_std_and_singletons():
    vals = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0])
    mean, std = group_stats(vals, torch.tensor([0, 0, 0, 0, 1]))
    assert mean.tolist() == pytest.approx([0.5] * 4 + [5.0])
    assert std[0].item() == pytest.approx(math.sqrt(1 / 3))
    assert std[4].item() == 0.0  # a group of one has no spread


def test_grpo_group_scaling_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    mask = torch.tensor([[1, 1, 0]] * 6, dtype=torch.float)
    adv = get_adv_estimator("grpo")(rewards=rewards, response_mask=mask, group_ids=groups, scale_rewards="group")
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert adv[:, 0].tolist() == pytest.approx([a, -a, -a, a, 0.0, 0.0], rel=1e-6)
    assert adv[:, 2].abs().sum() == 0  # masked tokens get no advantage
    assert torch.equal(adv[:, 0], adv[:, 1])  # every response token shares the sequence advantage


@pytest.mark.parametrize("mode,expected", [("none", 0.5), ("batch", 0.5 / (math.sqrt(4 / 15) + 1e-4))])
def test_grpo_scale_modes(mode, expected):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = ADV_ESTIMATORS["grpo"](rewards=rewards, response_mask=torch.ones(6, 1), group_ids=groups,
                                 scale_rewards=mode)
    assert adv[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert adv[4, 0].item() == 0.0


def test_unknown_estimator_names_known_ones():
    with pytest.raises(KeyError, match="grpo"):
        get_adv_estimator("nope")


def _hand_tree():
    """root -> A (2 tokens, p=.5 each) -> {A1 (R=1), A2 (R=0)};  root -> B (p=.25) -> B1 (p=1, R=1)."""
    from ibtpo.core.tree import Tree, compute_p_hat

    t = Tree(question_id="q", prompt_ids=[1, 2])
    a = t.root.add_child([5, 6], [math.log(0.5)] * 2, [0.0, 0.0])
    a.add_child([8], [math.log(0.8)], [0.0]).reward = 1.0
    a.add_child([9], [math.log(0.2)], [0.0]).reward = 0.0
    b = t.root.add_child([7], [math.log(0.25)], [0.0])
    b.add_child([10], [0.0], [0.0]).reward = 1.0
    compute_p_hat(t.root)
    return t


def _close(adv, expected):
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float), rtol=1e-5, atol=1e-6)


SIGMA = math.sqrt(1 / 3)  # unbiased std of the leaf rewards [1, 0, 1]


def _with_options(name, cfg):
    """The registered estimator called with its typed options filled from config-like `cfg`."""
    fn, options = get_adv_estimator(name), ADV_ESTIMATORS.options(name)
    return fn if options is None else functools.partial(fn, options=options_from(options, cfg))


def _run(name, **cfg_fields):
    from types import SimpleNamespace

    from ibtpo.training.batch import flatten_paths

    batch = flatten_paths([_hand_tree()], pad_id=0)
    cfg = SimpleNamespace(**{"ib_tpo_lambda": 0.1, "ib_beta": 5.0, "ib_conf": "mean", "adv_leaf_weight": False,
                             **cfg_fields})
    adv = _with_options(name, cfg)(rewards=batch.rewards, response_mask=batch.response_mask, group_ids=batch.group_ids,
                                   scale_rewards="group", node_index=batch.node_index, nodes=batch.nodes,
                                   ancestor_index=batch.ancestor_index)
    # the three rows are A+A1, A+A2, B+B1; completion tokens start at column 1 (prompt of 2 tokens)
    return adv, batch


def test_batch_maps_tokens_to_their_step_nodes():
    _, batch = _run("grpo")
    names = ["A", "A1", "A2", "B", "B1"]  # depth-first node order
    rows = [[names[i] if i >= 0 else "-" for i in r] for r in batch.node_index.tolist()]
    assert rows == [["-", "A", "A", "A1"], ["-", "A", "A", "A2"], ["-", "B", "B1", "-"]]
    assert batch.ancestor_index.tolist() == [[0], [0], [3]]
    assert batch.nodes.p_hat.tolist() == pytest.approx([0.5, 1, 0, 1, 1])
    assert batch.nodes.root_p_hat.tolist() == pytest.approx([2 / 3] * 5)
    assert batch.nodes.confidence("mean").tolist() == pytest.approx([0.5, 0.8, 0.2, 0.25, 1.0])


def test_ib_tpo_hand_computed():
    adv, _ = _run("ib_tpo")
    s = SIGMA + 1e-4
    a = (0.5 - 2 / 3) / s + 0.1 * (0.75 - 1.2) * 0.5
    a1 = (1 - 2 / 3) / s + 0.1 * (2 - 1.2) * 0.8
    a2 = (0 - 2 / 3) / s + 0.1 * (0 - 1.2) * 0.2
    b = (1 - 2 / 3) / s + 0.1 * (1.5 - 1.2) * 0.25
    b1 = (1 - 2 / 3) / s + 0.1 * (1 - 1.2) * 1.0
    _close(adv, [[0, a, a, a1], [0, a, a, a2], [0, b, b1, 0]])
    weighted, _ = _run("ib_tpo", adv_leaf_weight=True)
    assert weighted[0, 1].item() == pytest.approx(a / math.sqrt(2), rel=1e-6)


def test_ib_tpo_zero_when_all_rewards_equal_and_grpo_at_lambda_zero():
    from ibtpo.core.tree import Tree, compute_p_hat
    from ibtpo.training.batch import flatten_paths
    from types import SimpleNamespace

    trees = []
    for rewards in ([1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]):  # independent samples: depth-one trees
        t = Tree(question_id="q", prompt_ids=[1])
        for i, r in enumerate(rewards):
            t.root.add_child([5 + i, 6], [-0.5, -0.7], [0.0, 0.0]).reward = r
        compute_p_hat(t.root)
        trees.append(t)
    batch = flatten_paths(trees, pad_id=0)
    kw = dict(rewards=batch.rewards, response_mask=batch.response_mask, group_ids=batch.group_ids,
              scale_rewards="group", node_index=batch.node_index, nodes=batch.nodes,
              ancestor_index=batch.ancestor_index)
    cfg = SimpleNamespace(ib_tpo_lambda=0.0, ib_beta=5.0, ib_conf="mean", adv_leaf_weight=False)
    ib = _with_options("ib_tpo", cfg)(**kw)
    torch.testing.assert_close(ib, get_adv_estimator("grpo")(**kw))
    cfg.ib_tpo_lambda = 0.1
    assert _with_options("ib_tpo", cfg)(**kw)[4:].abs().sum() == 0  # sigma = 0: no advantage


def test_treerl_hand_computed():
    adv, _ = _run("treerl")
    a, a1, a2 = 2 * (0.5 - 2 / 3), (1 - 2 / 3) + 0.5, -2 / 3 - 0.5
    b, b1 = 2 * (1 - 2 / 3), (1 - 2 / 3)
    _close(adv, [[0, a, a, a1], [0, a, a, a2], [0, b, b1, 0]])
    weighted, _ = _run("treerl", adv_leaf_weight=True)
    assert weighted[0, 1].item() == pytest.approx(a / math.sqrt(2)) and weighted[0, 3].item() == pytest.approx(a1)


def test_treepo_hand_computed():
    adv, _ = _run("treepo")
    s = SIGMA + 1e-4
    r0 = ((1 - 2 / 3) + (1 - 0.5)) / 2 / s  # tree group and the branched ancestor A
    r1 = ((0 - 2 / 3) + (0 - 0.5)) / 2 / s
    r2 = (1 - 2 / 3) / s  # B has one leaf: only the tree group counts
    _close(adv, [[0, r0, r0, r0], [0, r1, r1, r1], [0, r2, r2, 0]])


def test_ib_tpo_equals_grpo_at_lambda_zero_with_non_binary_rewards():
    """A format bonus (0.1 on a wrong answer, 1.1 on a right one) or partial credit: the global term follows the
    reward as GRPO does, while p_hat (the IB term's input) counts only correct answers (reward >= 1)."""
    from types import SimpleNamespace

    from ibtpo.core.tree import Tree, compute_p_hat
    from ibtpo.training.batch import flatten_paths

    trees = []
    for rewards in ([1.1, 0.1, 0.0, 1.0], [0.1, 0.1, 0.0, 0.5], [0.1, 0.1, 0.1, 0.1]):
        t = Tree(question_id="q", prompt_ids=[1])
        for i, r in enumerate(rewards):
            t.root.add_child([5 + i, 6], [-0.5, -0.7], [0.0, 0.0]).reward = r
        compute_p_hat(t.root)
        trees.append(t)
    assert [t.root.p_hat for t in trees] == [0.5, 0.0, 0.0]  # 0.1 and 0.5 are not correct answers
    batch = flatten_paths(trees, pad_id=0)
    kw = dict(rewards=batch.rewards, response_mask=batch.response_mask, group_ids=batch.group_ids,
              scale_rewards="group", node_index=batch.node_index, nodes=batch.nodes,
              ancestor_index=batch.ancestor_index)
    cfg = SimpleNamespace(ib_tpo_lambda=0.0, ib_beta=5.0, ib_conf="mean", adv_leaf_weight=False)
    grpo = get_adv_estimator("grpo")(**kw)
    assert grpo[4:8].abs().sum() > 0  # the all-wrong group with partial credit still has a GRPO signal
    torch.testing.assert_close(_with_options("ib_tpo", cfg)(**kw), grpo)
