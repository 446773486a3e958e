import pytest

from ibtpo.evaluation.heldout import majority_correct, pass_at_k


def test_pass_at_k_hand_computed():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong samples
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote():
    assert majority_correct(["5", "5", "6"], [True, True, False])
    assert not majority_correct(["6", "6", "5"], [False, False, True])
    assert not majority_correct([None, None], [False, False])
