"""The rollout engine: batched decoding that continues trees from cached prefixes.

Every sampler (independent, IBTree, the peer trees) asks the engine for the same thing: "from these nodes of these
trees, draw n continuations each, at most `limit` new tokens". The engine batches all requests of a round, across
questions, into one decode loop and returns the generated rows.

Prefix reuse (``prefix_reuse=True``): the key/value cache of every generated token is kept per tree node
(:class:`KVStore`: the prompt's on the root, each node's own tokens on the node, so a shared prefix is stored once).
Continuing from node v concatenates the cached keys/values along v's lineage, crops the last prefix token and feeds
it again (one token of compute, which yields the logits of the first new token), then decodes. No prefix is re-encoded.
With ``prefix_reuse=False`` every continuation re-encodes its prompt + path (the reference the tests compare to).

Simplified on purpose:
- Caches are plain per-layer (key, value) tensors of a transformers ``DynamicCache``: full-attention decoder models
  (Llama, Qwen, GPT-2, ...). Models with sliding-window or recurrent layers should run with ``prefix_reuse=False``.
- Finished rows are dropped from the running batch (their cache rows are copied out first), so a long straggler
  does not keep paying for finished rows.
- Behaviour log-probs and entropies are those of ``softmax(logits / temperature)`` over the full vocabulary; top-k
  and top-p only restrict which token is drawn (as verl and TRL recompute old log-probs).

Latent conditioning (IIB-LPO): a request may carry ``embed_offset``, one vector per continuation that is added to the
input embedding of the re-fed last prefix token and of every token the row feeds afterwards. Such rows keep no cache
for later forks (their keys/values depend on the offset).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from ibtpo.backends.contract import Request
from ibtpo.backends.node_store import NodeStore
from ibtpo.core.sampling import Generation, SamplingParams, draw, left_pad
from ibtpo.core.tree import Node, Tree

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, (keys, values) of one sequence segment, each (kv_heads, tokens, head_dim)."""


