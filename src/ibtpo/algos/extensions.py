"""Trainer extensions: the hooks through which a method adds to the generic trainer without editing it.

A method that needs more than a sampler, an estimator and a loss (IIB-LPO: a latent code per branch, an auxiliary
CVAE, a trajectory filter, a self-reward) registers a factory in ``TRAINER_EXTENSIONS``. Every run calls every
factory with the trainer being built (its config, policy, tokenizer, rewards, device and generator are set; the
optimizer is not); a factory returns a :class:`TrainerExtension` when the run uses it, else None.

Hooks, in the order of a step (each has a do-nothing default):

=======================  =======================================================================================
``parameters``           extra trainable tensors, optimised with the policy (added before the optimizer is built)
``grow_extras``          what the method's sampler reads (``GrowContext.extras``)
``after_rollout``        after the trees are rewarded: fit auxiliary models, mark leaves ``info["dropped"]``; metrics
``rows_per_question``    training rows per question once leaves are dropped (sets the LR schedule's step count)
``row_extras``           per-row tensors for the training batch (``TrainBatch.extras``)
``adjust_advantages``    change the estimator's advantages (e.g. add a bonus after the group normalisation)
``forward_kwargs``       extra ``token_logprobs`` keywords for some rows of the policy's forward passes
``state_dict``           state for checkpoints (under ``state_key``), restored by ``load_state_dict``
``packed_blocker``       why the run cannot use the packed training layout ("" = it can; ``training.packed``)
=======================  =======================================================================================
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ibtpo.core.registry import Registry
from ibtpo.core.tree import Node, Tree


class TrainerExtension:
    """Base class of an extension: every hook does nothing."""

    state_key = ""
    """Key of this extension's state in a checkpoint ("" = it keeps none)."""

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def grow_extras(self) -> dict[str, Any]:
        return {}

    def after_rollout(self, trees: list[Tree]) -> dict[str, float]:
        return {}

    def rows_per_question(self, group_size: int) -> int:
        return group_size

    def row_extras(self, rows: list[tuple[int, list[Node]]]) -> dict[str, torch.Tensor]:
        """rows: (prompt length, leaf lineage) of each training row -> tensors with one row each."""
        return {}

    def adjust_advantages(self, batch, advantages: torch.Tensor) -> torch.Tensor:
        return advantages

    def forward_kwargs(self, batch, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def packed_blocker(self) -> str:
        """Why the packed layout cannot reproduce this extension's forward passes ("" = it can). The packed layout
        computes each shared token once, so per-path forward inputs (``forward_kwargs``) need the flattened rows."""
        return ""

    def load_state_dict(self, state: dict) -> None:
        pass


ExtensionFactory = Callable[[Any], "TrainerExtension | None"]
TRAINER_EXTENSIONS: Registry[ExtensionFactory] = Registry("trainer extension")
register_extension = TRAINER_EXTENSIONS.register
"""``@register_extension("name")`` on a factory ``trainer -> TrainerExtension | None``."""


def build_extensions(trainer) -> list[TrainerExtension]:
    """The extensions the run being built uses (registration order is by name, so it is fixed)."""
    out = []
    for _, factory in TRAINER_EXTENSIONS.items():
        ext = factory(trainer)
        if ext is not None:
            out.append(ext)
    return out
