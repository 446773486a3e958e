"""IIB-LPO's pure pieces (algos/iib.py) on hand-made inputs with exact expected outputs."""

import math
import random

import pytest
import torch

from ibtpo.methods.iib_lpo.core import draw_fork_positions, fork_candidates, group_zscore, ib_trajectory_score, keep_top_n

# ---------------------------------------------------------------------------------------------------------------------
# fork_candidates


def test_fork_candidates_top_share_by_entropy_highest_first():
    ents = [9.0, 0.1, 0.5, 0.3, 0.9, 0.2, 0.8, 0.4, 0.7, 0.6]  # n = 10; position 0 (top entropy) is no candidate
    assert fork_candidates(ents, 0.3, 9) == [4, 6, 8]  # ceil(0.3 * 10) = 3
    assert fork_candidates(ents, 0.25, 9) == [4, 6, 8]  # ceil(2.5) = 3, not 2
    assert fork_candidates(ents, 0.2, 9) == [4, 6]
    assert fork_candidates(ents, 1.0, 9) == [4, 6, 8, 9, 2, 7, 3, 5, 1]  # every position but 0, best first


def test_fork_candidates_never_position_zero():
    ents = [5.0, 1.0, 2.0, 3.0]
    for frac in (0.01, 0.5, 1.0):
        assert 0 not in fork_candidates(ents, frac, 3)
    assert fork_candidates(ents, 1.0, 3) == [3, 2, 1]


def test_fork_candidates_respect_last_position():
    ents = [0.0, 0.1, 0.2, 0.3, 5.0, 4.0, 3.0]
    assert fork_candidates(ents, 1.0, 3) == [3, 2, 1]  # the high-entropy tail (4, 5, 6) has no room
    assert fork_candidates(ents, 0.3, 5) == [4, 5, 3]  # ceil(0.3 * 7) = 3 among 1..5
    assert fork_candidates(ents, 1.0, 100) == [4, 5, 6, 3, 2, 1]  # last_position beyond the rollout: up to n - 1


def test_fork_candidates_ties_go_to_the_earlier_position():
    ents = [1.0, 2.0, 2.0, 1.0, 2.0, 2.0]
    assert fork_candidates(ents, 0.5, 5) == [1, 2, 4]
    assert fork_candidates(ents, 1.0, 5) == [1, 2, 4, 5, 3]
    assert fork_candidates([0.0] * 8, 0.25, 7) == [1, 2]


def test_fork_candidates_at_least_one_for_a_tiny_share():
    ents = [0.0, 0.3, 0.9, 0.1]
    assert fork_candidates(ents, 1e-9, 3) == [2]


@pytest.mark.parametrize("ents,last", [([1.0, 2.0, 3.0], 0), ([1.0, 2.0, 3.0], -4), ([7.0], 10), ([], 10)])
def test_fork_candidates_empty_when_no_room(ents, last):
    assert fork_candidates(ents, 1.0, last) == []


def test_fork_candidates_two_token_rollout_has_one_candidate():
    assert fork_candidates([3.0, 1.0], 0.05, 1) == [1]


# ---------------------------------------------------------------------------------------------------------------------
# draw_fork_positions


def test_draw_fork_positions_in_candidates_and_deterministic():
    cands = [4, 9, 2]
    draws = draw_fork_positions(cands, 50, random.Random(7))
    assert len(draws) == 50 and set(draws) <= set(cands)
    assert len(set(draws)) == 3  # with replacement, uniform: 50 draws hit every one of 3 candidates
    assert draws == draw_fork_positions(cands, 50, random.Random(7))
    assert draws != draw_fork_positions(cands, 50, random.Random(8))
    ref = random.Random(3)
    assert draw_fork_positions(cands, 5, random.Random(3)) == [ref.choice(cands) for _ in range(5)]


def test_draw_fork_positions_edge_cases():
    assert draw_fork_positions([], 3, random.Random(0)) == []
    assert draw_fork_positions([5], 3, random.Random(0)) == [5, 5, 5]
    assert draw_fork_positions([5, 6], 0, random.Random(0)) == []


# ---------------------------------------------------------------------------------------------------------------------
# ib_trajectory_score


def test_ib_trajectory_score_exact_values():
    gain = torch.tensor([2.0, 2.0, -1.0, 0.5])
    info = torch.tensor([10.0, 4.0, 0.0, -2.0])
    torch.testing.assert_close(ib_trajectory_score(gain, info, 0.1), torch.tensor([1.0, 1.6, -1.0, 0.7]))
    torch.testing.assert_close(ib_trajectory_score(gain, info, 0.0), gain)
    torch.testing.assert_close(ib_trajectory_score(gain, info, 1.0), torch.tensor([-8.0, -2.0, -1.0, 2.5]))