@dataclass
class Continuation(Generation):
    """One generated row, with the caches the tree store keeps."""

    kv: LayerKV | None = field(default=None, repr=False)
    """Cache of the fed tokens of this row (all generated tokens but possibly the last); None without reuse."""
    prefix_last_kv: LayerKV | None = field(default=None, repr=False)
    """Cache of the last prefix token, computed again when the row started (with reuse only)."""


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator for draws on `device`: `generator` itself when it lives there (the CPU path, unchanged), else a
    new one on `device` seeded from one draw of `generator` (deterministic, and resumable through its state)."""
    if generator is None or generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


class KVStore(NodeStore[LayerKV]):
    """The eager engine's per-node caches: per layer, (keys, values) of the node's tokens (``node_store.NodeStore``)."""

    def nbytes(self, value: LayerKV) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in value)

    def tokens(self, value: LayerKV) -> int:
        return value[0][0].shape[-2]

    def cut(self, value: LayerKV, start: int, stop: int | None = None) -> LayerKV:
        return [(k[:, start:stop], v[:, start:stop]) for k, v in value]

    def join(self, first: LayerKV, second: LayerKV) -> LayerKV:
        return [(torch.cat([k, lk], 1), torch.cat([v, lv], 1)) for (k, v), (lk, lv) in zip(first, second)]

    def prefix(self, tree: Tree, node: Node) -> LayerKV | None:
        """Cache of prompt + path up to `node`, minus the last token; None if any piece is missing."""
        kvs = self.lineage(tree, node)
        if not kvs:
            return None
        total = len(tree.prompt_ids) + node.end - 1
        return [(torch.cat([kv[layer][0] for kv in kvs], 1)[:, :total],
                 torch.cat([kv[layer][1] for kv in kvs], 1)[:, :total]) for layer in range(len(kvs[0]))]


def stop_token_ids(model, eos_id: int | list[int]) -> torch.Tensor:
    """The ids that end a completion: `eos_id` and the model's ``generation_config.eos_token_id`` (an id or a list,
    as transformers' generate uses them; chat models often end a turn with a token other than the tokenizer's EOS)."""
    ids = [eos_id] if isinstance(eos_id, int) else list(eos_id)
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += [extra] if isinstance(extra, int) else list(extra or [])
    return torch.tensor(sorted({int(i) for i in ids if i is not None}), dtype=torch.long)


class Engine:
    """Batched continuation of tree nodes with optional prefix KV reuse; counts tokens per tree in `tree.meta`."""

    def __init__(self, model, params: SamplingParams, eos_id: int | list[int], pad_id: int,
                 generator: torch.Generator | None = None, prefix_reuse: bool = True):
        self.model = model
        self.params = params
        self.eos_id, self.pad_id = eos_id, pad_id
        self.stop_ids = stop_token_ids(model, eos_id)
        self.device = next(model.parameters()).device
        self.generator = device_generator(generator, self.device)
        self.prefix_reuse = prefix_reuse
        self.keep_kv = prefix_reuse
        """Keep the caches of generated tokens for later forks (off when nothing forks, e.g. independent sampling)."""
        self.max_rows = params.max_rows
        """Decode at most this many rows at once (0 = all rows of a round together); larger rounds run in chunks."""
        self.store = KVStore(params.kv_budget_bytes)

    # --- the rollout-backend boundary (``backends.contract.RolloutBackend``) ------------------------------------------
    def adopt(self, node: Node, cont: Continuation, begin: int, end: int) -> None:
        """`node` holds tokens [begin, end) of `cont`: keep that slice of the row's cache on it (when there is one)."""
        if cont.kv is not None:
            self.store.put(node, self.store.cut(cont.kv, begin, end))

    def split(self, head: Node, tail: Node, at: int) -> None:
        """`head` was cut after `at` tokens: its cache moves with the tokens."""
        self.store.split(head, tail, at)

    def release(self) -> None:
        """End of a growth: free the per-node caches."""
        self.store.clear()

    # ----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def expand(self, requests: list[Request]) -> list[list[Continuation]]:
        """Run every request in one batched decode loop; returns n continuations per request (rewards not set)."""
        live = [i for i, r in enumerate(requests) if r.n > 0 and r.limit > 0]
        if len(live) < len(requests):  # nothing to draw for some: they get empty groups
            return self._expand_parts(requests, [live])
        if self.max_rows and sum(r.n for r in requests) > self.max_rows:
            return self._expand_chunked(requests)
        prefixes = [self.store.prefix(r.tree, r.node) for r in requests] if self.keep_kv else [None] * len(requests)
        cached = [i for i, p in enumerate(prefixes) if p is not None]
        if not cached:
            return self._expand_encoded(requests)
        if len(cached) < len(requests):  # mixed batch: split it, each part stays batched
            return self._expand_parts(requests, [[i for i, p in enumerate(prefixes) if p is None], cached])
        return self._expand_cached(requests, prefixes)

    def _expand_parts(self, requests: list[Request], parts: list[list[int]]) -> list[list[Continuation]]:
        """Expand each part (a list of request indices) as its own batch; requests in no part get empty groups."""
        out: list[list[Continuation]] = [[] for _ in requests]
        for part in parts:
            if part:
                for i, group in zip(part, self.expand([requests[i] for i in part])):
                    out[i] = group
        return out

    def _expand_chunked(self, requests: list[Request]) -> list[list[Continuation]]:
        """Expand in consecutive chunks of at most ``max_rows`` rows (a request with more rows is split)."""
        out: list[list[Continuation]] = [[] for _ in requests]
        chunk: list[tuple[int, Request]] = []
        rows = 0

        def flush() -> None:
            nonlocal chunk, rows
            for (i, _), group in zip(chunk, self.expand([r for _, r in chunk])):
                out[i] += group
            chunk, rows = [], 0

        for i, r in enumerate(requests):
            done = 0
            while done < r.n:
                take = min(r.n - done, self.max_rows - rows)
                offset = None if r.embed_offset is None else r.embed_offset[done:done + take]
                chunk.append((i, Request(r.tree, r.node, take, r.limit, offset)))
                rows, done = rows + take, done + take
                if rows == self.max_rows:
                    flush()
        if chunk:
            flush()
        return out

    def _row_offsets(self, requests: list[Request]) -> torch.Tensor | None:
        """(rows, hidden) embedding offsets of all continuations (zeros for requests without), or None if none has."""
        if all(r.embed_offset is None for r in requests):
            return None
        width = next(r.embed_offset for r in requests if r.embed_offset is not None).shape[-1]
        parts = [torch.zeros((r.n, width)) if r.embed_offset is None else r.embed_offset.detach().float().cpu()
                 for r in requests]
        return torch.cat(parts).to(self.device)

    def _forward(self, ids: torch.Tensor, offsets: torch.Tensor | None, **kwargs):
        """Model forward; with `offsets` (rows, hidden) added to the input embeddings of the last column."""
        if offsets is None:
            return self.model(input_ids=ids, **kwargs)
        embeds = self.model.get_input_embeddings()(ids)
        embeds[:, -1] += offsets.to(embeds.dtype)
        return self.model(inputs_embeds=embeds, **kwargs)

    def _expand_encoded(self, requests: list[Request]) -> list[list[Continuation]]:
        """Encode each request's prompt + path once, repeat its cache n times, decode."""
        offsets = self._row_offsets(requests)
        if offsets is not None and any(r.n > 1 for r in requests):
            raise ValueError("requests with embed_offset and no cached prefix must have n = 1")
        seqs = [r.tree.prompt_ids + Tree.completion(r.node)[0] for r in requests]
        ids, mask = left_pad(seqs, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self._forward(ids, offsets, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
        width = ids.shape[1]
        for r, seq in zip(requests, seqs):
            r.tree.meta["encoded_prefix_tokens"] = r.tree.meta.get("encoded_prefix_tokens", 0) + len(seq)
            r.tree.meta["reused_prefix_tokens"] = r.tree.meta.get("reused_prefix_tokens", 0) + (r.n - 1) * len(seq)
        if self.keep_kv:  # the prompt's cache goes on the root (only requests from the root get here)
            for j, r in enumerate(requests):
                if r.node is r.tree.root and r.embed_offset is None:
                    self.store.put(r.node, [(layer.keys[j, :, width - len(seqs[j]):].clone(),
                                             layer.values[j, :, width - len(seqs[j]):].clone())
                                            for layer in cache.layers])
        reps = torch.tensor([r.n for r in requests], device=self.device)
        if bool((reps > 1).any()):
            index = torch.repeat_interleave(torch.arange(len(requests), device=self.device), reps)
            cache.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            logits = out.logits[index, -1, :]
        else:
            logits = out.logits[:, -1, :]
        return self._decode(requests, cache, mask, positions[:, -1:] + 1, logits, width, offsets)

    def _expand_cached(self, requests: list[Request], prefixes: list[LayerKV]) -> list[list[Continuation]]:
        """Build the batch cache from stored prefixes (minus the last token), feed the last token, decode."""
        lengths = [p[0][0].shape[-2] for p in prefixes]
        width = max(lengths)
        reps = [r.n for r in requests]
        rows = sum(reps)
        n_layers = len(prefixes[0])
        k0 = prefixes[0][0][0]
        heads, dim = k0.shape[0], k0.shape[-1]
        cache = DynamicCache()
        mask = torch.zeros((rows, width + 1), dtype=torch.long, device=self.device)
        for layer in range(n_layers):
            keys = k0.new_zeros((rows, heads, width, dim))
            values = k0.new_zeros((rows, heads, width, dim))
            row = 0
            for p, n, length in zip(prefixes, reps, lengths):
                if length:
                    keys[row:row + n, :, width - length:] = p[layer][0]
                    values[row:row + n, :, width - length:] = p[layer][1]
                row += n
            if width:
                cache.update(keys, values, layer)
        row = 0
        last_tokens, positions = [], []
        for r, n, length in zip(requests, reps, lengths):
            mask[row:row + n, width - length:] = 1
            row += n
            seq_len = len(r.tree.prompt_ids) + r.node.end
            last = r.node.token_ids[-1] if r.node is not r.tree.root else r.tree.prompt_ids[-1]
            last_tokens += [last] * n
            positions += [seq_len - 1] * n
            r.tree.meta["reused_prefix_tokens"] = r.tree.meta.get("reused_prefix_tokens", 0) + n * length
            r.tree.meta["encoded_prefix_tokens"] = r.tree.meta.get("encoded_prefix_tokens", 0) + n
        tok = torch.tensor(last_tokens, device=self.device)[:, None]
        pos = torch.tensor(positions, device=self.device)[:, None]
        offsets = self._row_offsets(requests)
        out = self._forward(tok, offsets, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        conts = self._decode(requests, cache, mask, pos + 1, out.logits[:, -1, :], width + 1, offsets)
        # the re-fed last prefix token's cache completes a node whose row had stopped right after drawing it
        for r, group in zip(requests, conts):
            if r.node is not r.tree.root and r.embed_offset is None and group[0].prefix_last_kv is not None:
                self.store.complete(r.node, len(r.node.token_ids), group[0].prefix_last_kv)
        return conts

    def _decode(self, requests: list[Request], cache: DynamicCache, mask: torch.Tensor, next_pos: torch.Tensor,
                logits: torch.Tensor, gen_col0: int, offsets: torch.Tensor | None = None) -> list[list[Continuation]]:
        """The decode loop over all rows; rows leave the batch when they draw EOS or reach their limit.

        gen_col0: cache column of the first generated token (the columns before it hold the prefix).
        offsets: (rows, hidden) added to the embedding of every fed token (rows with an offset keep no cache).
        """
        p = self.params
        limits_list = [r.limit for r in requests for _ in range(r.n)]
        rows = len(limits_list)
        limits = torch.tensor(limits_list, device=self.device)
        max_len = max(limits_list)
        tokens = torch.full((rows, max_len), self.pad_id, dtype=torch.long)
        logps = torch.zeros((rows, max_len))
        ents = torch.zeros((rows, max_len))
        lengths = [0] * rows
        finished = [False] * rows
        kvs: list[LayerKV | None] = [None] * rows
        refed: list[LayerKV | None] = [None] * rows
        active = torch.arange(rows, device=self.device)
        keep_row = [self.keep_kv and (offsets is None or not bool(offsets[r].any())) for r in range(rows)]
        for t in range(max_len):
            tok, lp, ent = draw(logits, p, self.generator)
            act = active.cpu()
            tokens[act, t] = tok.cpu()
            logps[act, t] = lp.cpu()
            ents[act, t] = ent.cpu()
            ended = torch.isin(tok, self.stop_ids.to(tok.device))
            stop = ended | (limits[active] <= t + 1)
            if bool(stop.any()):
                for i in stop.nonzero().flatten().tolist():
                    r = int(act[i])
                    lengths[r] = t + 1
                    finished[r] = bool(ended[i])
                    if keep_row[r] and self.store.has_room():
                        kvs[r] = [(layer.keys[i, :, gen_col0:].clone(), layer.values[i, :, gen_col0:].clone())
                                  for layer in cache.layers]  # the t tokens fed so far (none at t = 0)
                        if gen_col0 > 0:
                            refed[r] = [(layer.keys[i, :, gen_col0 - 1:gen_col0].clone(),
                                         layer.values[i, :, gen_col0 - 1:gen_col0].clone()) for layer in cache.layers]
                keep = (~stop).nonzero().flatten()
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                active, mask, next_pos, tok = active[keep], mask[keep], next_pos[keep], tok[keep]
            mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self._forward(tok[:, None], None if offsets is None else offsets[active], attention_mask=mask,
                                position_ids=next_pos, past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        results: list[list[Continuation]] = []
        row = 0
        for r in requests:
            group = []
            for _ in range(r.n):
                n = lengths[row]
                group.append(Continuation(tokens[row, :n].tolist(), logps[row, :n].tolist(), ents[row, :n].tolist(),
                                          finished[row], kvs[row], refed[row]))
                row += 1
            results.append(group)
        return results
