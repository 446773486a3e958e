"""Data-parallel training over ``torch.distributed``: process group, wrapping, sharding and global reductions.

Launched by ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment), every process (rank) runs
the same :class:`~ibtpo.training.trainer.Trainer`; this module is what makes N ranks do the work of one process:

- **Questions.** Every rank draws the same global question batch from the run's seed and keeps a contiguous block of
  it (:meth:`DataParallel.share`), so the union over ranks, in rank order, is the 1-process batch. Whole trees stay
  on one rank. With ``dp_exact`` every rank grows every tree (the same draws as one process) and keeps its block of
  rows after the advantages: the run is the 1-process run, with only the update sharded.
- **The update.** A mini-batch is a block of the global row order (one permutation, drawn on rank 0 and broadcast);
  each rank runs the rows it holds. The loss divides by the GLOBAL token or sequence count of the mini-batch
  (:meth:`DataParallel.accumulate_args`), the loss is multiplied by the world size to undo the wrapper's gradient
  mean, so the summed gradient equals the 1-process gradient; every rank runs the same number of micro-batches
  (padding with zero-weight ones), as FSDP2 and DDP need, and gradients are reduced on the last one only.
  Token selections over a whole mini-batch (Clip-Cov, KL-Cov) are made over every rank's rows
  (:meth:`DataParallel.global_selection`).
- **Wrappers** (``data_parallel``): ``ddp`` = ``DistributedDataParallel`` around the policy (the policy object itself
  keeps serving rollouts and evaluation); ``fsdp2`` = ``torch.distributed.fsdp.fully_shard`` on each decoder layer
  and the root of a training copy, whose full weights are gathered into the policy after every update (the rollout
  copy, as verl syncs weights into its inference engine); ``auto`` = fsdp2 on CUDA, ddp on CPU.
- **Reductions**: metric dictionaries are combined across ranks with :func:`combine_metrics` (sums, maxima,
  weighted means); only rank 0 writes files (:func:`is_writer`).
"""

from __future__ import annotations

import contextlib
import copy
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ibtpo.algos.losses import SUMMED_METRICS
from ibtpo.rollout.samplers import SAMPLERS
from ibtpo.training.dist_checkpoint import save_data_parallel
from ibtpo.training.world import RANK_SEED_STRIDE, LocalWorld, env_world

SUMMED_KEYS = ("actor/loss", *SUMMED_METRICS, "reward/errors", "reward/none")
"""Metrics whose per-rank values add up to the global value (loss terms divided by a global count, counts)."""
SAME_KEYS = ("actor/grad_norm", "actor/lr", "train/tokens", "train/questions")
"""Metrics every rank computes identically (taken from rank 0)."""


_MONITOR: dict[str, Any] = {}
"""The gloo group and timeout :func:`peer_failure` uses to find the ranks that stopped answering."""


class DistError(RuntimeError):
    """A data-parallel setting that cannot work; the message is one line naming the field."""


def init_process_group(device: torch.device, timeout_s: float) -> None:
    """Join the launcher's process group (env://): nccl on CUDA, gloo otherwise; `timeout_s` bounds every collective,
    so a rank that stops answering ends the job instead of hanging it."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    # a separate gloo group: after a failed collective the main group's connections are closed
    _MONITOR.update(group=dist.new_group(backend="gloo"), timeout=timedelta(seconds=min(timeout_s, 60.0)))


def peer_failure(exc: BaseException) -> str | None:
    """One line for a collective that failed because another rank died or stopped answering (the process group's
    timeout, a closed connection); None for any other error or outside a data-parallel run."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc).strip()
    markers = ("gloo", "NCCL", "Connection", "timed out", "Timeout", "closed", "reset by peer")
    if not isinstance(exc, dist.DistError) and not (isinstance(exc, RuntimeError) and any(m in text for m in markers)):
        return None
    first = text.splitlines()[0][:240] if text else type(exc).__name__
    who = _silent_ranks()
    return (f"rank {dist.get_rank()}: a collective failed: {who or 'another rank'} died or stopped answering "
            f"({first}); the last checkpoint is kept: continue with --resume")


