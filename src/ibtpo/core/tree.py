"""Rollouts as trees: the root is the prompt, every other node holds generated tokens, every leaf ends a trajectory.

A trajectory is a root-to-leaf path; its completion is the concatenation of the tokens of the nodes on the path.
Independent sampling (GRPO) is a tree of depth one: the root has G leaf children. Branching samplers hang several
children under a shared prefix node, so the prefix is generated (and counted) once.

Node ids are path strings (TreePO style): the root is "", its children "0", "1", ..., their children "0/0", "0/1"...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from ibtpo.core.correct import is_correct
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

    def add_child(self, token_ids: list[int], logprobs: list[float], entropies: list[float]) -> "Node":
        """Attach and return a new child holding the given tokens."""
        path = f"{self.path}/{len(self.children)}" if self.path else str(len(self.children))
        child = Node(path=path, token_ids=list(token_ids), logprobs=list(logprobs), entropies=list(entropies),
                     parent=self, depth=self.depth + 1, offset=self.end)
        self.children.append(child)
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
                    depth=self.depth + 1, offset=self.offset + at)
        del self.token_ids[at:], self.logprobs[at:], self.entropies[at:]
        self.children, self.reward, self.finished = [tail], None, False
        for c in tail.children:
            c.parent = tail
        _renumber(self)
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
            node.n_leaves, node.p_hat = 1, correct
            return 1, correct
        n, c = 0, 0.0
        for child in node.children:
            dn, dc = visit(child)
            n, c = n + dn, c + dc
        node.n_leaves, node.p_hat = n, c / n
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

    def leaves(self) -> list[Node]:
        """Leaves in depth-first order: one per trajectory."""
        return [n for n in self.root.iter_nodes() if n.is_leaf and n is not self.root]

    def nodes(self) -> list[Node]:
        """All non-root nodes."""
        return [n for n in self.root.iter_nodes() if n is not self.root]

    @staticmethod
    def completion(leaf: Node) -> tuple[list[int], list[float], list[float]]:
        """(token ids, behaviour log-probs, entropies) of the trajectory ending at `leaf`."""
        ids, lps, ents = [], [], []
        for node in leaf.lineage():
            ids += node.token_ids
            lps += node.logprobs
            ents += node.entropies
        return ids, lps, ents

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
        compute_p_hat(self.root)
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
