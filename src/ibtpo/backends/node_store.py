"""Per-node key/value caches of the trees being grown, under a byte budget: the part both rollout backends share.

A shared prefix is stored once, on the nodes of its path (the prompt's on the root). What a cached value is differs by
backend (a list of per-layer (keys, values) in the eager engine, one (layers, 2, heads, tokens, dim) tensor in the
static backend); subclasses say how to measure, cut and join one.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from ibtpo.core.tree import Node, Tree

V = TypeVar("V")


class NodeStore(Generic[V]):
    """Cached keys/values per tree node. budget_bytes > 0 bounds what is kept: a value that would exceed it is not
    stored, and a later fork below it re-encodes its prefix instead (same tokens, more compute). ``peak_bytes``
    records the most held at once, ``refused`` the values not kept."""

    def __init__(self, budget_bytes: int = 0):
        self._kv: dict[int, V] = {}
        self.budget = budget_bytes
        self.bytes = 0
        self.peak_bytes = 0
        self.refused = 0

    # what a value is: subclasses
    def nbytes(self, value: V) -> int:
        raise NotImplementedError

    def tokens(self, value: V) -> int:
        raise NotImplementedError

    def cut(self, value: V, start: int, stop: int | None = None) -> V:
        """Tokens [start, stop) of a value (a view where possible)."""
        raise NotImplementedError

    def join(self, first: V, second: V) -> V:
        raise NotImplementedError

    # bookkeeping
    def has_room(self, nbytes: int = 0) -> bool:
        return not self.budget or self.bytes + nbytes <= self.budget

    def put(self, node: Node, value: V) -> None:
        old = self._kv.pop(id(node), None)
        if old is not None:
            self.bytes -= self.nbytes(old)
        size = self.nbytes(value)
        if not self.has_room(size):
            self.refused += 1
            return
        self._kv[id(node)] = value
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    def length(self, node: Node) -> int:
        value = self._kv.get(id(node))
        return 0 if value is None else self.tokens(value)

    def split(self, head: Node, tail: Node, at: int) -> None:
        """`head` was cut after `at` tokens (:meth:`Node.split`); its value is cut the same way (views: the byte
        count is unchanged)."""
        value = self._kv.get(id(head))
        if value is None:
            return
        self._kv[id(head)] = self.cut(value, 0, at)
        if self.tokens(value) > at:
            self._kv[id(tail)] = self.cut(value, at)

    def complete(self, node: Node, want: int, last: V) -> None:
        """Append `last` (one token) to `node`'s value when it holds `want` - 1 tokens (the row stopped right after
        drawing its last token, which was never fed)."""
        value = self._kv.get(id(node))
        if value is not None and self.tokens(value) == want - 1:
            self.put(node, self.join(value, last))

    def lineage(self, tree: Tree, node: Node) -> list[V] | None:
        """The values of the root and of every node down to `node`, in order, each complete except possibly the last
        one's final token; None when a piece is missing. The caller crops to prompt + path minus the last token."""
        pieces = [tree.root] + node.lineage()
        out = []
        for i, n in enumerate(pieces):
            want = len(tree.prompt_ids) if n is tree.root else len(n.token_ids)
            have = self.length(n)
            if have != want and not (i == len(pieces) - 1 and have == want - 1):
                return None
            if have:
                out.append(self._kv[id(n)])
        return out

    def clear(self) -> None:
        self._kv.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._kv)
