"""Tree samplers: grow one tree of trajectories per question, every round batched across all questions.

    independent   B0 = G samples from the root, no branching (GRPO's rollout through the same code).
    ib            IBTree (METHOD.md section 4): B0 chains, then L-1 rounds; each round forks B continuations at
                  each of the K nodes with the highest IB-Score.                       G = B0 + (L-1)*K*B
    entropy       TreeRL/EPTree-style: same rounds, forks at the K highest -log p tokens.  G = B0 + (L-1)*K*B
    random        same rounds, K uniformly drawn nodes.                                  G = B0 + (L-1)*K*B
    fixed_width   TreePO-style: fixed-length segments; each open segment forks into `width` children per depth,
                  up to `max_depth`, until G trajectories exist; then every open branch runs to the end.
    iib           IIB-LPO (``latent_fork.py``): B0 rollouts, L-1 forks from each at high-entropy tokens, one level
                  deep, each branch optionally conditioned on a latent code.                G = B0 * L

Nodes are reasoning steps (``StepSplitter``), except in ``fixed_width`` where they are the fixed-length segments and
in ``entropy`` where token-level forks cut steps. Every leaf is rewarded once, right after it is generated (the IB
rule needs p_hat between rounds). Shared prefixes are generated once and, with prefix reuse, never re-encoded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from ibtpo.registry import Registry
from ibtpo.rollout.backend import RolloutBackend
from ibtpo.rollout.engine import Request
from ibtpo.rollout.sampling import Generation
from ibtpo.rollout.rules import BRANCH_RULES, RuleContext
from ibtpo.rollout.steps import StepSplitter
from ibtpo.rollout.tree import Node, Tree, compute_p_hat

ScoreFn = Callable[[Tree, list[Node]], None]
"""Sets ``reward`` on the given new leaves of a tree."""


@dataclass(frozen=True)
class TreeShape:
    """Parameters of tree growth."""

    b0: int = 4
    """B0: independent trajectories sampled from the root first (independent sampler: = G)."""
    rounds: int = 9
    """L: rounds including the first one (1 = no branching)."""
    k: int = 1
    """K: fork points per tree per round."""
    b: int = 1
    """B: continuations sampled from each fork point."""
    min_room: int = 8
    """A fork point needs at least this many tokens left under the completion cap."""
    beta: float = 5.0
    """IB-Score beta."""
    conf_mode: str = "mean"
    """Step confidence of the IB-Score: 'mean' (length-normalised) or 'product'."""
    root_candidate: bool = True
    """Rounds may fork from the root (a fresh trajectory)."""
    zero_phat: str = "one"
    """IB rule at nodes with p_hat = 0: 'one' (r = 1) or 'skip'."""
    segment_length: int = 8
    """fixed_width: tokens per segment."""
    width: int = 2
    """fixed_width: children of each open segment per depth."""
    max_depth: int = 6
    """fixed_width: deepest level that still branches."""
    fork_top: float = 0.05
    """iib: share of a rollout's tokens (highest entropy) that are candidate fork points."""

    @property
    def group_size(self) -> int:
        """G = B0 + (L-1)*K*B trajectories per question."""
        return self.b0 + (self.rounds - 1) * self.k * self.b


@dataclass
class GrowContext:
    engine: RolloutBackend
    """The rollout backend that decodes the requests (``rollout.backend``)."""
    splitter: StepSplitter
    shape: TreeShape
    cap: int
    score: ScoreFn
    rng: random.Random
    latent: Any = None
    """iib sampler: a ``rollout.latent_fork.LatentBranching`` (latent code per branch), or None (plain forks)."""


SamplerFn = Callable[[GrowContext, list[Tree]], None]
SAMPLERS: Registry[SamplerFn] = Registry("sampler")


def grow_trees(name: str, ctx: GrowContext, prompts: list[list[int]], question_ids: list[str],
               columns: list[dict]) -> list[Tree]:
    """One rewarded tree per prompt, grown by the named sampler. The backend's per-node caches are released after."""
    trees = [Tree(question_id=q, prompt_ids=list(p), columns=dict(c)) for p, q, c in zip(prompts, question_ids, columns)]
    ctx.engine.keep_kv = ctx.engine.prefix_reuse and name != "independent"  # nothing forks: keep no caches
    try:
        SAMPLERS.get(name)(ctx, trees)
    finally:
        ctx.engine.release()
    for t in trees:
        compute_p_hat(t.root)
    return trees


def attach(ctx: GrowContext, tree: Tree, node: Node, cont: Generation, split_steps: bool = True) -> Node:
    """Hang a continuation under `node` as a chain of step nodes (or one node); returns the last node."""
    if split_steps:
        context = _tail_tokens(node, 2 * len(ctx.splitter.delimiter))
        ends = ctx.splitter.boundaries(context + cont.token_ids, len(context))
        ends = [e - len(context) for e in ends]
    else:
        ends = [len(cont.token_ids)]
    parent, begin = node, 0
    for end in ends:
        child = parent.add_child(cont.token_ids[begin:end], cont.logprobs[begin:end], cont.entropies[begin:end])
        ctx.engine.adopt(child, cont, begin, end)
        parent, begin = child, end
    parent.finished = cont.finished
    return parent