def _silent_ranks() -> str:
    """Rank 0 only: 'rank(s) N, M' that do not reach a monitored barrier (gloo), or '' when unknown."""
    if dist.get_rank() != 0 or "timeout" not in _MONITOR:
        return ""
    try:
        dist.monitored_barrier(group=_MONITOR["group"], timeout=_MONITOR["timeout"], wait_all_ranks=True)
    except RuntimeError as exc:
        found = re.search(r"Ranks? ([\d, ]+) failed to pass", str(exc))
        if found:
            return f"rank(s) {found.group(1).strip().rstrip(',')}"
        found = re.search(r"[Rr]ank (\d+)", str(exc).split("]", 1)[-1])
        return f"rank {found.group(1)}" if found else ""
    return ""


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when launched with several ranks on CUDA without an index, else
    `device`."""
    if device.type == "cuda" and device.index is None and env_world()[1] > 1:
        return torch.device("cuda", env_world()[2])
    return device


def check_data_parallel(cfg, world: int) -> None:
    """Raise DistError (one line naming the field) for settings a world of `world` ranks cannot run."""
    if cfg.questions_per_step < world:
        raise DistError(f"questions_per_step ({cfg.questions_per_step}) must be >= the world size {world}: every rank "
                        f"grows the trees of at least one question")
    if not cfg.dp_exact and cfg.scale_rewards == "batch":
        raise DistError("scale_rewards=batch needs the whole batch's rewards on every rank: set dp_exact=true")
    for problem in SAMPLERS.get(cfg.sampler).data_parallel(cfg, wrapper_kind(cfg)):  # the sampler's own needs
        raise DistError(problem)


def wrapper_kind(cfg) -> str:
    """The wrapper ``data_parallel`` names: auto = fsdp2 on CUDA, ddp elsewhere."""
    if cfg.data_parallel != "auto":
        return cfg.data_parallel
    return "fsdp2" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "ddp"


@dataclass
class DataParallel(LocalWorld):
    """This rank's view of a data-parallel run: the world of N ranks (the one-process world: ``training.world``)."""

    rank: int
    world: int
    kind: str
    """ddp or fsdp2."""
    exact: bool
    """dp_exact: every rank grows every tree (the 1-process run, update sharded)."""
    train_model: torch.nn.Module | None = None
    """The wrapped model the gradient forward runs on (set by :meth:`wrap`)."""
    policy: torch.nn.Module | None = None
    """The unwrapped full model that samples, evaluates and is saved."""
    positions: torch.Tensor | None = None
    """Places of this rank's rows in the current mini-batch's global row order (set by :meth:`minibatches`)."""

    wrapped = True  # the gradient forward runs through DDP or FSDP2

    # -- setup ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, cfg, device: torch.device) -> "DataParallel | None":
        """Join the process group when launched with WORLD_SIZE > 1 (None in one process)."""
        world = env_world()[1]
        if world <= 1 and not (dist.is_available() and dist.is_initialized()):
            return None
        check_data_parallel(cfg, world)
        init_process_group(device, cfg.dist_timeout_s)
        if dist.get_world_size() <= 1:
            return None
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), kind=wrapper_kind(cfg), exact=cfg.dp_exact)

    @property
    def frozen_lockstep(self):
        """FSDP2: passes -> the most any rank runs over a sharded frozen model (its all-gathers pair up)."""
        return (lambda n: max(self.all_gather_int(n))) if self.kind == "fsdp2" else None

    def logits_chunk(self, tokens: int) -> int:
        """The wrapper must see the whole forward: the LM head runs inside it, unchunked."""
        return 2**62

    def wrap(self, policy: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model the gradient forward runs on: DDP around `policy`, or an FSDP2-sharded copy of it."""
        self.policy = policy
        if self.kind == "ddp":
            self.train_model = _PolicyDDP(policy, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            from torch.distributed.fsdp import fully_shard

            model = copy.deepcopy(policy)
            for module in decoder_layers(model):
                fully_shard(module)
            fully_shard(model)
            self.train_model = model
        return self.train_model

    def shard_frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2: shard a frozen model (the KL reference) like the policy; DDP: `model` unchanged (no gradients)."""
        if self.kind != "fsdp2":
            return model
        from torch.distributed.fsdp import fully_shard

        for module in decoder_layers(model):
            fully_shard(module)
        fully_shard(model)
        return model

    def sync_policy(self) -> None:
        """FSDP2: gather the trained shards into the full rollout policy (every rank); DDP shares its parameters."""
        if self.kind != "fsdp2":
            return
        from torch.distributed.tensor import DTensor

        with torch.no_grad():
            for (name, p), (name2, q) in zip(self.train_model.named_parameters(), self.policy.named_parameters()):
                assert name == name2, (name, name2)
                q.copy_(p.full_tensor() if isinstance(p, DTensor) else p)

    # -- questions and rows --------------------------------------------------------------------------------------
    def share(self, n: int, rank: int | None = None) -> slice:
        """This rank's contiguous block of n items (sizes differ by at most one; the first ranks get the extra)."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.world)
        start = rank * base + min(rank, extra)
        return slice(start, start + base + (rank < extra))

    def keep_rows(self, group_ids: torch.Tensor, n_questions: int) -> torch.Tensor:
        """dp_exact: the rows (indices into the global batch) of this rank's block of questions."""
        block = self.share(n_questions)
        return ((group_ids >= block.start) & (group_ids < block.stop)).nonzero().squeeze(-1)

    def sampling_seed(self, seed: int) -> int:
        """Without ``dp_exact`` rank r grows its own trees: its own sampling streams (rank 0: the run's)."""
        return seed if self.exact else seed + RANK_SEED_STRIDE * self.rank

    def grow_block(self, n: int) -> slice:
        """The questions this rank grows: all (``dp_exact``), or its block."""
        return slice(0, n) if self.exact else self.share(n)

    def gather_grown(self, items: list) -> list:
        """Every rank's grown items (trees, ...) in question order."""
        return items if self.exact else [x for part in self.gather_objects(items) for x in part]

    def rollout_metrics(self, metrics: dict[str, float], trees: list) -> dict[str, float]:
        """Rollout metrics of every rank's trees (``dp_exact``: every rank grew them all)."""
        return metrics if self.exact else self.combine_rollout(metrics, trees)

    def count_grown(self, tokens: int) -> int:
        """Tokens generated by every rank this step."""
        return tokens if self.exact else int(self.all_sum(tokens))

    def train_rows(self, batch, advantages: torch.Tensor, n_questions: int):
        """``dp_exact``: every rank grew every tree; it trains on its block of questions' rows (else all its rows)."""
        if not self.exact:
            return batch, advantages
        keep = self.keep_rows(batch.group_ids, n_questions)
        return batch.select(keep), advantages[keep]

    def minibatches(self, local_rows: int, mini_batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Local row indices of each mini-batch of the global row order (rank r's rows follow rank r-1's).

        The global permutation is drawn from `generator` (as one process would, over all rows) and rank 0's is
        broadcast. A rank without rows in a mini-batch gets an empty tensor (it still takes part in the step)."""
        counts = self.all_gather_int(local_rows)
        total, offset = sum(counts), sum(counts[:self.rank])
        mb = mini_batch_size or total
        order = torch.randperm(total, generator=generator) if mb < total else torch.arange(total)
        dist.broadcast(order, src=0)
        for chunk in order.split(mb):
            in_mine = (chunk >= offset) & (chunk < offset + local_rows)
            self.positions = in_mine.nonzero().squeeze(-1)  # where this rank's rows sit in the mini-batch
            yield chunk[in_mine] - offset

    def accumulate_args(self, mask: torch.Tensor, mode: str, norm_length: int, micro_size: int,
                        has_rows: bool, local_parts: int | None = None) -> dict[str, Any]:
        """Keywords of ``update.accumulate_gradients`` for one mini-batch: the GLOBAL loss denominator, the number of
        micro-batches every rank runs, the loss scale that undoes the wrapper's mean, and the gradient-sync context.
        `local_parts`: this rank's micro-batches when they are not runs of `micro_size` rows (packed layout)."""
        if mode == "token-mean":
            local = mask.float().sum() if has_rows else torch.zeros(())
        else:
            local = ((mask.sum(-1) > 0).float().sum() * (norm_length if mode == "seq-mean-token-sum-norm" else 1)
                     if has_rows else torch.zeros(()))
        parts = local_parts if local_parts is not None else (-(-mask.shape[0] // micro_size) if micro_size else 1)
        stats = torch.tensor([float(local), float(parts)], dtype=torch.float64)
        summed = stats.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        denominator = torch.tensor(max(float(summed[0]), 1.0), dtype=torch.float32, device=mask.device)
        return {"denominator": denominator, "n_parts": int(stats[1]), "loss_scale": float(self.world),
                "sync": self.grad_sync, "global_select": self.global_selection}

    def global_selection(self, selector, old_logp: torch.Tensor, logp: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, cfg) -> torch.Tensor:
        """A whole-mini-batch token selection (Clip-Cov, KL-Cov: ``algos.losses.TOKEN_SELECTORS``) over every rank's
        rows, put back in the mini-batch's global row order (as one process sees it), made on rank 0 (its RNG draws)
        and broadcast; returns this rank's (n, T) rows of it. Rows are padded to the widest rank's width."""
        n, width = mask.shape
        counts = self.all_gather_int(n)
        widths = self.all_gather_int(width)
        rows, cols = max(counts), max(widths)
        stack = torch.zeros(5, rows, cols, dtype=torch.float32, device=mask.device)
        for i, t in enumerate((old_logp, logp, advantages, mask)):
            stack[i, :n, :width] = t.float()
        positions = self.positions if len(self.positions) == n else torch.full((n,), 2**30)
        stack[4, :n, 0] = positions.to(stack)  # the rows' places in the mini-batch (a dummy row goes last)
        gathered = [torch.empty_like(stack) for _ in range(self.world)]
        dist.all_gather(gathered, stack)
        full = torch.cat([g[:, :c] for g, c in zip(gathered, counts)], dim=1)  # (5, total, cols), rank order
        order = full[4, :, 0].argsort(stable=True)
        ordered = full[:, order]
        select = torch.empty(full.shape[1], cols, dtype=logp.dtype, device=mask.device)
        select[order] = selector(ordered[0], ordered[1], ordered[2], ordered[3], cfg).to(logp.dtype)
        dist.broadcast(select, src=0)
        start = sum(counts[:self.rank])
        return select[start:start + n, :width]

    def grad_sync(self, last: bool):
        """Context of one micro-batch's forward/backward: gradients are reduced across ranks on the last one only."""
        if self.kind == "ddp":
            return contextlib.nullcontext() if last else self.train_model.no_sync()
        self.train_model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: list, max_norm: float) -> float:
        """Reduce the gradients of parameters outside the wrapper (IIB-LPO's latent injector: summed over ranks like
        the wrapper's), then clip all to `max_norm` in global norm; returns the norm before clipping."""
        own = {id(p) for p in self.train_model.parameters()}
        for p in params:
            if id(p) not in own and p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world  # the loss was scaled by the world size
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # -- reductions ----------------------------------------------------------------------------------------------
    def all_gather_int(self, value: int) -> list[int]:
        t = torch.zeros(self.world, dtype=torch.long)
        t[self.rank] = value
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_sum(self, value: float) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t[0])

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def combine(self, metrics: dict[str, float], weight: float, weights: dict[str, float] | None = None
                ) -> dict[str, float]:
        """Metrics of all ranks as one dict (see :func:`combine_metrics`); `weight` is this rank's default weight
        (its tokens, rows or questions) and `weights` per-key weights that override it."""
        return combine_metrics(self.gather_objects((metrics, weight, weights or {})))

    def evaluate(self, run_eval, cfg, sets: dict[str, list], records: list | None
                 ) -> tuple[dict[str, float], list | None]:
        """``dp_exact``: every rank evaluates every set with the run's draws; else :meth:`evaluate_sharded`."""
        if self.exact:
            return super().evaluate(run_eval, cfg, sets, records)
        return self.evaluate_sharded(run_eval, cfg, sets, records)

    def evaluate_sharded(self, run_eval, cfg, sets: dict[str, list], records: list | None
                         ) -> tuple[dict[str, float], list | None]:
        """Evaluation of a run without ``dp_exact``: each rank evaluates its block of every set, sampling with its
        own seed (``run_eval(cfg, sets, records) -> {set: metrics}``, e.g. ``evaluation.heldout.evaluate_sets``);
        returns the question-weighted ``val/<set>/<metric>`` means over the ranks and every rank's records (or None)."""
        blocks = {name: problems[self.share(len(problems))] for name, problems in sets.items()}
        mine = {name: problems for name, problems in blocks.items() if problems}
        seeded = cfg.model_copy(update={"seed": self.sampling_seed(cfg.seed)})  # rank 0: the run's draws
        results = run_eval(seeded, mine, records) if mine else {}
        out: dict[str, float] = {}
        for name in sets:  # every rank combines every set, in the same order
            res = self.combine(results.get(name, {}), len(blocks[name]))
            out.update({f"val/{name}/{k}": v for k, v in res.items()})
        if records is not None:
            records = [r for part in self.gather_objects(records) for r in part]
        return out, records

    def combine_rollout(self, metrics: dict[str, float], trees: list) -> dict[str, float]:
        """Rollout metrics of every rank's trees: leaf means weighted by leaves, ``actor/entropy`` by sampled tokens,
        ``reward/std`` recomputed from global sums, the rest (per-question means) weighted by questions."""
        rewards = [float(leaf.reward or 0.0) for t in trees for leaf in t.leaves()]
        n_ent = sum(len(node.entropies) for t in trees for node in t.nodes())
        weights = {k: len(rewards) for k in metrics if k.startswith(("reward/", "response_length/"))}
        weights["actor/entropy"] = n_ent
        stats = (len(rewards), sum(rewards), sum(r * r for r in rewards))
        parts = self.gather_objects((metrics, len(trees), weights, stats))
        out = combine_metrics([p[:3] for p in parts])
        n, s, ss = (sum(p[3][i] for p in parts) for i in range(3))
        if "reward/std" in out and n > 1:
            out["reward/std"] = max(0.0, (ss - s * s / n) / (n - 1)) ** 0.5
        return out

    def masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        """Global mean of `values` over the positions where `mask` is 1, across ranks."""
        t = torch.tensor([float((values * mask).sum()), float(mask.sum())], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t[0] / max(float(t[1]), 1.0))

    # -- files ---------------------------------------------------------------------------------------------------
    @property
    def writer(self) -> bool:
        """Rank 0 writes the run's files."""
        return self.rank == 0

    def metrics_logger(self, run_dir, tensorboard: bool, resume_step: int | None):
        """Rank 0 logs the reduced metrics; the other ranks write nothing."""
        if self.writer:
            return super().metrics_logger(run_dir, tensorboard, resume_step)
        return NullLogger(run_dir / "metrics.jsonl")

    def save(self, run_dir, step: int, policy, tokenizer, state: dict[str, Any], optimizer, generator,
             keep: int) -> None:
        """Every rank: its sharded optimizer state and RNG states; rank 0 the rest (``dist_checkpoint``)."""
        save_data_parallel(run_dir, step, policy, tokenizer, state, self, optimizer, generator, keep)


class _PolicyDDP(torch.nn.parallel.DistributedDataParallel):
    """DDP whose unknown attributes (``get_output_embeddings``, ``config.schema``, ...) are the wrapped model's, so code
    written for a transformers model runs on it; the forward still goes through DDP."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class NullLogger:
    """The metrics logger of ranks > 0: they write nothing (rank 0 writes the reduced metrics)."""

    def __init__(self, path):
        self.path = path

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


def combine_metrics(parts: list[tuple[dict[str, float], float, dict[str, float]]]) -> dict[str, float]:
    """Combine per-rank metrics: ``SUMMED_KEYS`` add up, ``SAME_KEYS`` come from rank 0, keys ending in ``_max``
    take the maximum, every other key is the mean weighted by each rank's weight (per-key weights win).
    `parts`: (metrics, default weight, per-key weights) of every rank, in rank order."""
    keys: list[str] = []
    for metrics, _, _ in parts:
        keys += [k for k in metrics if k not in keys]
    out: dict[str, float] = {}
    for key in keys:
        have = [(m[key], kw.get(key, w)) for m, w, kw in parts if key in m]
        if key in SUMMED_KEYS:
            out[key] = sum(v for v, _ in have)
        elif key in SAME_KEYS:
            out[key] = have[0][0]
        elif key.endswith("_max"):
            out[key] = max(v for v, _ in have)
        else:
            total = sum(w for _, w in have)
            out[key] = (sum(v * w for v, w in have) / total) if total else sum(v for v, _ in have) / len(have)
    return out


def join_world(cfg, device: torch.device) -> LocalWorld:
    """The world of this process: the launcher's data-parallel run (WORLD_SIZE > 1), else one process."""
    return DataParallel.from_env(cfg, device) or LocalWorld()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks FSDP2 shards one by one: the modules of the classes the model names in
    ``_no_split_modules`` (transformers' decoder layers), else the entries of the first ModuleList found."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if found:
        return found
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList):
            return list(module)
    return []
