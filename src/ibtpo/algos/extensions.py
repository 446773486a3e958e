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

from ibtpo.core.guard import ComponentError, call, check_signature, check_tensor, describe, guarded, label
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
    """The extensions the run being built uses (registration order is by name, so it is fixed), each wrapped in a
    :class:`GuardedExtension` (``ibtpo.core.guard``: errors and wrong return values name the extension)."""
    out = []
    timeout = getattr(trainer.cfg, "component_timeout_s", 0.0)
    for name, factory in TRAINER_EXTENSIONS.items():
        who = label("trainer extension", name)
        check_signature(who, factory, (trainer,), hint="an extension factory is called as factory(trainer)")
        ext = call(who, factory, trainer)
        if ext is None:
            continue
        if not isinstance(ext, TrainerExtension):
            raise ComponentError(f"{who} factory returned {describe(ext)}; expected None or an instance of "
                                 f"ibtpo.TrainerExtension")
        out.append(GuardedExtension(ext, who, timeout))
    return out


def _dict(who: str, hook: str, value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ComponentError(f"{who}.{hook} returned {describe(value)}; expected a dict with str keys")
    return value


class GuardedExtension:
    """An extension whose hooks are called through ``core.guard.guarded`` and whose results are checked (types, row
    counts, shapes, finite advantages). Other attributes are the extension's own."""

    def __init__(self, ext: TrainerExtension, who: str, timeout_s: float = 0.0):
        object.__setattr__(self, "_ext", ext)
        object.__setattr__(self, "_who", who)
        object.__setattr__(self, "_timeout", timeout_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ext, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._ext, name, value)

    def _run(self, hook: str, *args: Any) -> Any:
        return guarded(f"{self._who}.{hook}", getattr(self._ext, hook), self._timeout, *args)

    def parameters(self) -> list[torch.nn.Parameter]:
        out = self._run("parameters")
        if not isinstance(out, (list, tuple)) or not all(isinstance(p, torch.Tensor) for p in out):
            raise ComponentError(f"{self._who}.parameters returned {describe(out)}; expected a list of tensors")
        return list(out)

    def grow_extras(self) -> dict[str, Any]:
        return _dict(self._who, "grow_extras", self._run("grow_extras"))

    def after_rollout(self, trees: list[Tree]) -> dict[str, float]:
        return _dict(self._who, "after_rollout", self._run("after_rollout", trees))

    def rows_per_question(self, group_size: int) -> int:
        out = self._run("rows_per_question", group_size)
        if not isinstance(out, int) or isinstance(out, bool) or out < 1:
            raise ComponentError(f"{self._who}.rows_per_question returned {describe(out)}; expected an int >= 1")
        return out

    def row_extras(self, rows: list[tuple[int, list[Node]]]) -> dict[str, torch.Tensor]:
        out = _dict(self._who, "row_extras", self._run("row_extras", rows))
        for k, v in out.items():
            if not isinstance(v, torch.Tensor) or v.dim() == 0 or v.shape[0] != len(rows):
                raise ComponentError(f"{self._who}.row_extras returned {k!r} as {describe(v)}; expected a tensor "
                                     f"with one row per training row ({len(rows)})")
        return out

    def adjust_advantages(self, batch, advantages: torch.Tensor) -> torch.Tensor:
        out = self._run("adjust_advantages", batch, advantages)
        return check_tensor(f"{self._who}.adjust_advantages", out, "advantages", shape=tuple(advantages.shape))

    def forward_kwargs(self, batch, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return _dict(self._who, "forward_kwargs", self._run("forward_kwargs", batch, rows, device))

    def state_dict(self) -> dict:
        return _dict(self._who, "state_dict", self._run("state_dict"))

    def load_state_dict(self, state: dict) -> None:
        self._run("load_state_dict", state)
