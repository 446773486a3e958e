"""The static rollout backend: preallocated KV slots, continuous batching, CUDA-graph-captured decode steps.

Same contract as the eager ``backends.eager.Engine`` (``backends.contract.RolloutBackend``), built for a GPU:

- **Slots.** Keys/values live in two buffers (layers, slots, kv_heads, max_ctx, head_dim) sized from a memory budget.
  A row's sequence is left-aligned in its slot, so a token's position is its column.
- **Forks copy, never re-encode.** As in the eager store, every generated token's key/value is kept per tree node
  (:class:`~ibtpo.backends.static_store.SegmentStore`, one tensor per node); a row continuing node v gets v's prefix
  (prompt + path minus its last token) copied into its slot and feeds the last token itself, which yields the logits
  of its first new token. Prompts and paths without a stored cache are prefilled with the ordinary transformers
  forward (once per request; its n rows copy the result).
- **Continuous batching.** All rows of all requests of a round share the slots; a row that ends frees its slot for
  the next waiting row. Finished rows are found every ``check_every`` steps (one host synchronisation per check,
  none per token): in between, a finished row is frozen (it re-feeds its last token at its last position, which
  rewrites identical keys/values) and records nothing. When nothing waits, the live rows are moved to the lowest
  slots so that a smaller batch bucket covers them.
- **Graphs.** On CUDA the decode forward (``static_forward.StaticDecoder``) of the first `bs` slots over the first
  `ctx` columns is captured once per (bs, ctx) bucket in a ``torch.cuda.CUDAGraph`` and replayed; sampling runs
  outside the graph. On CPU the same code runs eagerly (what the tests check).
- **Same sampling semantics** as the eager engine: behaviour log-probs and entropies of ``softmax(logits / T)`` over
  the full vocabulary, top-k / top-p (``sampling.filter_logits``) only restrict the draw, EOS ends a row, the
  request's limit truncates it. The random stream differs from the eager engine's (rows are drawn per slot).

Counters in ``core.tree.meta``: ``encoded_prefix_tokens`` counts prefix tokens run through the model (a prefill once per
uncached request, plus the re-fed last token of every row), ``reused_prefix_tokens`` the prefix tokens copied.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ibtpo.backends.eager import Request, device_generator, stop_token_ids
from ibtpo.core.sampling import Generation, SamplingParams, draw, left_pad
from ibtpo.backends.static_forward import StaticDecoder
from ibtpo.backends.static_store import SegmentStore, SlotPool, batch_buckets, bucket_at_least, ctx_bucket
from ibtpo.core.tree import Node, Tree


@dataclass
class StaticContinuation(Generation):
    """One generated row, with its keys/values for the node store."""

    kv: torch.Tensor | None = field(default=None, repr=False)
    """(layers, 2, kv_heads, 1 + fed tokens, head_dim): the re-fed last prefix token, then every generated token
    that was fed (all but the last); None when the row keeps no cache."""


@dataclass
class _Row:
    req: int
    """Index of the request (and of its group in the output)."""
    j: int
    """Index of the row in its request's group."""
    limit: int
    length: int
    """Prefix tokens including the last one, which the row feeds first (its column is length - 1)."""
    last: int
    offset: torch.Tensor | None
    keep: bool


