"""IIB-LPO's rollout (arXiv 2601.05870, METHOD.md section 8): entropy-triggered forks conditioned on a latent code.

Sampler ``iib``: B0 = ``tree_b0`` initial rollouts per question; along each, the candidate fork positions are the top
``fork_top`` share of its tokens by entropy (``core.fork_candidates``); ``rounds - 1`` forks per rollout are
drawn uniformly among them. A fork at position t keeps the rollout's first t tokens (shared, generated once) and
draws a new continuation from token t on. One level deep: branches are not forked again. G = B0 * rounds.

With a :class:`LatentBranching` in the grow context's extras (``extras["latent"]``), each branch gets its own z (the
CVAE prior p(z | prefix) or N(0, I)) and continues with W z added to its input embeddings
(``Request.embed_offset``); z is kept on the branch's first node (``info["z"]``) so the training forward applies the
same offset. The prefix features also feed the CVAE's online training: (prefix, continuation) of every fork point of
a correct initial rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ibtpo.methods.iib_lpo.core import draw_fork_positions, fork_candidates
from ibtpo.methods.iib_lpo.latent import ConditionalVAE, LatentInjector
from ibtpo.core.correct import is_correct
from ibtpo.core.lm import last_hidden_states
from ibtpo.backends.contract import Request
from ibtpo.core.registry import config_field, default_of, options_from
from ibtpo.core.sampling import right_pad
from ibtpo.rollout.rules import BranchingOptions
from ibtpo.rollout.samplers import GrowContext, TreeShape, attach, grow_independent, register_sampler, score_new
from ibtpo.core.tree import Node, Tree


@dataclass(frozen=True)
class IIBSamplerOptions:
    """Options of the ``iib`` sampler."""

    min_room: int = config_field(default_of(BranchingOptions, "min_room"), "tree_min_room")
    """A fork position needs at least this many tokens left under the completion cap."""
    fork_top: float = config_field(0.05, "iib_fork_top")
    """Share of a rollout's tokens (highest entropy) that are candidate fork points."""


class LatentBranching:
    """A run's latent codes: z per branch, the injection W z, and the CVAE trained online on correct continuations.

    mode: 'cvae' (z ~ p(z | prefix)) or 'random' (z ~ N(0, I), no CVAE: the ablation the authors' code amounts to).
    """

    def __init__(self, mode: str, hidden_size: int, embed_norm: float, latent_dim: int = 16,
                 inject_scale: float = 0.25, cvae_hidden: int = 128, cvae_lr: float = 1e-3, cvae_steps: int = 4,
                 kl_weight: float = 1.0, generator: torch.Generator | None = None, device: str | torch.device = "cpu"):
        if mode not in ("cvae", "random"):
            raise ValueError(f"latent mode must be cvae or random; got {mode!r}")
        self.mode, self.latent_dim, self.generator = mode, latent_dim, generator
        self.cvae_steps, self.kl_weight = cvae_steps, kl_weight
        self.injector = LatentInjector(latent_dim, hidden_size, inject_scale, embed_norm, generator).to(device)
        self.cvae = ConditionalVAE(hidden_size, latent_dim, cvae_hidden) if mode == "cvae" else None
        self.cvae_opt = torch.optim.Adam(self.cvae.parameters(), lr=cvae_lr) if self.cvae is not None else None
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        """(prefix feature, continuation feature) pairs of correct rollouts, waiting for :meth:`fit`."""

    def sample(self, cond: torch.Tensor) -> torch.Tensor:
        """(m, H) prefix features -> (m, Z) latent codes."""
        if self.cvae is None:
            return torch.randn((cond.shape[0], self.latent_dim), generator=self.generator)
        return self.cvae.sample_prior(cond, self.generator)

    @torch.no_grad()
    def offsets(self, z: torch.Tensor) -> torch.Tensor:
        """(m, Z) -> (m, H) embedding offsets for the engine."""
        return self.injector(z.to(self.injector.proj.weight.device)).float().cpu()

    def remember(self, cond: torch.Tensor, continuation: torch.Tensor) -> None:
        if self.cvae is not None:
            self.pending.append((cond, continuation))

    def fit(self) -> dict[str, float]:
        """``cvae_steps`` Adam steps on the pairs collected since the last call; their metrics (empty if none)."""
        if self.cvae is None or not self.pending:
            self.pending = []
            return {}
        cond = torch.stack([c for c, _ in self.pending])
        x = torch.stack([x for _, x in self.pending])
        self.pending = []
        metrics: dict[str, float] = {}
        for _ in range(self.cvae_steps):
            loss, metrics = self.cvae.loss(x, cond, self.kl_weight, self.generator)
            self.cvae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.cvae_opt.step()
        metrics["cvae/pairs"] = float(x.shape[0])
        return metrics

    def state_dict(self) -> dict:
        out = {"injector": self.injector.state_dict()}
        if self.cvae is not None:
            out.update(cvae=self.cvae.state_dict(), cvae_opt=self.cvae_opt.state_dict())
        return out

    def load_state_dict(self, state: dict) -> None:
        self.injector.load_state_dict(state["injector"])
        if self.cvae is not None:
            self.cvae.load_state_dict(state["cvae"])
            self.cvae_opt.load_state_dict(state["cvae_opt"])


