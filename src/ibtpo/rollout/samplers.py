"""Tree samplers: grow one tree of trajectories per question, every round batched across all questions.

    independent   B0 = G samples from the root, no branching (GRPO's rollout through the same code).
    <rule>        B0 chains, then L-1 rounds; each round forks B continuations at the K fork points the named branch
                  rule picks (``rollout.rules``): ``ib`` (IBTree, METHOD.md section 4), ``entropy`` (TreeRL),
                  ``random``.                                                              G = B0 + (L-1)*K*B
    fixed_width   TreePO-style fixed-length segments (``methods.treepo``).
    iib           IIB-LPO's entropy-triggered latent forks (``methods.iib_lpo``).

Nodes are reasoning steps (``StepSplitter``), except where a sampler says otherwise. Every leaf is rewarded once,
right after it is generated (the IB rule needs p_hat between rounds). Shared prefixes are generated once and, with
prefix reuse, never re-encoded. Samplers only ask the rollout backend for continuations (``Request``) and hang them
in the tree (:func:`attach`); the backend owns every cache.

A sampler is registered with a :class:`SamplerSpec`: its grow function, how a run config maps onto its
:class:`TreeShape`, whether it branches, and the settings it refuses (``ibtpo.register_sampler``), and with its own
options dataclass (``options=``; e.g. ``rules.BranchingOptions`` of the rule samplers), read as ``ctx.options``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from ibtpo.core.guard import ComponentError, call, check_signature, describe, label
from ibtpo.core.registry import Registry, config_field, options_from
from ibtpo.backends.factory import RolloutBackend
from ibtpo.backends.eager import Request
from ibtpo.core.sampling import Generation
from ibtpo.rollout.rules import BRANCH_RULES, BranchingOptions
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree import Node, Tree, compute_p_hat

ScoreFn = Callable[[Tree, list[Node]], None]
"""Sets ``reward`` on the given new leaves of a tree."""


@dataclass(frozen=True)
class TreeShape:
    """How many trajectories a tree grows, and in which rounds (each field names the run-config field it comes from).
    A sampler's other settings are its own options (``register_sampler(..., options=)``)."""

    b0: int = config_field(4, "tree_b0")
    """B0: independent trajectories sampled from the root first (independent sampler: = G)."""
    rounds: int = config_field(9, "tree_l")
    """L: rounds including the first one (1 = no branching)."""
    k: int = config_field(1, "tree_k")
    """K: fork points per tree per round."""
    b: int = config_field(1, "tree_b")
    """B: continuations sampled from each fork point."""

    @property
    def group_size(self) -> int:
        """G = B0 + (L-1)*K*B trajectories per question."""
        return self.b0 + (self.rounds - 1) * self.k * self.b


@dataclass
class GrowContext:
    engine: RolloutBackend
    """The rollout backend that decodes the requests (``backends.factory``)."""
    splitter: StepSplitter
    shape: TreeShape
    cap: int
    score: ScoreFn
    rng: random.Random
    extras: dict[str, Any] = field(default_factory=dict)
    """What a method's sampler needs besides these (e.g. IIB-LPO's latent codes, ``methods.iib_lpo``)."""
    options: Any = None
    """The sampler's own options (the dataclass it was registered with, from the run config: :func:`sampler_options`;
    None: :func:`grow_trees` fills in that class's defaults)."""


SamplerFn = Callable[[GrowContext, list[Tree]], None]


def shape_from_config(cfg: Any) -> TreeShape:
    """The tree shape of a branching sampler from a run config (tree_b0, tree_l, ... ; see :class:`TreeShape`)."""
    return options_from(TreeShape, cfg)


def no_problems(cfg: Any, shape: TreeShape) -> list[str]:
    return []


def no_data_parallel_problems(cfg: Any, wrapper: str) -> list[str]:
    return []


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler."""

    grow: SamplerFn
    """Grows the trees (rewarding every new leaf through ``ctx.score``)."""
    shape: Callable[[Any], TreeShape] = shape_from_config
    """Run config -> the sampler's tree shape (and so its group size G)."""
    branches: bool = True
    """Whether trajectories can share prefixes (False: per-node caches are not kept, IB metrics come from probes)."""
    shape_fields: str = "tree_b0, tree_l, tree_k, tree_b"
    """The run-config fields that set G, for error messages."""
    problems: Callable[[Any, TreeShape], list[str]] = no_problems
    """Run config, shape -> settings this sampler cannot run with (one line each, naming the fields)."""
    rule: str | None = None
    """The branch rule of a sampler that grows rounds (``rounds_sampler``); None for other samplers."""
    data_parallel: Callable[[Any, str], list[str]] = no_data_parallel_problems
    """Run config, wrapper (ddp / fsdp2) -> settings this sampler cannot run with on several ranks (one line each,
    naming the fields; ``training.distributed`` refuses them before any work)."""


