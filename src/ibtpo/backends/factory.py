"""Picking a rollout backend by name, and one-shot sampling through it.

Samplers (``rollout.samplers`` and the methods' own) build :class:`~ibtpo.backends.contract.Request` s and call only
the four methods of :class:`~ibtpo.backends.contract.RolloutBackend` (the contract). Two backends implement it:
    eager    ``backends.eager.Engine``: a transformers forward with a ``DynamicCache`` per round (the CPU default and
             the reference every other backend is tested against).
    static   ``backends.static.StaticBackend``: preallocated KV slots, continuous batching, CUDA graphs on a GPU
             (the default on CUDA).

:func:`make_backend` picks one by name (``auto`` = static on CUDA when the model is supported, eager otherwise);
:func:`sample` draws continuations of plain prompts through it (evaluation, benchmarks).
"""

from __future__ import annotations

import weakref

import torch

from ibtpo.backends.contract import Request, RolloutBackend  # noqa: F401  (re-exported: the factory's product)
from ibtpo.core.sampling import Generation, SamplingParams

BACKEND_NAMES = ("auto", "eager", "static")


def resolve_backend_name(name: str, model) -> str:
    """'auto' -> 'static' on a CUDA model of a supported architecture, else 'eager'; other names pass through."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"rollout backend must be one of {', '.join(BACKEND_NAMES)}; got {name!r}")
    if name != "auto":
        return name
    from ibtpo.backends.static_forward import supports

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
        from ibtpo.backends.eager import Engine

        return Engine(model, params, eos_id, pad_id, generator, prefix_reuse=prefix_reuse)
    from ibtpo.backends.static import StaticBackend

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
    """Draw `n` continuations of at most ``params.max_new_tokens`` for each prompt (token-id lists, no padding;
    each prompt encoded once) through the named backend; one list of `n` generations per prompt."""
    from ibtpo.core.tree import Tree

    engine = make_backend(backend, model, params, eos_id, pad_id, generator, prefix_reuse=False,
                          slots_gib=slots_gib)
    engine.keep_kv = False
    trees = [Tree(question_id=str(i), prompt_ids=list(p)) for i, p in enumerate(prompts)]
    try:
        return engine.expand([Request(t, t.root, n, params.max_new_tokens) for t in trees])
    finally:
        engine.release()
