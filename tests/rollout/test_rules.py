import math
import random

import pytest

from ibtpo.methods.ib_tpo import ib_score, node_gain
from ibtpo.rollout.rules import BRANCH_RULES, RuleContext, node_candidates
from ibtpo.core.tree import Tree, compute_p_hat
from ibtpo.core.tree_stats import IBOptions


def lp(conf, n=1):
    """n token log-probs whose length-normalised confidence is `conf`."""
    return [math.log(conf)] * n


def hand_tree():
    """root(p=2/4) -> s1 (conf .9) -> {x (R=1, conf .8), y (R=1, conf .5)} ; root -> s2 (conf .4) -> z (R=0)
                                   ; root -> s3 (conf .6, R=0 leaf). s1 is a 2-way branch, s2 a chain."""
    t = Tree(question_id="q", prompt_ids=[1])
    s1 = t.root.add_child([10, 11], lp(0.9, 2), [0, 0])
    x = s1.add_child([12] * 3, lp(0.8, 3), [0] * 3)
    y = s1.add_child([13] * 3, lp(0.5, 3), [0] * 3)
    s2 = t.root.add_child([20] * 2, lp(0.4, 2), [0, 0])
    z = s2.add_child([21] * 2, lp(0.7, 2), [0, 0])
    s3 = t.root.add_child([30] * 4, lp(0.6, 4), [0] * 4)
    x.reward, y.reward, z.reward, s3.reward = 1.0, 1.0, 0.0, 0.0
    compute_p_hat(t.root)
    return t, dict(s1=s1, s2=s2, s3=s3, x=x, y=y, z=z)


def test_ib_score_hand_computed():
    t, n = hand_tree()
    beta = 5.0
    # root: p_hat 0.5; children s1 (p 1.0, r 2), s2 (p 0, r 0), s3 (p 0, r 0)
    expect_root = (1 + beta) / 3 * (0.9 * (2 - 1.2) + 0.4 * (0 - 1.2) + 0.6 * (0 - 1.2))
    assert ib_score(t.root, beta) == pytest.approx(expect_root)
    # s1: p_hat 1, both children r = 1
    assert ib_score(n["s1"], beta) == pytest.approx(6 / 2 * (0.8 * -0.2 + 0.5 * -0.2))
    # s2: chain with p_hat 0 -> r = 1 by the zero rule -> -(1+beta)/beta * conf
    assert node_gain(n["z"], n["s2"]) == 1.0
    assert ib_score(n["s2"], beta) == pytest.approx(-(1 + beta) / beta * 0.7)
    # product confidence: a 3-token step of per-token prob .8 has conf .512
    assert ib_score(n["s1"], beta, "product") == pytest.approx(3 * (0.8 ** 3 * -0.2 + 0.5 ** 3 * -0.2))
    with pytest.raises(ValueError):
        ib_score(n["x"], beta)


def test_ib_rule_picks_top_k_and_respects_room_and_root_choice():
    t, n = hand_tree()
    ctx = RuleContext(k=1, cap=20, min_room=1)
    scores = {"root": ib_score(t.root), "s1": ib_score(n["s1"]), "s2": ib_score(n["s2"])}
    best = max(scores, key=scores.get)
    got = BRANCH_RULES.get("ib")(t, ctx, random.Random(0))
    assert len(got) == 1 and got[0][0] is (t.root if best == "root" else n[best])
    assert got[0][1] == len(got[0][0].token_ids)  # boundary fork
    two = BRANCH_RULES.get("ib")(t, RuleContext(k=2, cap=20, min_room=1), random.Random(0))
    order = sorted(scores, key=scores.get, reverse=True)[:2]
    assert [fp[0] for fp in two] == [t.root if k == "root" else n[k] for k in order]
    # no room after the 2-token nodes: only the root remains a candidate
    assert node_candidates(t, RuleContext(k=1, cap=5, min_room=4)) == [t.root]
    assert t.root not in node_candidates(t, RuleContext(k=1, cap=20, min_room=1, root_candidate=False))
    # zero-p_hat skip: s2 (p_hat 0) is no longer chosen
    skip = BRANCH_RULES.get("ib")(t, RuleContext(k=3, cap=20, min_room=1, ib=IBOptions(zero_phat="skip")), random.Random(0))
    assert n["s2"] not in [fp[0] for fp in skip]


def test_ib_rule_breaks_ties_at_random_with_the_seed():
    t = Tree(question_id="q", prompt_ids=[1])
    for i in range(4):  # four identical chains: every chain node ties
        a = t.root.add_child([i], lp(0.5), [0])
        a.add_child([i], lp(0.5), [0]).reward = 1.0
    t.root.children[0].children[0].reward = 0.0
    compute_p_hat(t.root)
    ctx = RuleContext(k=1, cap=10, min_room=1, root_candidate=False)
    picks = {BRANCH_RULES.get("ib")(t, ctx, random.Random(s))[0][0].path for s in range(30)}
    assert len(picks) > 1  # not always the first in tree order
    assert BRANCH_RULES.get("ib")(t, ctx, random.Random(3)) == BRANCH_RULES.get("ib")(t, ctx, random.Random(3))


def test_entropy_rule_picks_lowest_logprob_tokens_and_skips_fork_points():
    t, n = hand_tree()
    n["s3"].logprobs = [-0.1, -5.0, -0.1, -0.1]
    n["x"].logprobs = [-0.1, -0.1, -3.0]
    ctx = RuleContext(k=2, cap=20, min_room=1)
    got = BRANCH_RULES.get("entropy")(t, ctx, random.Random(0))
    assert got == [(n["s3"], 1), (n["x"], 2)]
    # the first token of x is an existing fork point (s1 has two children): never proposed
    n["x"].logprobs = [-9.0, -0.1, -0.1]
    got = BRANCH_RULES.get("entropy")(t, RuleContext(k=1, cap=20, min_room=1), random.Random(0))
    assert got == [(n["s3"], 1)]
    # the first token of z (s2 is a chain) maps to a boundary fork at s2
    n["z"].logprobs = [-20.0, -0.1]
    got = BRANCH_RULES.get("entropy")(t, RuleContext(k=1, cap=20, min_room=1), random.Random(0))
    assert got == [(n["s2"], 2)]
    # room: with cap 4 and min_room 3, only positions with offset <= 1 qualify
    got = BRANCH_RULES.get("entropy")(t, RuleContext(k=10, cap=4, min_room=3), random.Random(0))
    assert all(node.offset + at <= 1 for node, at in got)


def test_random_rule_distinct_candidates_and_seeded():
    t, n = hand_tree()
    ctx = RuleContext(k=3, cap=20, min_room=1)
    got = BRANCH_RULES.get("random")(t, ctx, random.Random(1))
    nodes = [fp[0] for fp in got]
    assert len(set(map(id, nodes))) == 3 and set(map(id, nodes)) == {id(t.root), id(n["s1"]), id(n["s2"])}
    assert BRANCH_RULES.get("random")(t, ctx, random.Random(1)) == got
    more = BRANCH_RULES.get("random")(t, RuleContext(k=5, cap=20, min_room=1), random.Random(1))
    assert len(more) == 5  # fewer candidates than K: repeats fill up