def test_ib_trajectory_score_ranking():
    # higher answer gain wins at equal question info
    s = ib_trajectory_score(torch.tensor([3.0, 1.0]), torch.tensor([5.0, 5.0]), 0.05)
    assert s[0] > s[1]
    # equal gains: the more compressed reasoning (lower I(q; r)) wins when beta > 0 ...
    s = ib_trajectory_score(torch.tensor([2.0, 2.0]), torch.tensor([8.0, 3.0]), 0.05)
    assert s[1] > s[0]
    assert float(s[1] - s[0]) == pytest.approx(0.05 * 5.0)
    # ... and it is a tie at beta = 0
    s = ib_trajectory_score(torch.tensor([2.0, 2.0]), torch.tensor([8.0, 3.0]), 0.0)
    assert float(s[0]) == float(s[1])


# ---------------------------------------------------------------------------------------------------------------------
# keep_top_n


def test_keep_top_n_per_group():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, -1.0, 1.5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert keep_top_n(scores, groups, 2).tolist() == [False, True, True, False, True, False, True]
    assert keep_top_n(scores, groups, 1).tolist() == [False, True, False, False, True, False, False]


def test_keep_top_n_interleaved_groups():
    scores = torch.tensor([1.0, 5.0, 2.0, 4.0, 3.0, 0.0])
    groups = torch.tensor([0, 1, 0, 1, 0, 1])
    assert keep_top_n(scores, groups, 2).tolist() == [False, True, True, True, True, False]


def test_keep_top_n_ties_go_to_the_earlier_row():
    scores = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0])
    groups = torch.zeros(5, dtype=torch.long)
    assert keep_top_n(scores, groups, 2).tolist() == [False, True, True, False, False]
    assert keep_top_n(torch.zeros(4), torch.zeros(4, dtype=torch.long), 3).tolist() == [True, True, True, False]


def test_keep_top_n_nan_ranks_last():
    scores = torch.tensor([float("nan"), -100.0, float("nan"), -5.0])
    groups = torch.zeros(4, dtype=torch.long)
    assert keep_top_n(scores, groups, 2).tolist() == [False, True, False, True]
    assert keep_top_n(scores, groups, 3).tolist() == [True, True, False, True]  # NaN ties: the earlier one
    assert keep_top_n(torch.tensor([float("nan"), -math.inf]), torch.zeros(2, dtype=torch.long), 1).tolist() == \
        [False, True]  # NaN ranks last, even after -inf


def test_keep_top_n_small_groups_and_nonpositive_n():
    scores = torch.tensor([0.3, 0.2, 0.1, 0.9])
    groups = torch.tensor([0, 0, 0, 1])
    assert keep_top_n(scores, groups, 2).tolist() == [True, True, False, True]  # group 1 has one member: kept
    assert keep_top_n(scores, groups, 5).tolist() == [True] * 4
    assert keep_top_n(scores, groups, 0).tolist() == [True] * 4
    assert keep_top_n(scores, groups, -1).tolist() == [True] * 4
    assert keep_top_n(scores, groups, 1).dtype == torch.bool


# ---------------------------------------------------------------------------------------------------------------------
# group_zscore


def test_group_zscore_standardises_within_groups():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 30.0, 5.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 0])
    z = group_zscore(values, groups)
    for g in (0, 1):
        zg = z[groups == g]
        assert float(zg.mean()) == pytest.approx(0.0, abs=1e-6)
        assert float(zg.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    # group 0: values 1, 2, 3, 5 (mean 2.75, population std sqrt(2.1875))
    sd = math.sqrt(2.1875)
    torch.testing.assert_close(z[groups == 0], torch.tensor([(1 - 2.75) / sd, (2 - 2.75) / sd, (3 - 2.75) / sd,
                                                             (5 - 2.75) / sd]))
    sd1 = math.sqrt(((10 - 50 / 3) ** 2 * 2 + (30 - 50 / 3) ** 2) / 3)
    torch.testing.assert_close(z[3], torch.tensor((10 - 50 / 3) / sd1))


def test_group_zscore_constant_and_singleton_groups_give_zero():
    values = torch.tensor([4.0, 4.0, 4.0, 7.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    z = group_zscore(values, groups)
    assert z[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert z[4:].tolist() == pytest.approx([-1.0, 1.0])
    assert z.dtype == torch.float


def test_group_zscore_accepts_integer_values():
    z = group_zscore(torch.tensor([0, 2]), torch.tensor([3, 3]))
    assert z.tolist() == pytest.approx([-1.0, 1.0])
