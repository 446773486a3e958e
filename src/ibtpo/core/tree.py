"""Rollouts as trees: the root is the prompt, every other node holds generated tokens, every leaf ends a trajectory.

A trajectory is a root-to-leaf path; its completion is the concatenation of the tokens of the nodes on the path.
Independent sampling (GRPO) is a tree of depth one: the root has G leaf children. Branching samplers hang several
children under a shared prefix node, so the prefix is generated (and counted) once.

Node ids are path strings (TreePO style): the root is "", its children "0", "1", ..., their children "0/0", "0/1"...

A grown, rewarded tree's statistics (p_hat, leaf counts, node values, the reward std, each leaf's lineage and
completion, methods' derived values such as the IB-Scores) are computed together, once, by
:meth:`Tree.statistics` and kept on the tree (:class:`TreeStats`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ibtpo.core.correct import is_correct
from ibtpo.core.group_std import group_std
from ibtpo.core.tree_stats import step_confidence


@dataclass(eq=False)
class Node:
    """A run of generated tokens sharing one parent prefix."""

    path: str
    """Path id ("" for the root, "0/2/1" for the second child of the third child of the first child)."""
    token_ids: list[int] = field(default_factory=list)
    """Generated tokens of this node (the root holds none; the prompt lives on the tree)."""
    logprobs: list[float] = field(default_factory=list)
    """Behaviour log-prob of each token."""
    entropies: list[float] = field(default_factory=list)
    """Entropy of the behaviour next-token distribution at each token."""
    parent: "Node | None" = field(default=None, repr=False)
    children: list["Node"] = field(default_factory=list, repr=False)
    reward: float | None = None
    """Outcome reward (leaves only)."""
    finished: bool = False
    """Leaves: True if the trajectory ended with EOS, False if it hit the length cap."""
    p_hat: float | None = None
    """Share of correct leaves under this node (set by :func:`compute_p_hat`)."""
    n_leaves: int = 0
    """Number of leaves under this node (set by :func:`compute_p_hat`)."""
    depth: int = 0
    """Nodes from the root (the root is 0)."""
    offset: int = 0
    """Completion tokens before this node (length of the path above it, prompt excluded)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Annotations of an algorithm, e.g. IIB-LPO's latent code ("z", on a branch's first node) and IB filter scores
    ("ib_score", "dropped", on leaves). Not moved by :meth:`split` (set after a tree has grown)."""
    text: str | None = None
    """Leaves: the trajectory's completion decoded with the rollout's tokenizer (special tokens skipped), set with the
    reward by ``rewards.scoring.reward_leaves``; None until then. Moved by :meth:`split` with the reward (the
    completion stays the same); only a leaf's is read."""
    revision: int = field(default_factory=int, init=False, repr=False)  # a factory: __init__ sets it, last
    """The root's: bumped by every change below it that :meth:`Tree.statistics` depends on (keys it): a child added,
    a node split, and assigning a node's tokens, log-probs, entropies, reward, children, parent, or (from outside
    :func:`compute_p_hat`) p_hat or n_leaves."""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _WATCHED and "revision" in self.__dict__:  # not while __init__ sets the fields (revision last)
            _changed(self)

    def add_child(self, token_ids: list[int], logprobs: list[float], entropies: list[float]) -> "Node":
        """Attach and return a new child holding the given tokens."""
        path = f"{self.path}/{len(self.children)}" if self.path else str(len(self.children))
        child = Node(path=path, token_ids=list(token_ids), logprobs=list(logprobs), entropies=list(entropies),
                     parent=self, depth=self.depth + 1, offset=self.end)
        self.children.append(child)
        _changed(self)
        return child

    @property
    def end(self) -> int:
        """Completion tokens up to and including this node."""
        return self.offset + len(self.token_ids)

    def split(self, at: int) -> "Node":
        """Cut this node after its first `at` tokens (0 < at < len); the rest moves to a new single child.

        Used by token-level forks (entropy rule). The tail keeps this node's children, reward and finished flag;
        path ids of the tail's subtree get a "/0" inserted. Returns the tail.
        """
        if not 0 < at < len(self.token_ids):
            raise ValueError(f"cannot split a node of {len(self.token_ids)} tokens at {at}")
        tail = Node(path="", token_ids=self.token_ids[at:], logprobs=self.logprobs[at:], entropies=self.entropies[at:],
                    parent=self, children=self.children, reward=self.reward, finished=self.finished,
                    text=self.text, depth=self.depth + 1, offset=self.offset + at)
        del self.token_ids[at:], self.logprobs[at:], self.entropies[at:]
        self.children, self.reward, self.finished, self.text = [tail], None, False, None
        for c in tail.children:
            c.parent = tail
        _renumber(self)
        _changed(self)
        return tail

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def iter_nodes(self) -> Iterator["Node"]:
        """This node and all its descendants, depth first."""
        yield self
        for c in self.children:
            yield from c.iter_nodes()

    def confidence(self, mode: str = "mean") -> float:
        """The policy's confidence in this step: exp(mean token log-prob) ("mean") or exp(sum) ("product")."""
        return step_confidence(sum(self.logprobs), len(self.logprobs), mode)

    def lineage(self) -> list["Node"]:
        """The non-root nodes from the root's child down to this node."""
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