class StaticBackend:
    """Slot-based batched continuation of tree nodes (see the module docstring); counts tokens in `tree.meta`.

    slots_gib: GiB of the slot buffers (0 = auto: 35% of the free GPU memory, 1 GiB on CPU); max_rows caps the
    slots (0 = ``params.max_rows``, 0 there too = no cap); ``params.kv_budget_bytes`` bounds the node caches;
    check_every: decode steps between checks for finished rows; ctx_step: attention reads the first multiple of
    ctx_step columns that covers every live row; use_graphs: capture CUDA graphs (default: on CUDA); prefill_rows:
    rows per prefill forward.
    """

    def __init__(self, model, params: SamplingParams, eos_id: int, pad_id: int,
                 generator: torch.Generator | None = None, prefix_reuse: bool = True, slots_gib: float = 0.0,
                 max_rows: int = 0, check_every: int = 8, ctx_step: int = 128, use_graphs: bool | None = None,
                 prefill_rows: int = 32):
        self.model = model
        self.params = params
        self.eos_id, self.pad_id = eos_id, pad_id
        self.prefix_reuse = prefix_reuse
        self.keep_kv = prefix_reuse
        self.dec = StaticDecoder(model)
        self.device = self.dec.device
        self.stop_ids = stop_token_ids(model, eos_id).to(self.device)
        self._stop_set = set(self.stop_ids.tolist())
        self.generator = device_generator(generator, self.device)
        self.slots_gib, self.max_rows = slots_gib, max_rows
        self.check_every, self.ctx_step, self.prefill_rows = max(1, check_every), ctx_step, prefill_rows
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.store = SegmentStore(params.kv_budget_bytes)
        self.keys = self.values = None
        self.slots, self.max_ctx = 0, 0
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._graph_pool = None
        self.stats = {"steps": 0, "row_steps": 0, "checks": 0, "graphs": 0, "capture_s": 0.0, "moves": 0,
                      "prefill_rows": 0}
        """steps: decode steps; row_steps: rows computed over all steps (bucket sizes); graphs: captures (taking
        capture_s seconds of host time); moves: rows moved to lower slots; prefill_rows: sequences prefilled."""

    def reset(self, params: SamplingParams, generator: torch.Generator | None, prefix_reuse: bool,
              slots_gib: float = 0.0) -> "StaticBackend":
        """Reuse this backend (its slot buffers and captured graphs) for a new growth with other settings."""
        self.release()
        self.params, self.prefix_reuse, self.keep_kv = params, prefix_reuse, prefix_reuse
        self.generator = device_generator(generator, self.device)
        self.slots_gib = slots_gib
        self.store.budget = params.kv_budget_bytes
        return self

    def free(self) -> None:
        """Drop the node caches, slot buffers and graphs (the next expand allocates and captures again)."""
        self.release()
        self._drop_buffers()

    def _drop_buffers(self) -> None:
        self.keys = self.values = None
        self.graphs.clear()
        self._graph_pool = None
        self.slots, self.max_ctx = 0, 0

    # --- the rollout-backend boundary -------------------------------------------------------------------------------
    def adopt(self, node: Node, cont: StaticContinuation, begin: int, end: int) -> None:
        """`node` holds tokens [begin, end) of `cont`: keep the fed part of that slice of its keys/values (views)."""
        if cont.kv is not None:
            fed = cont.kv.shape[-2] - 1
            self.store.put(node, cont.kv[..., 1 + min(begin, fed):1 + min(end, fed), :])

    def split(self, head: Node, tail: Node, at: int) -> None:
        self.store.split(head, tail, at)

    def release(self) -> None:
        self.store.clear()

    # --- setup ------------------------------------------------------------------------------------------------------
    def _budget_bytes(self) -> int:
        if self.slots_gib > 0:
            return int(self.slots_gib * 2**30)
        if self.device.type == "cuda":
            held = 0 if self.keys is None else 2 * self.keys.numel() * self.keys.element_size()
            return int(0.35 * (torch.cuda.mem_get_info(self.device)[0] + held))
        return 2**30

    def _ensure(self, rows: int, need_ctx: int) -> None:
        """Slot buffers of at least `need_ctx` columns and min(rows, max_rows, budget) slots (grown, never shrunk)."""
        max_ctx = max(self.max_ctx, ctx_bucket(need_ctx, self.ctx_step, 1 << 30))
        budget = self._budget_bytes()
        cap = budget // (self.dec.bytes_per_token() * max_ctx)
        cap_rows = self.max_rows or self.params.max_rows
        want = min(rows, cap_rows) if cap_rows else rows
        slots = min(max(want, self.slots), cap)
        if slots < 1:
            raise ValueError(f"static rollout backend: the KV budget ({budget / 2**30:.2f} GiB, slots_gib) "
                             f"holds no slot of {max_ctx} tokens")
        if self.keys is not None and self.max_ctx >= max_ctx and self.slots >= slots:
            return
        self._drop_buffers()  # the node caches stay: they are separate tensors
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.keys, self.values = self.dec.alloc(slots, max_ctx)
        self.slots, self.max_ctx = slots, max_ctx
        self.buckets = batch_buckets(slots)
        dev = self.device
        self.tok_in = torch.full((slots,), self.pad_id, dtype=torch.long, device=dev)
        self.pos_in = torch.zeros((slots,), dtype=torch.long, device=dev)
        self.off_in = torch.zeros((slots, self.dec.hidden), dtype=self.dec.dtype, device=dev)
        self.alive = torch.zeros((slots,), dtype=torch.bool, device=dev)
        self.count = torch.zeros((slots,), dtype=torch.long, device=dev)
        self.limit = torch.ones((slots,), dtype=torch.long, device=dev)

    # --- prefill ----------------------------------------------------------------------------------------------------
    def _prefill(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Segments (layers, 2, kv_heads, len, head_dim) of the given non-empty sequences (transformers forward)."""
        out: list[torch.Tensor | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
        for start in range(0, len(order), self.prefill_rows):
            part = order[start:start + self.prefill_rows]
            ids, mask = left_pad([seqs[i] for i in part], self.pad_id)
            ids, mask = ids.to(self.device), mask.to(self.device)
            cache = DynamicCache()
            self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                       past_key_values=cache, use_cache=True, logits_to_keep=1)
            width = ids.shape[1]
            for j, i in enumerate(part):
                n = len(seqs[i])
                out[i] = torch.stack([torch.stack([layer.keys[j, :, width - n:], layer.values[j, :, width - n:]])
                                      for layer in cache.layers])
            self.stats["prefill_rows"] += len(part)
        return out

    def _plan(self, requests: list[Request], live: list[int]) -> tuple[list[_Row], dict[int, list[torch.Tensor]]]:
        """Rows of the live requests and each request's prefix segments (prefilled where no cache is stored)."""
        rows: list[_Row] = []
        pieces: dict[int, list[torch.Tensor]] = {}
        todo: list[tuple[int, list[int]]] = []
        for i in live:
            r = requests[i]
            seq = r.tree.prompt_ids + Tree.completion(r.node)[0]
            stored = self.store.prefix(r.tree, r.node) if self.keep_kv else None
            meta = r.tree.meta
            if stored is None:
                if len(seq) > 1:
                    todo.append((i, seq[:-1]))
                pieces[i] = []
                meta["encoded_prefix_tokens"] = meta.get("encoded_prefix_tokens", 0) + len(seq) - 1 + r.n
                meta["reused_prefix_tokens"] = meta.get("reused_prefix_tokens", 0) + (r.n - 1) * (len(seq) - 1)
            else:
                pieces[i] = stored
                meta["encoded_prefix_tokens"] = meta.get("encoded_prefix_tokens", 0) + r.n
                meta["reused_prefix_tokens"] = meta.get("reused_prefix_tokens", 0) + r.n * (len(seq) - 1)
            offsets = None if r.embed_offset is None else r.embed_offset.detach().float()
            if offsets is not None and offsets.shape[0] != r.n:
                raise ValueError(f"embed_offset has {offsets.shape[0]} rows for n = {r.n} continuations")
            for j in range(r.n):
                off = None if offsets is None or not bool(offsets[j].any()) else offsets[j]
                rows.append(_Row(i, j, r.limit, len(seq), seq[-1], off, self.keep_kv and off is None))
        if todo:
            for (i, _), seg in zip(todo, self._prefill([s for _, s in todo])):
                pieces[i] = [seg]
                r = requests[i]
                if self.keep_kv and r.node is r.tree.root and self.store.length(r.node) == 0:
                    self.store.put(r.node, seg)  # the prompt minus its last token; completed when a row ends
        return rows, pieces

    # --- the decode loop --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def expand(self, requests: list[Request]) -> list[list[StaticContinuation]]:
        """Run every request through the slots; returns n continuations per request (rewards not set)."""
        out: list[list[StaticContinuation | None]] = [[None] * (r.n if r.n > 0 and r.limit > 0 else 0)
                                                      for r in requests]
        live = [i for i, r in enumerate(requests) if r.n > 0 and r.limit > 0]
        if not live:
            return out
        rows, pieces = self._plan(requests, live)
        self._ensure(len(rows), max(row.length + row.limit for row in rows))
        max_gen = max(row.limit for row in rows)
        self.out_tok = torch.full((self.slots, max_gen + 1), self.pad_id, dtype=torch.long, device=self.device)
        self.out_lp = torch.zeros((self.slots, max_gen + 1), dtype=torch.float32, device=self.device)
        self.out_ent = torch.zeros((self.slots, max_gen + 1), dtype=torch.float32, device=self.device)
        self.trash = torch.tensor(max_gen, device=self.device)
        pool = SlotPool(self.slots)
        pending = deque(range(len(rows)))
        host_pos = [0] * self.slots
        while pending or pool.used():
            fills = []
            while pending and pool.n_free:
                ri = pending.popleft()
                fills.append((pool.take(ri), ri))
            if fills:
                self._load(fills, rows, pieces, host_pos)
            used = pool.used()
            bs = bucket_at_least(self.buckets, used[-1] + 1)
            ctx = ctx_bucket(max(host_pos[s] for s in used) + self.check_every + 1, self.ctx_step, self.max_ctx)
            for _ in range(self.check_every):
                self._step(bs, ctx)
            self.stats["checks"] += 1
            alive, pos, count = torch.stack([self.alive[:bs].long(), self.pos_in[:bs], self.count[:bs]]).tolist()
            for s in used:
                host_pos[s] = pos[s]
            done = [s for s in used if not alive[s]]
            if done:
                self._harvest(done, [count[s] for s in done], pool, rows, requests, out)
            if not pending:
                self._compact(pool, host_pos)
        return out

    def _load(self, fills: list[tuple[int, int]], rows: list[_Row], pieces: dict[int, list[torch.Tensor]],
              host_pos: list[int]) -> None:
        """Copy each new row's prefix into its slot and set its decode state (the last prefix token comes next)."""
        for s, ri in fills:
            row, col = rows[ri], 0
            for seg in pieces[row.req]:
                n = seg.shape[-2]
                self.keys[:, s, :, col:col + n] = seg[:, 0]
                self.values[:, s, :, col:col + n] = seg[:, 1]
                col += n
            if col != row.length - 1:
                raise RuntimeError(f"prefix segments hold {col} tokens, expected {row.length - 1}")
            host_pos[s] = row.length - 1
        idx = torch.tensor([s for s, _ in fills], device=self.device)
        self.tok_in[idx] = torch.tensor([rows[ri].last for _, ri in fills], device=self.device)
        self.pos_in[idx] = torch.tensor([rows[ri].length - 1 for _, ri in fills], device=self.device)
        self.limit[idx] = torch.tensor([rows[ri].limit for _, ri in fills], device=self.device)
        self.count[idx] = 0
        self.alive[idx] = True
        zero = torch.zeros(self.dec.hidden)
        self.off_in[idx] = torch.stack([zero if rows[ri].offset is None else rows[ri].offset.cpu()
                                        for _, ri in fills]).to(self.device, self.dec.dtype)

    def _forward(self, bs: int, ctx: int) -> torch.Tensor:
        args = (self.keys, self.values, self.tok_in[:bs], self.pos_in[:bs], self.off_in[:bs], ctx)
        if not self.use_graphs:
            return self._eager(args)
        graph = self.graphs.get((bs, ctx))
        if graph is None:
            try:
                graph = self._capture(bs, ctx, args)
            except Exception as exc:  # noqa: BLE001  (a capture failure costs speed, not the rollout)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                if self.dec.fp32_scores:  # the newest op first: retry with scores in the model dtype
                    self.dec.fp32_scores = False
                    self.stats["fp32_scores_error"] = repr(exc)
                    return self._forward(bs, ctx)
                warnings.warn(f"static rollout backend: CUDA graph capture failed ({exc!r}); decoding without graphs")
                self.stats["graph_error"] = repr(exc)
                self.use_graphs = False
                return self._eager(args)
        graph[0].replay()
        return graph[1]

    def _eager(self, args: tuple) -> torch.Tensor:
        """The decode forward without a graph (CPU, or after a failed capture)."""
        try:
            return self.dec(*args)
        except Exception as exc:  # noqa: BLE001
            if not self.dec.fp32_scores:
                raise
            self.dec.fp32_scores = False
            self.stats["fp32_scores_error"] = repr(exc)
            return self.dec(*args)

    def _capture(self, bs: int, ctx: int, args: tuple) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the decode forward of slots [0, bs) over `ctx` columns (after one warm-up run on a side stream)."""
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.dec(*args)  # warm-up; rewrites the keys/values the next step writes anyway (same token, column)
        torch.cuda.current_stream(self.device).wait_stream(side)
        t0 = time.perf_counter()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self._graph_pool):
            logits = self.dec(*args)
        graph = self.graphs[(bs, ctx)] = (g, logits)
        self.stats["graphs"] += 1
        self.stats["capture_s"] += time.perf_counter() - t0
        return graph

    def _step(self, bs: int, ctx: int) -> None:
        """One decode step of slots [0, bs): draw, record and advance the live rows (no host synchronisation)."""
        p = self.params
        tok, lp, ent = draw(self._forward(bs, ctx), p, self.generator)
        alive, count = self.alive[:bs], self.count[:bs]
        col = torch.where(alive, count, self.trash)
        rows = self.dec._row_ids[:bs]
        self.out_tok[rows, col] = tok
        self.out_lp[rows, col] = lp
        self.out_ent[rows, col] = ent
        count = count + alive.long()
        go = alive & ~torch.isin(tok, self.stop_ids) & (count < self.limit[:bs])
        self.count[:bs] = count
        self.tok_in[:bs] = torch.where(go, tok, self.tok_in[:bs])
        self.pos_in[:bs] += go.long()
        self.alive[:bs] = go
        self.stats["steps"] += 1
        self.stats["row_steps"] += bs

    def _harvest(self, done: list[int], counts: list[int], pool: SlotPool, rows: list[_Row],
                 requests: list[Request], out: list[list]) -> None:
        """Turn the finished slots into continuations (with their keys/values when kept) and free the slots."""
        idx = torch.tensor(done, device=self.device)
        toks, lps, ents = self.out_tok[idx].cpu(), self.out_lp[idx].cpu(), self.out_ent[idx].cpu()
        for k, (s, c) in enumerate(zip(done, counts)):
            ri = pool.owner[s]
            row, r = rows[ri], requests[rows[ri].req]
            ids = toks[k, :c].tolist()
            kv = None
            if row.keep and self.store.has_room():
                a = row.length - 1
                kv = torch.stack([self.keys[:, s, :, a:a + c], self.values[:, s, :, a:a + c]], 1)
                want = len(r.tree.prompt_ids) if r.node is r.tree.root else len(r.node.token_ids)
                self.store.complete(r.node, want, kv[..., :1, :])
            cont = StaticContinuation(ids, lps[k, :c].tolist(), ents[k, :c].tolist(),
                                      bool(ids and ids[-1] in self._stop_set), kv)
            out[row.req][row.j] = cont
            pool.give(s)

    def _compact(self, pool: SlotPool, host_pos: list[int]) -> None:
        """Move live rows from high slots into free low ones when that lets a smaller batch bucket cover them."""
        used = pool.used()
        if not used or bucket_at_least(self.buckets, len(used)) >= bucket_at_least(self.buckets, used[-1] + 1):
            return
        n = len(used)
        srcs = [s for s in used if s >= n]
        dsts = [s for s in range(n) if pool.owner[s] < 0][:len(srcs)]
        for src, dst in zip(srcs, dsts):
            width = host_pos[src] + 1
            self.keys[:, dst, :, :width] = self.keys[:, src, :, :width]
            self.values[:, dst, :, :width] = self.values[:, src, :, :width]
            host_pos[dst] = host_pos[src]
            pool.move(src, dst)
        si = torch.tensor(srcs, device=self.device)
        di = torch.tensor(dsts, device=self.device)
        for buf in (self.tok_in, self.pos_in, self.off_in, self.alive, self.count, self.limit, self.out_tok,
                    self.out_lp, self.out_ent):
            buf[di] = buf[si]
        self.alive[si] = False
        self.stats["moves"] += len(srcs)
