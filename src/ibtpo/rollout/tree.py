"""Rollouts as trees: the root is the prompt, every other node holds generated tokens, every leaf ends a trajectory.

A trajectory is a root-to-leaf path; its completion is the concatenation of the tokens of the nodes on the path.
Independent sampling (GRPO) is a tree of depth one: the root has G leaf children. Branching samplers hang several
children under a shared prefix node, so the prefix is generated (and counted) once.

Node ids are path strings (TreePO style): the root is "", its children "0", "1", ..., their children "0/0", "0/1"...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator


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

    def add_child(self, token_ids: list[int], logprobs: list[float], entropies: list[float]) -> "Node":
        """Attach and return a new child holding the given tokens."""
        path = f"{self.path}/{len(self.children)}" if self.path else str(len(self.children))
        child = Node(path=path, token_ids=list(token_ids), logprobs=list(logprobs), entropies=list(entropies),
                     parent=self)
        self.children.append(child)
        return child

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def iter_nodes(self) -> Iterator["Node"]:
        """This node and all its descendants, depth first."""
        yield self
        for c in self.children:
            yield from c.iter_nodes()

    def lineage(self) -> list["Node"]:
        """The non-root nodes from the root's child down to this node."""
        out, node = [], self
        while node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


@dataclass(eq=False)
class Tree:
    """All trajectories sampled for one question."""

    question_id: str
    prompt_ids: list[int]
    root: Node = field(default_factory=lambda: Node(path=""))
    columns: dict[str, Any] = field(default_factory=dict)
    """The question's other dataset columns (e.g. the reference answer), passed to the reward function."""

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

    def to_dict(self) -> dict:
        """JSON-serialisable form (nodes as a flat list keyed by path)."""
        return {
            "question_id": self.question_id,
            "prompt_ids": self.prompt_ids,
            "columns": self.columns,
            "nodes": [
                {"path": n.path, "token_ids": n.token_ids, "logprobs": n.logprobs, "entropies": n.entropies,
                 "reward": n.reward, "finished": n.finished}
                for n in self.nodes()
            ],
        }