_WATCHED = frozenset({"token_ids", "logprobs", "entropies", "reward", "children", "parent", "p_hat", "n_leaves"})
"""Node attributes whose assignment changes the tree's statistics (in-place edits of the lists are not seen)."""


def _changed(node: Node) -> None:
    """Record a structural change below `node` on its root (invalidates :meth:`Tree.statistics`)."""
    while node.parent is not None:
        node = node.parent
    node.revision += 1


def _renumber(node: Node) -> None:
    """Recompute path ids, depths and offsets below `node` (after a split)."""
    for i, c in enumerate(node.children):
        c.path = f"{node.path}/{i}" if node.path else str(i)
        c.depth, c.offset = node.depth + 1, node.end
        _renumber(c)


def compute_p_hat(root: Node) -> None:
    """Bottom-up: n_leaves and p_hat (share of correct leaves, ``ibtpo.core.correct.is_correct``) of every node under
    `root`.

    A reward >= 1 counts as correct (the one definition, ``ibtpo.core.correct``); an unrewarded leaf counts as
    incorrect.
    """
    def visit(node: Node) -> tuple[int, float]:
        if not node.children:
            correct = 1.0 if is_correct(node.reward) else 0.0
            node.__dict__.update(n_leaves=1, p_hat=correct)  # not a change of the tree (no revision bump)
            return 1, correct
        n, c = 0, 0.0
        for child in node.children:
            dn, dc = visit(child)
            n, c = n + dn, c + dc
        node.__dict__.update(n_leaves=n, p_hat=c / n)
        return n, c

    visit(root)


@dataclass(eq=False)
class Tree:
    """All trajectories sampled for one question."""

    question_id: str
    prompt_ids: list[int]
    root: Node = field(default_factory=lambda: Node(path=""))
    columns: dict[str, Any] = field(default_factory=dict)
    """The question's other dataset columns (e.g. the reference answer), passed to the reward function."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Rollout bookkeeping: reused_prefix_tokens, encoded_prefix_tokens (set by the rollout engine)."""
    _stats: "TreeStats | None" = field(default=None, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """A pickled or deep-copied tree leaves its statistics behind: they are keyed on node identities (``id``),
        which a copy does not keep, so the copy computes its own (trees cross ranks and processes pickled)."""
        return {**self.__dict__, "_stats": None}

    def leaves(self) -> list[Node]:
        """Leaves in depth-first order: one per trajectory."""
        return [n for n in self.root.iter_nodes() if n.is_leaf and n is not self.root]

    def nodes(self) -> list[Node]:
        """All non-root nodes."""
        return [n for n in self.root.iter_nodes() if n is not self.root]

    @staticmethod
    def completion(leaf: Node) -> tuple[list[int], list[float], list[float]]:
        """(token ids, behaviour log-probs, entropies) of the trajectory ending at `leaf`."""
        return _concat(leaf.lineage())

    def statistics(self) -> "TreeStats":
        """The tree's statistics, computed once and kept (:class:`TreeStats`); computed again, never stale, when the
        tree has changed since (a node added or split, a reward or a node's tokens assigned: ``Node.revision``).

        Sets every node's ``p_hat`` and ``n_leaves`` (:func:`compute_p_hat`). Meant for a grown, rewarded tree: a
        growing one recomputes it after every change (the samplers call :func:`compute_p_hat` instead).
        """
        if self._stats is None or not self._stats.current(self):
            self._stats = _tree_statistics(self)
        return self._stats

    @property
    def new_tokens(self) -> int:
        """Tokens generated for this tree; a shared prefix counts once."""
        return sum(len(n.token_ids) for n in self.nodes())

    def stats(self) -> dict[str, float]:
        """Shape of the tree: trajectories, new tokens, depth (nodes on the longest path), branching nodes."""
        nodes = self.nodes()
        return {
            "trajectories": len(self.leaves()),
            "new_tokens": self.new_tokens,
            "depth": max((n.depth for n in nodes), default=0),
            "branching_nodes": sum(1 for n in self.root.iter_nodes() if len(n.children) > 1),
            "nodes": len(nodes),
        }

    def to_dict(self, tokenizer=None) -> dict:
        """JSON-serialisable form (nodes as a flat list keyed by path); with a tokenizer, also each node's text."""
        self.statistics()
        nodes = []
        for n in self.nodes():
            d = {"path": n.path, "token_ids": n.token_ids, "logprobs": n.logprobs, "entropies": n.entropies,
                 "reward": n.reward, "finished": n.finished, "p_hat": n.p_hat, "n_leaves": n.n_leaves}
            if n.info:
                d["info"] = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in n.info.items()}
            if tokenizer is not None:
                d["text"] = tokenizer.decode(n.token_ids, skip_special_tokens=False)
            nodes.append(d)
        out = {"question_id": self.question_id, "prompt_ids": self.prompt_ids, "columns": self.columns,
               "p_hat": self.root.p_hat, **self.stats(), "meta": self.meta, "nodes": nodes}
        if tokenizer is not None:
            out["prompt"] = tokenizer.decode(self.prompt_ids, skip_special_tokens=False)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Tree":
        """Rebuild a tree from :meth:`to_dict` output (parents before children, as written)."""
        tree = cls(question_id=data["question_id"], prompt_ids=list(data["prompt_ids"]),
                   columns=dict(data.get("columns", {})))
        by_path = {"": tree.root}
        for d in data["nodes"]:
            parent_path = d["path"].rpartition("/")[0]
            node = by_path[parent_path].add_child(d["token_ids"], d["logprobs"], d["entropies"])
            node.reward, node.finished = d["reward"], d["finished"]
            node.info = dict(d.get("info", {}))
            by_path[node.path] = node
        return tree


