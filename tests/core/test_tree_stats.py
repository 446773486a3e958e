"""The node statistics written once for the float and tensor paths: both give the same numbers, and IB-TPO's local
advantage A_IB of the children of a node is exactly the per-step term of that node's IB-Score."""

import math
import random

import pytest
import torch

from ibtpo.core.tree_stats import CONF_MODES, ib_term, info_gain, step_confidence


@pytest.mark.parametrize("mode", CONF_MODES)
def test_float_and_tensor_paths_agree(mode):
    rng = random.Random(0)
    lengths = [rng.randint(0, 6) for _ in range(50)]
    logp = [(-rng.random() * 5 if n else 0.0, n) for n in lengths]  # an empty step has no log-prob
    p = [(rng.choice([0.0, 0.25, 0.5, 1.0]), rng.choice([0.0, 0.5, 0.75, 1.0])) for _ in range(50)]
    s, n = (torch.tensor(col, dtype=torch.float64) for col in zip(*logp))
    conf_t = step_confidence(s, n, mode)
    gain_t = info_gain(*(torch.tensor(col, dtype=torch.float64) for col in zip(*p)))
    for i, ((ls, ln), (pc, pp)) in enumerate(zip(logp, p)):
        assert conf_t[i].item() == pytest.approx(step_confidence(ls, ln, mode), rel=1e-12)
        assert gain_t[i].item() == pytest.approx(info_gain(pc, pp), rel=1e-12)
        assert ib_term(conf_t[i], gain_t[i], 5.0).item() == pytest.approx(
            ib_term(step_confidence(ls, ln, mode), info_gain(pc, pp), 5.0), rel=1e-12)


def test_edge_cases():
    assert step_confidence(0.0, 0, "mean") == 1.0  # an empty step
    assert info_gain(0.0, 0.0) == 1.0  # no information when the parent has p_hat 0
    assert info_gain(torch.tensor([0.0]), torch.tensor([0.0])).item() == 1.0
    assert step_confidence(math.log(0.5) * 3, 3, "mean") == pytest.approx(0.5)
    assert step_confidence(math.log(0.5) * 3, 3, "product") == pytest.approx(0.125)
    with pytest.raises(ValueError, match="mean or product"):
        step_confidence(0.0, 1, "median")


def test_a_ib_of_the_children_is_the_ib_score_term():
    """(1 + beta) * mean over children of A_IB(child) = IB(node), with the batch tensors of the estimator."""
    from ibtpo.methods.ib_tpo import ib_score
    from ibtpo.training.batch import node_stats
    from ibtpo.core.tree import Tree, compute_p_hat

    t = Tree(question_id="q", prompt_ids=[1])
    a = t.root.add_child([5, 6], [math.log(0.9)] * 2, [0, 0])
    for r, lp in ((1.0, 0.8), (0.0, 0.3), (1.0, 0.6)):
        leaf = a.add_child([7], [math.log(lp)], [0])
        leaf.reward = r
    other = t.root.add_child([8], [math.log(0.4)], [0])
    other.reward = 0.0
    compute_p_hat(t.root)
    nodes, stats = node_stats([t])
    beta = 5.0
    a_ib = ib_term(stats.confidence("mean"), info_gain(stats.p_hat, stats.parent_p_hat), beta)
    children = [i for i, n in enumerate(nodes) if n.parent is a]
    assert (1 + beta) * a_ib[children].mean().item() == pytest.approx(ib_score(a, beta, "mean"), rel=1e-6)
