"""Branch-selection rules: where a round of tree growth forks, registered by name.

A rule looks at one tree (p_hat already computed) and returns up to K fork points ``(node, at)``: continue after
the first ``at`` tokens of ``node``. ``at == len(node.token_ids)`` forks at the node's end (a step boundary; the
root has no tokens, so ``(root, 0)`` forks from the prompt); a smaller ``at`` forks inside the node (token-level
forks of the entropy rule). A fork point is a candidate only if its prefix leaves at least ``min_room`` tokens under
the completion cap.

- ``ib``      IBTree (METHOD.md sections 3-4): the K non-leaf nodes with the highest IB-Score; the root is a
              candidate; ties broken at random.
- ``entropy`` TreeRL / EPTree (arXiv 2506.11902): the K generated tokens with the highest -log p of the sampled token
              (the new branch re-draws that token); a position that is already a fork point is not reused.
- ``random``  K distinct non-leaf nodes drawn uniformly.
With fewer candidates than K, rules repeat candidates, so every round adds exactly K*B trajectories.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from ibtpo.algos.ib_score import ib_score
from ibtpo.registry import Registry
from ibtpo.rollout.tree import Node, Tree


@dataclass(frozen=True)
class RuleContext:
    """What a rule may read besides the tree."""

    k: int
    """Fork points to return (K)."""
    cap: int
    """Completion length cap in tokens."""
    min_room: int = 8
    """A fork point needs at least this many tokens left under the cap."""
    beta: float = 5.0
    """IB trade-off beta."""
    conf_mode: str = "mean"
    """Step confidence: 'mean' (length-normalised) or 'product'."""
    root_candidate: bool = True
    """The root (a fork from the prompt) may be chosen [choice]."""
    zero_phat: str = "one"
    """IB rule, node with p_hat = 0: 'one' scores it with r = 1; 'skip' keeps it out unless nothing else is left."""


ForkPoint = tuple[Node, int]
RuleFn = Callable[[Tree, RuleContext, random.Random], list[ForkPoint]]
BRANCH_RULES: Registry[RuleFn] = Registry("branch rule")


def node_candidates(tree: Tree, ctx: RuleContext) -> list[Node]:
    """Non-leaf nodes (the root too, unless excluded) whose prefix leaves room under the cap."""
    return [n for n in tree.root.iter_nodes() if n.children and ctx.cap - n.end >= ctx.min_room
            and (ctx.root_candidate or n is not tree.root)]


def _top_k(scored: list[tuple[float, ForkPoint]], k: int, rng: random.Random) -> list[ForkPoint]:
    keyed = [(score, rng.random(), fp) for score, fp in scored]
    keyed.sort(key=lambda x: (x[0], x[1]), reverse=True)
    best = [fp for *_, fp in keyed[:k]]
    return [best[i % len(best)] for i in range(k)] if best else []  # fewer candidates than K: cycle through them


@BRANCH_RULES.register("ib")
def ib_rule(tree: Tree, ctx: RuleContext, rng: random.Random) -> list[ForkPoint]:
    """Top-K IB-Score nodes."""
    cands = node_candidates(tree, ctx)
    if ctx.zero_phat == "skip":
        cands = [n for n in cands if n.p_hat] or cands
    return _top_k([(ib_score(n, ctx.beta, ctx.conf_mode), (n, len(n.token_ids))) for n in cands], ctx.k, rng)


@BRANCH_RULES.register("random")
def random_rule(tree: Tree, ctx: RuleContext, rng: random.Random) -> list[ForkPoint]:
    """K uniformly drawn candidate nodes."""
    cands = node_candidates(tree, ctx)
    if not cands:
        return []
    picked = rng.sample(cands, min(ctx.k, len(cands)))
    picked += [rng.choice(cands) for _ in range(ctx.k - len(picked))]
    return [(n, len(n.token_ids)) for n in picked]


@BRANCH_RULES.register("entropy")
def entropy_rule(tree: Tree, ctx: RuleContext, rng: random.Random) -> list[ForkPoint]:
    """Top-K tokens by -log p of the sampled token; forking there re-draws the token."""
    scored = []
    for node in tree.nodes():
        for i, lp in enumerate(node.logprobs):
            if ctx.cap - (node.offset + i) < ctx.min_room:
                break
            if i == 0:
                parent = node.parent
                if len(parent.children) > 1:
                    continue  # already a fork point
                fp = (parent, len(parent.token_ids))
            else:
                fp = (node, i)
            scored.append((-lp, fp))
    if not scored and ctx.root_candidate and ctx.cap >= ctx.min_room:
        scored = [(0.0, (tree.root, 0))]  # nothing left to fork inside (e.g. all answers ended at once): a fresh one
    return _top_k(scored, ctx.k, rng)
