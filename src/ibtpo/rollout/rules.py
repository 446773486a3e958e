"""Branch-selection rules: where a round of tree growth forks, registered by name (``BRANCH_RULES``).

A rule looks at one tree (p_hat already computed) and returns up to K fork points ``(node, at)``: continue after
the first ``at`` tokens of ``node``. ``at == len(node.token_ids)`` forks at the node's end (a step boundary; the
root has no tokens, so ``(root, 0)`` forks from the prompt); a smaller ``at`` forks inside the node (token-level
forks). A fork point is a candidate only if its prefix leaves at least ``min_room`` tokens under the completion cap.
With fewer candidates than K, rules repeat candidates, so every round adds exactly K*B trajectories.

The rules themselves live with their methods: ``ib`` (IBTree, ``methods.ib_tpo``), ``entropy`` (TreeRL,
``methods.treerl``), ``random`` (``methods.random_tree``). Register your own with ``ibtpo.register_branch_rule``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from ibtpo.core.registry import Registry, config_field, options_field
from ibtpo.core.tree import Node, Tree
from ibtpo.core.tree_stats import IB_DEFAULTS, IBOptions


@dataclass(frozen=True)
class BranchingOptions:
    """Options of the samplers that grow rounds with a branch rule (``ib``, ``entropy``, ``random``, ...)."""

    min_room: int = config_field(8, "tree_min_room")
    """A fork point needs at least this many tokens left under the completion cap."""
    root_candidate: bool = config_field(True, "tree_root_candidate")
    """Rounds may fork from the root (a fresh trajectory)."""
    ib: IBOptions = options_field(IBOptions)
    """The IB-Score options (read by the ``ib`` rule)."""

    def rule_context(self, k: int, cap: int) -> RuleContext:
        """What a branch rule reads in a round forking at `k` points under completion cap `cap`."""
        return RuleContext(k=k, cap=cap, min_room=self.min_room, root_candidate=self.root_candidate, ib=self.ib)


BRANCHING_DEFAULTS = BranchingOptions()


@dataclass(frozen=True)
class RuleContext:
    """What a rule may read besides the tree."""

    k: int
    """Fork points to return (K)."""
    cap: int
    """Completion length cap in tokens."""
    min_room: int = BRANCHING_DEFAULTS.min_room
    """A fork point needs at least this many tokens left under the cap."""
    root_candidate: bool = BRANCHING_DEFAULTS.root_candidate
    """The root (a fork from the prompt) may be chosen [choice]."""
    ib: IBOptions = IB_DEFAULTS
    """IB-Score beta and step confidence; at a node with p_hat = 0 ('zero_phat') 'one' scores it with r = 1, 'skip'
    keeps it out unless nothing else is left."""


ForkPoint = tuple[Node, int]
RuleFn = Callable[[Tree, RuleContext, random.Random], list[ForkPoint]]
BRANCH_RULES: Registry[RuleFn] = Registry("branch rule")


def node_candidates(tree: Tree, ctx: RuleContext) -> list[Node]:
    """Non-leaf nodes (the root too, unless excluded) whose prefix leaves room under the cap."""
    return [n for n in tree.root.iter_nodes() if n.children and ctx.cap - n.end >= ctx.min_room
            and (ctx.root_candidate or n is not tree.root)]


def top_k(scored: list[tuple[float, ForkPoint]], k: int, rng: random.Random) -> list[ForkPoint]:
    """The K fork points with the highest scores, ties broken at random; fewer than K: cycle through them."""
    keyed = [(score, rng.random(), fp) for score, fp in scored]
    keyed.sort(key=lambda x: (x[0], x[1]), reverse=True)
    best = [fp for *_, fp in keyed[:k]]
    return [best[i % len(best)] for i in range(k)] if best else []
