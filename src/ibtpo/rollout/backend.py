"""The rollout-backend boundary: what samplers need from whatever decodes their requests.

Samplers (``rollout.samplers`` and the methods' own, ``ibtpo.methods``) build :class:`~ibtpo.rollout.engine.Request`
s, hand them to a backend's :meth:`RolloutBackend.expand`, hang the returned continuations in their trees and tell
the backend about every change of the trees' node structure, so that a backend may keep per-node state (cached
keys/values) without the samplers knowing how:

    adopt(node, cont, begin, end)   node took tokens [begin, end) of continuation `cont`
    split(head, tail, at)           `head` was cut after `at` tokens (after ``Node.split``), `tail` holds the rest
    release()                       the growth is over: drop all per-node state

Two backends implement it:
    eager    ``rollout.engine.Engine``: a transformers forward with a ``DynamicCache`` per round (the CPU default and
             the reference every other backend is tested against).
    static   ``rollout.static_backend.StaticBackend``: preallocated KV slots, continuous batching, CUDA graphs on a
             GPU (the default on CUDA).

:func:`make_backend` picks one by name (``auto`` = static on CUDA when the model is supported, eager otherwise).
"""

from __future__ import annotations

import weakref
from typing import Protocol, runtime_checkable

import torch

from ibtpo.rollout.sampling import Generation, SamplingParams
from ibtpo.tree import Node

BACKEND_NAMES = ("auto", "eager", "static")


@runtime_checkable
class RolloutBackend(Protocol):
    """Decodes requests for the samplers and keeps whatever per-node state it needs (see the module docstring)."""

    model: torch.nn.Module
    """The policy (samplers read it, e.g. for hidden states of prefixes)."""
    pad_id: int
    prefix_reuse: bool
    """Continue forks from cached prefixes (False: every request re-encodes its prompt + path)."""
    keep_kv: bool
    """Keep per-node caches for later forks during this growth (samplers switch it off when nothing will fork)."""

    def expand(self, requests: list) -> list[list[Generation]]:
        """n continuations per request (``engine.Request``), rewards not set, in request order."""
        ...

    def adopt(self, node: Node, cont: Generation, begin: int, end: int) -> None:
        """`node` (just added to a tree) holds tokens [begin, end) of `cont`, a continuation this backend returned."""
        ...

    def split(self, head: Node, tail: Node, at: int) -> None:
        """`head` was cut after `at` tokens; `tail` is its new single child holding the rest."""
        ...

    def release(self) -> None:
        """End of a growth: free every per-node cache."""
        ...


def resolve_backend_name(name: str, model) -> str:
    """'auto' -> 'static' on a CUDA model of a supported architecture, else 'eager'; other names pass through."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"rollout backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    if name != "auto":
        return name
    from ibtpo.rollout.static_forward import supports

    device = next(model.parameters()).device
    return "static" if device.type == "cuda" and supports(model) is None else "eager"


_STATIC: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""One static backend per model (and eos / pad ids), reused across growths so that its slot buffers and CUDA graphs
are allocated and captured once per run, not once per rollout."""


def make_backend(name: str, model, params: SamplingParams, eos_id: int, pad_id: int,
                 generator: torch.Generator | None = None, prefix_reuse: bool = True,
                 slots_gib: float = 0.0, max_rows: int = 0, reuse: bool = True) -> RolloutBackend:
    """Build the named backend ('auto', 'eager' or 'static'); slots_gib / max_rows size the static slots.

    reuse: hand back the model's previous static backend (same eos / pad ids and row cap), reset to these settings;
    it keeps the slot buffers it grew to (bounded by the budget) between growths. ``StaticBackend.free`` drops them.
    """
    name = resolve_backend_name(name, model)
    if name == "eager":
        from ibtpo.rollout.engine import Engine

        return Engine(model, params, eos_id, pad_id, generator, prefix_reuse=prefix_reuse)
    from ibtpo.rollout.static_backend import StaticBackend

    old = _STATIC.get(model) if reuse else None
    if old is not None and (old.eos_id, old.pad_id, old.max_rows) == (eos_id, pad_id, max_rows):
        return old.reset(params, generator, prefix_reuse, slots_gib)
    backend = StaticBackend(model, params, eos_id, pad_id, generator, prefix_reuse=prefix_reuse,
                            slots_gib=slots_gib, max_rows=max_rows)
    if reuse:
        _STATIC[model] = backend
    return backend


def release_static(model) -> bool:
    """Free the slot buffers and graphs of `model`'s cached static backend (e.g. before a memory-hungry update);
    the next static growth allocates and captures again. True if there was one."""
    backend = _STATIC.pop(model, None)
    if backend is None:
        return False
    backend.free()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


def sample(model, prompts: list[list[int]], params: SamplingParams, eos_id: int, pad_id: int,
           generator: torch.Generator | None = None, n: int = 1, backend: str = "auto",
           slots_gib: float = 0.0) -> list[list[Generation]]:
    """``engine.sample`` through the named backend: `n` continuations of each prompt (token-id lists)."""
    from ibtpo.rollout.engine import Request
    from ibtpo.tree import Tree

    engine = make_backend(backend, model, params, eos_id, pad_id, generator, prefix_reuse=False,
                          slots_gib=slots_gib)
    engine.keep_kv = False
    trees = [Tree(question_id=str(i), prompt_ids=list(p)) for i, p in enumerate(prompts)]
    try:
        return engine.expand([Request(t, t.root, n, params.max_new_tokens) for t in trees])
    finally:
        engine.release()
