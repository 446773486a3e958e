"""The rollout-backend contract: what samplers hand a backend (:class:`Request`) and what they call on it
(:class:`RolloutBackend`), so that a backend may keep per-node state (cached keys/values) without the samplers knowing
how:

    expand(requests)                n continuations per request, rewards not set
    adopt(node, cont, begin, end)   node took tokens [begin, end) of continuation `cont`
    split(head, tail, at)           `head` was cut after `at` tokens (after ``Node.split``), `tail` holds the rest
    release()                       the growth is over: drop all per-node state

Implementations: ``backends.eager`` (the reference) and ``backends.static``; ``backends.factory`` picks one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ibtpo.core.sampling import Generation
from ibtpo.core.tree import Node, Tree


@dataclass
class Request:
    """Continue `tree` after `node` (the root = from the prompt): `n` continuations of at most `limit` tokens."""

    tree: Tree
    node: Node
    n: int
    limit: int
    embed_offset: torch.Tensor | None = None
    """(n, hidden): added to the input embeddings from the last prefix token on, one row per continuation."""


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
        """n continuations per request (:class:`Request`), rewards not set, in request order."""
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
