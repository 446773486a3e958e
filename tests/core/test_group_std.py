"""The one reward-std helper: its conventions (unbiased by default, population on request, 0 for one value) and,
for each of its forms, bit-equality with the arithmetic the call sites had before they shared it."""

import math
import random
import statistics

import pytest
import torch

from ibtpo.core.group_std import POPULATION, UNBIASED, group_std


def _floats(n, seed=0):
    rng = random.Random(seed)
    return [rng.choice([0.0, 1.0, 0.1, 1.1, rng.random()]) for _ in range(n)]


def test_conventions():
    xs = [1.0, 0.0, 0.0, 1.0, 1.0]
    assert group_std(xs) == pytest.approx(statistics.stdev(xs), rel=1e-15)
    assert group_std(xs, ddof=UNBIASED) == group_std(xs)
    assert group_std(xs, ddof=POPULATION) == pytest.approx(statistics.pstdev(xs), rel=1e-15)
    t = torch.tensor(xs, dtype=torch.float64)
    assert float(group_std(t)) == pytest.approx(statistics.stdev(xs), rel=1e-12)
    assert float(group_std(t, ddof=POPULATION)) == pytest.approx(statistics.pstdev(xs), rel=1e-12)


def test_one_value_has_std_zero_in_every_form():
    for ddof in (UNBIASED, POPULATION):
        assert group_std([0.7], ddof=ddof) == 0.0
        assert group_std([], ddof=ddof) == 0.0
        assert float(group_std(torch.tensor([0.7]), ddof=ddof)) == 0.0  # torch.std alone: NaN for ddof=1
        rows = group_std(torch.tensor([0.7, 1.0, 0.0]), torch.tensor([0, 1, 1]), ddof=ddof)
        assert rows[0].item() == 0.0 and rows[1].item() == rows[2].item() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="ddof"):
        group_std([1.0, 2.0], ddof=2)
    with pytest.raises(TypeError, match="tensor"):
        group_std([1.0, 2.0], torch.tensor([0, 0]))


@pytest.mark.parametrize("n", [2, 3, 12, 50])
def test_float_form_is_the_old_tree_and_batch_arithmetic(n):
    xs = _floats(n, n)
    mu = sum(xs) / len(xs)  # the training batch's tree std
    assert group_std(xs) == (sum((r - mu) ** 2 for r in xs) / (len(xs) - 1)) ** 0.5
    mu = statistics.mean(xs)  # the rollout metrics' reward/std, with their own mean
    assert group_std(xs, mean=mu) == (sum((r - mu) ** 2 for r in xs) / max(1, len(xs) - 1)) ** 0.5


@pytest.mark.parametrize("seed", range(5))
def test_tensor_forms_are_the_old_torch_arithmetic(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(37, generator=gen) * torch.randint(0, 3, (37,), generator=gen)
    groups = torch.randint(0, 6, (37,), generator=gen)
    assert torch.equal(group_std(values), values.std())  # GRPO's batch std
    for g in torch.unique(groups):  # IIB-LPO's per-group population std
        v = values[groups == g]
        old = v.std(unbiased=False) if v.numel() > 1 else torch.tensor(0.0)
        assert torch.equal(group_std(v, ddof=POPULATION), old)
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)  # the old group_stats
    means = torch.zeros(counts.numel()).index_add_(0, inverse, values) / counts
    sq = torch.zeros(counts.numel()).index_add_(0, inverse, (values - means[inverse]) ** 2)
    old = torch.where(counts > 1, (sq / (counts - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))[inverse]
    assert torch.equal(group_std(values, groups), old)
    assert torch.equal(group_std(values, groups, mean=means[inverse]), old)
    for g in torch.unique(groups):  # each row holds its group's unbiased std
        v = values[groups == g]
        want = v.std().item() if v.numel() > 1 else 0.0
        assert group_std(values, groups)[groups == g][0].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert not math.isnan(float(group_std(values[:1])))