@dataclass(eq=False)
class TreeStats:
    """The statistics of one tree, computed together by :meth:`Tree.statistics` and kept on the tree.

    Every reader of a grown, rewarded tree (the rollout and IB metrics, the training batch, IIB-LPO's filter) takes
    them from here instead of walking the tree again. They are keyed on the tree's state, the root's ``revision``: a
    node added or split and every assignment of a node's tokens, log-probs, entropies, reward, children or parent
    bump it, and ``Tree.statistics`` computes everything again when it moved, so a stale value is never returned
    (in-place edits of a node's lists, ``node.token_ids[0] = t``, are not seen: assign a new list). p_hat and
    n_leaves live on the nodes: written by :func:`compute_p_hat`, and an assignment from elsewhere also counts as a
    change (the next ``Tree.statistics`` computes them again).
    """

    root: Node
    """The tree's root they were computed from."""
    revision: int
    """The root's revision they were computed at."""
    leaves: list[Node]
    """Leaves in depth-first order (``Tree.leaves``)."""
    nodes: list[Node]
    """All non-root nodes, depth first (``Tree.nodes``)."""
    lineages: list[list[Node]]
    """Per leaf: its non-root nodes from the root's child down (``Node.lineage``)."""
    completions: list[tuple[list[int], list[float]]]
    """Per leaf: (token ids, behaviour log-probs) of its trajectory (``Tree.completion`` without the entropies, which
    no reader of a grown tree needs: half the copies kept)."""
    values: dict[int, float]
    """Mean leaf reward (None counts 0) under every node, the root included; keys: id(node)."""
    reward_std: float
    """Unbiased std (``core.group_std``) of the leaf rewards (None counts 0); 0 for one leaf."""
    derived: dict[Any, Any] = field(default_factory=dict)
    """What a method computes from these and keeps with them, under its own key (e.g. the IB-Scores of the branching
    nodes under ``("ib", beta, conf_mode)``, ``methods.ib_tpo``); dropped with them when the tree changes."""

    def current(self, tree: Tree) -> bool:
        """Whether `tree` is still in the state these were computed at."""
        return self.root is tree.root and self.revision == tree.root.revision

    def derive(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, once per key (kept in ``derived``)."""
        if key not in self.derived:
            self.derived[key] = compute()
        return self.derived[key]


def _concat(lineage: list[Node]) -> tuple[list[int], list[float], list[float]]:
    ids: list[int] = []
    lps: list[float] = []
    ents: list[float] = []
    for node in lineage:
        ids += node.token_ids
        lps += node.logprobs
        ents += node.entropies
    return ids, lps, ents


def _mean_rewards(root: Node) -> dict[int, float]:
    """Mean leaf reward under every node (keys: id(node))."""
    out: dict[int, float] = {}

    def visit(node: Node) -> tuple[float, int]:
        if not node.children:
            total, count = float(node.reward or 0.0), 1
        else:
            total, count = 0.0, 0
            for child in node.children:
                t, c = visit(child)
                total, count = total + t, count + c
        out[id(node)] = total / count
        return total, count

    visit(root)
    return out


def _tree_statistics(tree: Tree) -> TreeStats:
    compute_p_hat(tree.root)
    leaves = tree.leaves()
    lineages = [leaf.lineage() for leaf in leaves]
    return TreeStats(root=tree.root, revision=tree.root.revision, leaves=leaves, nodes=tree.nodes(), lineages=lineages,
                     completions=[_concat(lin)[:2] for lin in lineages], values=_mean_rewards(tree.root),
                     reward_std=group_std([float(leaf.reward or 0.0) for leaf in leaves]))