def _as_spec(obj: Any) -> SamplerSpec:
    return obj if isinstance(obj, SamplerSpec) else SamplerSpec(grow=obj)


def _spec_problem(spec: Any) -> str | None:
    if not isinstance(spec, SamplerSpec):
        return f"is a {type(spec).__name__}, not a SamplerSpec or a grow function"
    for part in ("grow", "shape", "problems", "data_parallel"):
        if not callable(getattr(spec, part)):
            return f"has {part} = {describe(getattr(spec, part))}, not a function or other callable"
    return None


SAMPLERS: Registry[SamplerSpec] = Registry("sampler", coerce=_as_spec, check=_spec_problem)


def register_sampler(name: str, grow: SamplerFn | None = None, *, options: type | None = None, **spec: Any):
    """Register a sampler: ``register_sampler("mine", grow_fn, shape=..., branches=..., options=MyOptions)`` or as a
    decorator of the grow function (``SamplerSpec`` fields as keywords). `options`: the sampler's frozen options
    dataclass (fields mapped to run-config fields with ``config_field``); it reads them as ``ctx.options``."""
    def add(fn: SamplerFn) -> SamplerFn:
        SAMPLERS.register(name, SamplerSpec(grow=fn, **spec), options=options)
        return fn

    return add if grow is None else add(grow)


def sampler_options(name: str, cfg: Any = None) -> Any:
    """The options sampler `name` grows with under run config `cfg` (any object with run-config attributes; fields
    it lacks keep their defaults): an instance of the class it was registered with, or None if it takes none."""
    cls = SAMPLERS.options(name)
    return None if cls is None else options_from(cls, cfg)


def checked_shape(name: str, cfg: Any) -> TreeShape:
    """The tree shape sampler `name` draws with run config `cfg` (its ``shape`` function, guarded: a user function
    that raises or returns something else than a TreeShape ends in one line naming the sampler)."""
    spec = SAMPLERS.get(name)
    who = f"{label('sampler', name)} (its shape function)"
    out = call(who, spec.shape, cfg)
    if not isinstance(out, TreeShape):
        raise ComponentError(f"{who} returned {describe(out)}; expected an ibtpo.TreeShape")
    return out


def checked_problems(name: str, cfg: Any, shape: TreeShape) -> list[str]:
    """The settings sampler `name` refuses (its ``problems`` function, guarded: a list of one-line strings)."""
    who = f"{label('sampler', name)} (its problems function)"
    out = call(who, SAMPLERS.get(name).problems, cfg, shape)
    if not isinstance(out, (list, tuple)) or not all(isinstance(p, str) for p in out):
        raise ComponentError(f"{who} returned {describe(out)}; expected a list of strings (one problem each)")
    return list(out)


def _check_grown(who: str, trees: list[Tree]) -> None:
    """Every tree holds at least one trajectory and every leaf was rewarded (through ``ctx.score``)."""
    for tree in trees:
        leaves = tree.leaves()
        if not leaves:
            raise ComponentError(f"{who} grew no trajectory for question {tree.question_id}; expected at least one "
                                 f"leaf per tree")
        if any(leaf.reward is None for leaf in leaves):
            n = sum(leaf.reward is None for leaf in leaves)
            raise ComponentError(f"{who} left {n} of {len(leaves)} leaves of question {tree.question_id} without a "
                                 f"reward; call ctx.score(tree, new_leaves) on every new leaf")


def grow_trees(name: str, ctx: GrowContext, prompts: list[list[int]], question_ids: list[str],
               columns: list[dict]) -> list[Tree]:
    """One rewarded tree per prompt, grown by the named sampler. The backend's per-node caches are released after.

    The sampler is guarded (``ibtpo.core.guard``): called as ``grow(ctx, trees)``, its own errors name it, and every
    tree must come back with rewarded leaves. It has no time limit (the reward calls in it have
    ``reward_timeout_s``)."""
    trees = [Tree(question_id=q, prompt_ids=list(p), columns=dict(c))
             for p, q, c in zip(prompts, question_ids, columns)]
    spec = SAMPLERS.get(name)
    who = label("sampler", name)
    if ctx.options is None:
        ctx = dataclasses.replace(ctx, options=sampler_options(name))
    check_signature(who, spec.grow, (ctx, trees), hint="a sampler is called as grow(ctx, trees)")
    ctx.engine.keep_kv = ctx.engine.prefix_reuse and spec.branches  # nothing forks: keep no caches
    try:
        call(who, spec.grow, ctx, trees)
    finally:
        ctx.engine.release()
    _check_grown(who, trees)
    for t in trees:  # the grown tree's statistics, computed once and kept on it (p_hat included)
        t.statistics()
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


