"""The standard deviation of a group of rewards, written once: every reward std of the package calls
:func:`group_std`.

Convention: **unbiased** (``ddof=1``, Bessel's correction: the squared deviations are divided by n - 1), as GRPO's
group std in TRL and verl and ``torch.std``. ``ddof=0`` is the population std (divided by n); only IIB-LPO's
self-reward asks for it, explicitly (``methods.iib_lpo.core.group_zscore``). A group of **one** value has std 0
under either convention (no spread; not the NaN that n - 1 = 0 would give), and so has an empty group.

Three forms, each with the arithmetic its callers always had (so their numbers are bit-for-bit unchanged):

- floats (a list) -> float: two passes, mean = sum / n (or the caller's own ``mean``), then
  sqrt(sum of squared deviations / (n - ddof)): a tree's leaf rewards, a batch's ``reward/std``;
- a tensor (n,) without ``group_ids`` -> 0-dim tensor: ``torch.std`` with ``correction=ddof``: GRPO's batch std,
  IIB-LPO's per-group std;
- a tensor (bs,) with ``group_ids`` (bs,) -> (bs,): every row gets its group's std, from per-group sums
  (``index_add_``; two passes): GRPO's and TreePO's group std.
"""

from __future__ import annotations

from typing import Sequence

import torch

UNBIASED = 1
"""``ddof`` of the package's reward std (n - 1 in the denominator)."""
POPULATION = 0
"""``ddof`` of a population std (n in the denominator)."""


def group_std(values: Sequence[float] | torch.Tensor, group_ids: torch.Tensor | None = None, *,
              ddof: int = UNBIASED, mean=None):
    """Std of `values` (unbiased by default; one value: 0), in one of the three forms of the module docstring.

    `mean`: the values' mean if the caller already has it (its own arithmetic is kept; per row, (bs,), in the grouped
    form). `ddof`: ``UNBIASED`` (1) or ``POPULATION`` (0).
    """
    if ddof not in (UNBIASED, POPULATION):
        raise ValueError(f"ddof must be 1 (unbiased) or 0 (population); got {ddof!r}")
    if isinstance(values, torch.Tensor):
        if group_ids is None:
            return values.std(correction=ddof) if values.numel() > 1 else torch.zeros((), dtype=values.dtype)
        return _grouped(values, group_ids, ddof, mean)
    if group_ids is not None:
        raise TypeError("group_ids need a tensor of values")
    n = len(values)
    if n <= 1:
        return 0.0
    mu = sum(values) / n if mean is None else mean
    return (sum((v - mu) ** 2 for v in values) / (n - ddof)) ** 0.5


def _grouped(values: torch.Tensor, group_ids: torch.Tensor, ddof: int, mean: torch.Tensor | None) -> torch.Tensor:
    """(bs,) std of each row's group; groups of one get 0."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    ngroups = counts.numel()
    if mean is None:
        mean = (torch.zeros(ngroups, dtype=values.dtype).index_add_(0, inverse, values) / counts)[inverse]
    sq = torch.zeros(ngroups, dtype=values.dtype).index_add_(0, inverse, (values - mean) ** 2)
    std = torch.where(counts > 1, (sq / (counts - ddof).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return std[inverse]