@torch.no_grad()
def hidden_cumsums(model, seqs: list[list[int]], pad_id: int, chunk: int = 64) -> list[torch.Tensor]:
    """Per sequence, the running sum over positions of the model's last-layer hidden states: (len, H) each, on CPU."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(seqs), chunk):
        part = seqs[i:i + chunk]
        ids, mask = right_pad(part, pad_id)
        hidden = last_hidden_states(model, ids.to(device), mask.to(device)).float().cpu()
        out += [hidden[j, :len(s)].cumsum(0) for j, s in enumerate(part)]
    return out


def _locate(leaf: Node, t: int) -> tuple[Node, int]:
    """The node of `leaf`'s path holding completion position t, and t's index inside it."""
    for node in leaf.lineage():
        if node.offset <= t < node.end:
            return node, t - node.offset
    raise ValueError(f"position {t} is outside the trajectory (length {leaf.end})")


def _fork_nodes(ctx: GrowContext, leaf: Node, positions: list[int]) -> dict[int, Node]:
    """Per fork position t, the node to continue from so that the branch keeps tokens [0, t) of `leaf`'s path.

    Splits nodes so that every position is a node boundary: all cuts first (the last one first, so `leaf`'s lineage
    still covers the earlier ones), then each position resolves to the node that now ends there.
    """
    for t in sorted({t for t in positions if t > 0}, reverse=True):
        node, local = _locate(leaf, t)
        if local > 0:
            tail = node.split(local)
            ctx.engine.split(node, tail, local)
    last = leaf
    while last.children:  # the path's end after the cuts (a cut leaf hands its tokens on to its new tail)
        last = last.children[0]
    root = leaf.lineage()[0].parent
    return {t: root if t == 0 else _locate(last, t - 1)[0] for t in set(positions)}


def grow_iib(ctx: GrowContext, trees: list[Tree]) -> None:
    """B0 rollouts, then (rounds - 1) entropy-triggered (latent) branches from each: see the module docstring."""
    grow_independent(ctx, trees)
    s, latent = ctx.options, ctx.extras.get("latent")
    rounds = ctx.shape.rounds
    plans = []  # (tree, leaf, completion ids, fork positions)
    for tree in trees:
        for leaf in tree.leaves():
            ids, _, ents = Tree.completion(leaf)
            cands = fork_candidates(ents, s.fork_top, ctx.cap - s.min_room)
            positions = draw_fork_positions(cands, rounds - 1, ctx.rng) or [0] * (rounds - 1)  # no room: fresh
            plans.append((tree, leaf, ids, positions))
    zs: list[list[torch.Tensor | None]] = [[None] * len(p[3]) for p in plans]
    if latent is not None and plans:
        cums = hidden_cumsums(ctx.engine.model, [tree.prompt_ids + ids for tree, _, ids, _ in plans],
                              ctx.engine.pad_id)
        conds, owners = [], []
        for i, (tree, leaf, ids, positions) in enumerate(plans):
            n_prompt, end = len(tree.prompt_ids), len(tree.prompt_ids) + len(ids)
            for j, t in enumerate(positions):
                cut = n_prompt + t
                cond = cums[i][cut - 1] / cut
                conds.append(cond)
                owners.append((i, j))
                if is_correct(leaf.reward) and end > cut:  # a correct continuation of this prefix: CVAE data
                    latent.remember(cond, (cums[i][end - 1] - cums[i][cut - 1]) / (end - cut))
        for (i, j), z in zip(owners, latent.sample(torch.stack(conds))):
            zs[i][j] = z
    requests, codes = [], []
    for (tree, leaf, _, positions), plan_zs in zip(plans, zs):
        nodes = _fork_nodes(ctx, leaf, positions)
        for t, z in zip(positions, plan_zs):
            node = nodes[t]
            offset = None if z is None else latent.offsets(z[None])
            requests.append(Request(tree, node, 1, ctx.cap - node.end, embed_offset=offset))
            codes.append(z)
    new = []
    for req, z, group in zip(requests, codes, ctx.engine.expand(requests)):
        for cont in group:
            new.append((req.tree, attach(ctx, req.tree, req.node, cont)))
            if z is not None:
                req.node.children[-1].info["z"] = z.detach().float().cpu()
    score_new(ctx, new)


def iib_shape(cfg) -> TreeShape:
    """B0 = tree_b0 rollouts, each with iib_forks branches: G = B0 * (1 + iib_forks) (one round per fork)."""
    return TreeShape(b0=cfg.tree_b0, rounds=1 + cfg.iib_forks, k=cfg.tree_b0, b=1)


def _iib_problems(cfg, shape: TreeShape) -> list[str]:
    room = options_from(IIBSamplerOptions, cfg).min_room
    if room >= cfg.max_completion_length:
        return [f"tree_min_room ({room}) must be < max_completion_length ({cfg.max_completion_length}): no "
                f"fork point of sampler=iib could leave that many tokens"]
    return []


def _iib_data_parallel(cfg, wrapper: str) -> list[str]:
    """What several ranks cannot run: the CVAE is fitted on the whole step's trees; the latent injector is a module
    outside the policy, which FSDP2 does not shard."""
    out = []
    if not cfg.dp_exact:
        out.append("sampler=iib fits its CVAE on the whole step's trees: set dp_exact=true")
    if cfg.iib_latent != "none" and wrapper == "fsdp2":
        out.append("sampler=iib with latents trains a module outside the policy: use data_parallel=ddp")
    return out


register_sampler("iib", grow_iib, shape=iib_shape, shape_fields="tree_b0, iib_forks", problems=_iib_problems,
                 data_parallel=_iib_data_parallel, options=IIBSamplerOptions)