def expand_and_attach(ctx: GrowContext, requests: list[Request], split_steps: bool = True) -> list[tuple[Tree, Node]]:
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


def grow_independent(ctx: GrowContext, trees: list[Tree]) -> None:
    """G = B0 independent trajectories per question."""
    new = expand_and_attach(ctx, [Request(t, t.root, ctx.shape.b0, ctx.cap) for t in trees])
    score_new(ctx, new)


register_sampler("independent", grow_independent, branches=False, shape_fields="num_generations",
                 shape=lambda cfg: TreeShape(b0=cfg.num_generations, rounds=1))


def fork_requests(ctx: GrowContext, tree: Tree, points: list[tuple[Node, int]]) -> list[Request]:
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


def rounds_sampler(rule: str) -> SamplerFn:
    """A sampler that grows B0 chains, then L-1 rounds forking at the points branch rule `rule` picks."""
    def grow(ctx: GrowContext, trees: list[Tree]) -> None:
        grow_independent(ctx, trees)
        select = BRANCH_RULES.get(rule)
        who = label("branch rule", rule)
        # registered without BranchingOptions (register_sampler(name, rounds_sampler(rule))): their defaults
        options = ctx.options if isinstance(ctx.options, BranchingOptions) else BranchingOptions()
        rctx = options.rule_context(ctx.shape.k, ctx.cap)
        check_signature(who, select, (None, rctx, ctx.rng), hint="a branch rule is called as rule(tree, ctx, rng)")
        for _ in range(ctx.shape.rounds - 1):
            requests = []
            for tree in trees:
                compute_p_hat(tree.root)
                points = _check_points(who, tree, call(who, select, tree, rctx, ctx.rng))
                requests += fork_requests(ctx, tree, points)
            score_new(ctx, expand_and_attach(ctx, requests))

    grow.__doc__ = f"B0 chains, then L-1 rounds forking at the points chosen by the '{rule}' rule."
    return grow


def _check_points(who: str, tree: Tree, points: Any) -> list[tuple[Node, int]]:
    """A branch rule's fork points: a list of (node of this tree, token offset 0..len(node)) pairs."""
    if not isinstance(points, (list, tuple)):
        raise ComponentError(f"{who} returned {describe(points)}; expected a list of (node, token offset) pairs")
    for p in points:
        ok = isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], Node) and isinstance(p[1], int)
        if not ok:
            raise ComponentError(f"{who} returned a fork point {describe(p)}; expected a (node, token offset) pair")
        node, at = p
        if not 0 <= at <= len(node.token_ids):
            raise ComponentError(f"{who} returned token offset {at} in a node of {len(node.token_ids)} tokens; "
                                 f"expected 0..{len(node.token_ids)}")
        top = node
        while top.parent is not None:
            top = top.parent
        if top is not tree.root:
            raise ComponentError(f"{who} returned a node that is not in the tree of question {tree.question_id}")
    return list(points)


def rounds_problems(cfg: Any, shape: TreeShape) -> list[str]:
    """A rule-based sampler needs fork points with tree_min_room tokens left under max_completion_length."""
    options = options_from(BranchingOptions, cfg)
    cap, room = cfg.max_completion_length, options.min_room
    if shape.rounds > 1 and (room > cap or (room >= cap and not options.root_candidate)):
        return [f"tree_min_room ({room}) must be <= max_completion_length ({cap}) (< with tree_root_candidate="
                f"false): no fork point of sampler={cfg.sampler} could leave that many tokens"]
    return []


def register_rule_sampler(name: str, rule: str | None = None) -> None:
    """Register sampler `name` growing rounds with branch rule `rule` (default: the rule of the same name); its
    options are :class:`~ibtpo.rollout.rules.BranchingOptions`."""
    register_sampler(name, rounds_sampler(rule or name), problems=rounds_problems, rule=rule or name,
                     options=BranchingOptions)
