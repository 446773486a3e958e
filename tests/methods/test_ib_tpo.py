"""The IB-Score estimator against closed-form values on a synthetic step process (no language model)."""

import math
import random

import numpy as np
import pytest

from ibtpo.methods.ib_tpo import (cov_conf_gain, cov_from_values, ib_from_values, ib_score, tree_ib_stats,
                                  tsallis2_from_values)
from ibtpo.algos.synthetic_steps import StepProcess
from ibtpo.core.tree import Tree, compute_p_hat
from ibtpo.core.tree_stats import IBOptions


def test_decomposition_ib_equals_scaled_tsallis_objective():
    rng = random.Random(0)
    for _ in range(50):
        b = rng.randint(1, 6)
        conf = [rng.random() for _ in range(b)]
        gains = [rng.random() * 3 for _ in range(b)]
        beta = rng.choice([0.5, 1.0, 5.0, 20.0])
        j = tsallis2_from_values(conf) + beta * cov_from_values(conf, gains)
        assert ib_from_values(conf, gains, beta) == pytest.approx((1 + beta) / beta * (j - 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("state", [(), (1,)])
def test_unbiased_with_exact_gains(seed, state):
    """Children drawn from pi with exact gains: the sample mean of each estimate is within 4 standard errors."""
    proc = StepProcess(depth=3, actions=4, seed=seed)
    exact = proc.exact(state, beta=5.0)
    rng = np.random.default_rng(100 + seed)
    draws = {"ib": [], "cov": [], "h2": []}
    for _ in range(3000):
        conf, gains = proc.sample_children(state, 4, rng)
        draws["ib"].append(ib_from_values(conf, gains, 5.0))
        draws["cov"].append(cov_from_values(conf, gains))
        draws["h2"].append(tsallis2_from_values(conf))
    for key, vals in draws.items():
        vals = np.array(vals)
        se = vals.std(ddof=1) / math.sqrt(len(vals))
        assert abs(vals.mean() - exact[key]) <= 4 * se + 1e-12, (key, vals.mean(), exact[key], se)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_monte_carlo_trees_converge_as_samples_grow(seed):
    """Fully Monte Carlo (p_hat from sampled 0/1 leaves, through the tree code): the error shrinks with B and m,
    and at B = m = 16 the remaining bias is within 4 standard errors + 0.01."""
    proc = StepProcess(depth=3, actions=4, seed=seed)
    exact = proc.exact((), beta=5.0)
    rng = np.random.default_rng(7 + seed)
    rmse, bias, se = {}, {}, {}
    for b, m in ((2, 2), (16, 16)):
        est = []
        for _ in range(120):
            tree = proc.sample_tree((), b, m, rng)
            compute_p_hat(tree.root)
            est.append(ib_score(tree.root, 5.0, "product"))
        est = np.array(est)
        rmse[b] = math.sqrt(float(((est - exact["ib"]) ** 2).mean()))
        bias[b] = float(est.mean() - exact["ib"])
        se[b] = float(est.std(ddof=1) / math.sqrt(len(est)))
    assert rmse[16] < 0.5 * rmse[2]
    assert abs(bias[16]) <= 4 * se[16] + 0.01


def test_tree_stats_on_a_hand_built_tree():
    t = Tree(question_id="q", prompt_ids=[1])
    a = t.root.add_child([5], [math.log(0.5)], [0.0])
    a.reward = 1.0
    b = t.root.add_child([6], [math.log(0.25)], [0.0])
    b.reward = 0.0
    compute_p_hat(t.root)  # p_hat(root) = 0.5; r(a) = 2, r(b) = 0
    stats = tree_ib_stats([t], IBOptions(beta=5.0, conf_mode="product"))
    assert stats["ib/score_mean"] == pytest.approx(6 * (0.5 * (2 - 1.2) + 0.25 * (0 - 1.2)) / 2)
    assert stats["ib/cov_conf_gain"] == pytest.approx((0.5 * 1 + 0.25 * -1) / 2)
    assert cov_conf_gain(t.root, "product") == stats["ib/cov_conf_gain"]
    assert stats["ib/step_entropy"] == pytest.approx(1 - 0.375)
    chain = Tree(question_id="c", prompt_ids=[1])
    chain.root.add_child([5], [0.0], [0.0]).reward = 1.0
    assert math.isnan(tree_ib_stats([chain])["ib/score_mean"])  # no branching node: no made-up number


def test_branching_ib_is_kept_with_the_tree_and_follows_its_changes():
    from ibtpo.methods.ib_tpo import branching_ib

    t = Tree(question_id="q", prompt_ids=[1])
    a = t.root.add_child([5], [math.log(0.5)], [0.0])
    a.reward = 1.0
    t.root.add_child([6], [math.log(0.25)], [0.0]).reward = 0.0
    first = branching_ib(t, IBOptions(beta=5.0, conf_mode="product"))
    assert first == [(ib_score(t.root, 5.0, "product"), cov_conf_gain(t.root, "product"), 1 - 0.375)]
    assert branching_ib(t, IBOptions(beta=5.0, conf_mode="product")) is first  # kept: computed once
    assert branching_ib(t, IBOptions(beta=5.0, conf_mode="mean")) is not first  # other options: their own entry
    a.reward = 0.0  # the tree changed: computed again, from the new p_hat
    again = branching_ib(t, IBOptions(beta=5.0, conf_mode="product"))
    assert again is not first and again[0][0] == ib_score(t.root, 5.0, "product") != first[0][0]
    assert tree_ib_stats([t], IBOptions(beta=5.0, conf_mode="product"))["ib/score_mean"] == again[0][0]
