import math

import pytest
import torch

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