def _tail_tokens(node: Node, count: int) -> list[int]:
    """The last `count` completion tokens up to the end of `node` (context for a delimiter that straddles a fork)."""
    out: list[int] = []
    while node is not None and node.parent is not None and len(out) < count:
        out = node.token_ids[-(count - len(out)):] + out
        node = node.parent
    return out[-count:] if count else []


def _expand_and_attach(ctx: GrowContext, requests: list[Request], split_steps: bool = True) -> list[tuple[Tree, Node]]:
    """Run the requests; attach every continuation; return (tree, last node) pairs in order."""
    out = []
    for req, group in zip(requests, ctx.engine.expand(requests)):
        for cont in group:
            out.append((req.tree, attach(ctx, req.tree, req.node, cont, split_steps)))
    return out


def score_new(ctx: GrowContext, new: list[tuple[Tree, Node]]) -> None:
    """Reward the new leaves, one call of the context's scorer per tree."""
    by_tree: dict[int, tuple[Tree, list[Node]]] = {}
    for tree, leaf in new:
        by_tree.setdefault(id(tree), (tree, []))[1].append(leaf)
    for tree, leaves in by_tree.values():
        ctx.score(tree, leaves)


@SAMPLERS.register("independent")
def grow_independent(ctx: GrowContext, trees: list[Tree]) -> None:
    """G = B0 independent trajectories per question."""
    new = _expand_and_attach(ctx, [Request(t, t.root, ctx.shape.b0, ctx.cap) for t in trees])
    score_new(ctx, new)


def _fork_requests(ctx: GrowContext, tree: Tree, points: list[tuple[Node, int]]) -> list[Request]:
    """Turn fork points into requests, cutting nodes for token-level forks (several cuts in one node allowed).

    A point chosen twice gets twice the continuations (2B), so a tree always grows by K*B trajectories per round.
    """
    requests = []
    by_node: dict[int, tuple[Node, dict[int, int]]] = {}
    for node, at in points:
        counts = by_node.setdefault(id(node), (node, {}))[1]
        counts[at] = counts.get(at, 0) + 1
    for node, counts in by_node.values():
        cur, consumed = node, 0
        for at in sorted(counts):
            local = at - consumed
            if local < len(cur.token_ids):
                tail = cur.split(local)
                ctx.engine.split(cur, tail, local)
                requests.append(Request(tree, cur, ctx.shape.b * counts[at], ctx.cap - cur.end))
                cur, consumed = tail, at
            else:
                requests.append(Request(tree, cur, ctx.shape.b * counts[at], ctx.cap - cur.end))
    return requests


def _grow_rounds(rule: str) -> SamplerFn:
    def grow(ctx: GrowContext, trees: list[Tree]) -> None:
        grow_independent(ctx, trees)
        select = BRANCH_RULES.get(rule)
        s = ctx.shape
        rctx = RuleContext(k=s.k, cap=ctx.cap, min_room=s.min_room, beta=s.beta, conf_mode=s.conf_mode,
                           root_candidate=s.root_candidate, zero_phat=s.zero_phat)
        for _ in range(s.rounds - 1):
            requests = []
            for tree in trees:
                compute_p_hat(tree.root)
                requests += _fork_requests(ctx, tree, select(tree, rctx, ctx.rng))
            score_new(ctx, _expand_and_attach(ctx, requests))

    grow.__doc__ = f"B0 chains, then L-1 rounds forking at the points chosen by the '{rule}' rule."
    return grow


for _rule in ("ib", "entropy", "random"):
    SAMPLERS.register(_rule)(_grow_rounds(_rule))


@SAMPLERS.register("fixed_width")
def grow_fixed_width(ctx: GrowContext, trees: list[Tree]) -> None:
    """TreePO-style segment tree: see the module docstring."""
    s = ctx.shape
    target = s.group_size
    frontier: dict[int, list[Node]] = {id(t): [t.root] for t in trees}
    done_leaves: dict[int, int] = {id(t): 0 for t in trees}
    depth = 0
    while any(frontier.values()):
        depth += 1
        requests = []
        for tree in trees:
            open_nodes = frontier[id(tree)]
            if not open_nodes:
                continue
            widths = [1] * len(open_nodes)
            if depth <= s.max_depth and s.width > 1:
                spare = target - done_leaves[id(tree)] - len(open_nodes)
                n_branch = max(0, min(len(open_nodes), spare // (s.width - 1)))
                for i in ctx.rng.sample(range(len(open_nodes)), n_branch):
                    widths[i] = s.width
            for node, w in zip(open_nodes, widths):
                room = ctx.cap - node.end
                limit = min(s.segment_length, room) if depth <= s.max_depth else room
                requests.append(Request(tree, node, w, limit))
        new = _expand_and_attach(ctx, requests, split_steps=False)
        frontier = {id(t): [] for t in trees}
        leaves = []
        for tree, node in new:
            if node.finished or node.end >= ctx.cap:
                done_leaves[id(tree)] += 1
                leaves.append((tree, node))
            else:
                frontier[id(tree)].append(node)
        score_new(ctx, leaves)
