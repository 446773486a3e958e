"""How a run draws trajectories, as one object: the rollout spec.

Built once from a run config (``config.components.rollout_spec``; the IB probe's with sampler ``ib``, evaluation's
with ``eval_spec``) and taken by tree growth (``rollout.grow.grow_problem_trees``), the IB probe
(``evaluation.probe.grow_probe``) and held-out evaluation (``evaluation.heldout.evaluate``), so none of them takes
the sampler, shape, sampling parameters, splitter, backend and memory budget one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.rollout.samplers import TreeShape


@dataclass(frozen=True)
class RolloutSpec:
    """Everything about drawing trajectories except the policy, the questions and the random streams."""

    sampler: str
    """The registered sampler that grows the trees (``rollout.samplers``)."""
    shape: TreeShape
    """Its tree shape: G trajectories per question (evaluation: G independent samples)."""
    sampling: SamplingParams
    """How tokens are drawn, the completion cap, the row and KV-cache limits."""
    splitter: StepSplitter | None = None
    """Where completions split into step nodes (None: the default blank-line delimiter of the tokenizer)."""
    options: Any = None
    """The sampler's own options (``samplers.sampler_options``; None: the defaults of its options class)."""
    backend: str = "auto"
    """The rollout backend: 'auto', 'eager' or 'static' (``backends.factory``)."""
    slots_gib: float = 0.0
    """KV slot budget of the static backend in GiB (0 = auto)."""
    prefix_reuse: bool = True
    """Continue forks from cached prefixes instead of re-encoding them."""

    @classmethod
    def independent(cls, k: int, sampling: SamplingParams, backend: str = "auto",
                    slots_gib: float = 0.0) -> RolloutSpec:
        """k independent samples per question (what evaluation draws)."""
        return cls("independent", TreeShape(b0=k, rounds=1), sampling, backend=backend, slots_gib=slots_gib)
