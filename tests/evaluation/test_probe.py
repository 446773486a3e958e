"""The IB probe: deterministic, RNG-neutral trees; readings equal the estimator on hand-built trees; JSON-safe."""

import json
import math

import pytest
import torch

from ibtpo.methods.ib_tpo import tree_ib_stats
from ibtpo.evaluation.probe import grow_probe, p_hat_histogram, probe_metrics, summarize
from ibtpo.rollout.rules import BranchingOptions
from ibtpo.rollout.samplers import TreeShape
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree_stats import IBOptions
from ibtpo.core.tree import Tree, compute_p_hat
from ibtpo.testbed.task import SumTask

IB = IBOptions(beta=5.0, conf_mode="mean")


def parity_reward(prompts, completions, completion_ids, **_):
    return [float(ids[0] % 2 == 0) for ids in completion_ids]


def _hand_tree(qid: str, rewards: list[float]) -> Tree:
    """Root with one branching child (two leaves) and one leaf child: p_hat values known by hand."""
    t = Tree(question_id=qid, prompt_ids=[1])
    mid = t.root.add_child([5, 6], [math.log(0.5)] * 2, [0.3, 0.3])
    for r, lp in zip(rewards[:2], (math.log(0.8), math.log(0.2))):
        mid.add_child([7], [lp], [0.1]).reward = r
    t.root.add_child([8], [math.log(0.5)], [0.2]).reward = rewards[2]
    compute_p_hat(t.root)
    return t


def test_summary_matches_estimator_and_counts():
    trees = [_hand_tree("a", [1.0, 0.0, 1.0]), _hand_tree("b", [0.0, 0.0, 0.0])]
    s = summarize(trees, IB)
    ib = tree_ib_stats(trees, IB)
    agg = s["aggregate"]
    assert agg["ib_score"] == pytest.approx(ib["ib/score_mean"])
    assert agg["cov_conf_gain"] == pytest.approx(ib["ib/cov_conf_gain"])
    assert agg["eff_rate"] == 0.5 and agg["mean_reward"] == pytest.approx(2 / 6)
    qa, qb = s["questions"]
    assert qa["p_hat_root"] == pytest.approx(2 / 3) and qb["p_hat_root"] == 0.0
    assert qa["effective"] and not qb["effective"] and qa["branching_nodes"] == 2
    # question-level mean of per-tree IB-Scores, with its standard error over the two questions
    per_q = [tree_ib_stats([t], IB)["ib/score_mean"] for t in trees]
    assert agg["per_question"]["ib_score"]["mean"] == pytest.approx(sum(per_q) / 2)
    assert agg["per_question"]["ib_score"]["se"] == pytest.approx(abs(per_q[0] - per_q[1]) / 2)
    assert s["p_hat"]["root"]["zero"] == 1 and s["p_hat"]["root"]["n"] == 2
    assert s["p_hat"]["inner_nodes"]["n"] == 2  # the branching child of each root; leaves are not inner nodes
    json.dumps(s, allow_nan=False)  # strict JSON: no NaN anywhere


def test_histogram_and_metrics_leave_out_missing_readings():
    h = p_hat_histogram([0.0, 0.0, 0.25, 1.0])
    assert sum(h["counts"]) == 4 and h["zero"] == 2 and h["one"] == 1 and h["counts"][-1] == 1
    chain = Tree(question_id="c", prompt_ids=[1])
    chain.root.add_child([5], [0.0], [0.0]).reward = 1.0
    compute_p_hat(chain.root)
    m = probe_metrics([chain], IB)
    assert "probe/ib/score_mean" not in m and m["probe/reward_mean"] == 1.0  # no branching node: no made-up IB
    assert summarize([chain], IB)["aggregate"]["ib_score"] is None


def test_grow_probe_is_deterministic_and_leaves_global_rng_alone(tiny_model, tokenizer):
    problems = list(SumTask(test_size=6).test_problems)
    spec = RolloutSpec("ib", TreeShape(b0=2, rounds=3), SamplingParams(max_new_tokens=10), StepSplitter(tokenizer),
                       options=BranchingOptions(min_room=2))
    args = (spec, tiny_model, tokenizer, problems, parity_reward)
    seen = []
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = grow_probe(*args, seed=7, batch_questions=4, on_batch=seen.append)
    assert torch.equal(torch.get_rng_state(), state)
    b = grow_probe(*args, seed=7, batch_questions=6)
    c = grow_probe(*args, seed=8, batch_questions=6)
    assert seen == [4, 2] and len(a) == 6 and all(len(t.leaves()) == 2 + 2 for t in a)

    def leaves(ts):
        return [[Tree.completion(x)[0] for x in t.leaves()] for t in ts]

    assert leaves(b) == leaves(grow_probe(*args, seed=7, batch_questions=6))
    assert leaves(b) != leaves(c)
