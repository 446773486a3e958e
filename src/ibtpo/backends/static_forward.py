"""A one-token decode forward of Llama/Qwen-style decoders over preallocated key/value slots (graph-capturable).

Why not the transformers forward: a decode step here must (a) write each row's new key/value at the row's own
column (rows of one batch are at different lengths: a slot holds its sequence left-aligned, so position == column),
(b) read only the first `ctx` columns of every slot, and (c) do no host synchronisation and no allocation whose size
depends on data, so that the step can be captured once in a CUDA graph per (rows, ctx) bucket and replayed.
transformers 5.23's ``StaticCache`` writes all rows of a step at one shared ``cache_position`` and its masking code
(``masking_utils``) derives the mask from that shared position, so per-row positions would need a hand-made 4D mask
*and* a cache whose update takes per-row columns, i.e. a replacement of both. It is simpler and safer to run the
model's own submodules (norms, projections, q/k norms, rotary embedding, MLP, LM head; so hooks and adapters still
apply) around an attention written here: scores against the slot's first `ctx` keys, a mask built on the device
from per-row positions (column <= position), grouped-query heads without repeating the keys.

Prefill (many tokens per row) is not done here: the backend runs the ordinary transformers forward for it.
"""

from __future__ import annotations

import torch

SUPPORTED_TYPES = ("llama", "qwen2", "qwen3")


def _parts(model):
    """(causal LM, its decoder stack) of a transformers model or a peft wrapper around one."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm, getattr(lm, "model", None)


def supports(model) -> str | None:
    """None when :class:`StaticDecoder` can run `model`; otherwise the reason it cannot (one line)."""
    lm, inner = _parts(model)
    cfg = getattr(lm, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model type {kind!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return "the model has no embed_tokens / layers / norm / rotary_emb decoder stack"
    if any(getattr(layer.self_attn, "sliding_window", None) for layer in inner.layers):
        return "sliding-window attention layers are not supported"
    rope = getattr(inner.rotary_emb, "rope_type", "default")
    if "dynamic" in str(rope) or "longrope" in str(rope):
        return f"rope type {rope!r} changes with the sequence length"
    return None


def _bmm_out_fp32_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``torch.bmm(..., out_dtype=torch.float32)`` run for `dtype` inputs on `device` (newer torch, CUDA)?"""
    try:
        a = torch.ones((2, 2, 8), dtype=dtype, device=device)
        out = torch.bmm(a, a.transpose(1, 2), out_dtype=torch.float32)
        return out.dtype == torch.float32 and bool((out == 8).all())
    except Exception:  # noqa: BLE001  (not available: round scores to the model dtype)
        return False


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class StaticDecoder:
    """One decode step of `model` over key/value slot buffers.

    keys, values: (layers, slots, kv_heads, max_ctx, head_dim) each; batch row i is slot i.
    """

    def __init__(self, model):
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"static rollout backend: {reason}")
        lm, inner = _parts(model)
        self.embed, self.layers, self.norm, self.rotary = inner.embed_tokens, list(inner.layers), inner.norm, \
            inner.rotary_emb
        self.lm_head = lm.get_output_embeddings()
        cfg = lm.config
        first = self.layers[0].self_attn
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = first.head_dim
        self.groups = self.heads // self.kv_heads
        self.scaling = first.scaling
        self.hidden = cfg.hidden_size
        self.n_layers = len(self.layers)
        self.qk_norm = hasattr(first, "q_norm")
        weight = self.embed.weight
        self.device, self.dtype = weight.device, weight.dtype
        self._cols = torch.arange(0, 1, device=self.device)
        self._row_ids = torch.arange(0, 1, device=self.device)
        self.fp32_scores = self.dtype != torch.float32 and _bmm_out_fp32_works(self.device, self.dtype)
        """Attention scores of a half-precision model come out of the matmul in float32 (``bmm(out_dtype=...)``, where
        this torch has it), as in a fused attention kernel; else they are rounded to the model dtype first."""

    def bytes_per_token(self) -> int:
        """Key + value bytes of one token over all layers."""
        return 2 * self.n_layers * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    def alloc(self, slots: int, max_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeroed key and value buffers (layers, slots, kv_heads, max_ctx, head_dim) (zeros: never NaN)."""
        shape = (self.n_layers, slots, self.kv_heads, max_ctx, self.head_dim)
        self._cols = torch.arange(max_ctx, device=self.device)
        self._row_ids = torch.arange(slots, device=self.device)
        return torch.zeros(shape, dtype=self.dtype, device=self.device), \
            torch.zeros(shape, dtype=self.dtype, device=self.device)

    def __call__(self, keys: torch.Tensor, values: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
                 offsets: torch.Tensor, ctx: int) -> torch.Tensor:
        """tokens, pos: (B,) token fed by slot i and its column; offsets: (B, hidden) added to its embedding.

        Writes each row's key/value at (slot i, column pos[i]), attends over columns [0, ctx) with column <= pos[i],
        returns the next-token logits (B, vocab). Requires pos[i] < ctx for every row that matters.
        """
        b = tokens.shape[0]
        h = self.embed(tokens[:, None]) + offsets[:, None].to(self.dtype)  # (B, 1, hidden)
        posq = pos[:, None]
        cos, sin = self.rotary(h, posq)  # (B, 1, head_dim)
        cos, sin = cos[:, None], sin[:, None]
        rows = self._row_ids[:b]
        allowed = self._cols[:ctx][None, :] <= posq  # (B, ctx)
        bias = torch.zeros((b, ctx), dtype=torch.float32, device=self.device).masked_fill(~allowed, float("-inf"))
        bias = bias[:, None, None, :]  # (B, 1, 1, ctx) over (kv head, group)
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(b, 1, self.heads, self.head_dim)
            k = attn.k_proj(x).view(b, 1, self.kv_heads, self.head_dim)
            v = attn.v_proj(x).view(b, 1, self.kv_heads, self.head_dim)
            if self.qk_norm:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = _rotate(q.transpose(1, 2), cos, sin)  # (B, heads, 1, head_dim)
            k = _rotate(k.transpose(1, 2), cos, sin)  # (B, kv_heads, 1, head_dim)
            keys[i][rows, :, pos] = k[:, :, 0]
            values[i][rows, :, pos] = v.transpose(1, 2)[:, :, 0]
            kk = keys[i][:b, :, :ctx]  # (B, kv_heads, ctx, head_dim)
            vv = values[i][:b, :, :ctx]
            qg = q.reshape(b, self.kv_heads, self.groups, self.head_dim)  # heads are grouped per kv head
            if self.fp32_scores:
                scores = torch.bmm(qg.reshape(b * self.kv_heads, self.groups, self.head_dim),
                                   kk.reshape(b * self.kv_heads, ctx, self.head_dim).transpose(1, 2),
                                   out_dtype=torch.float32).view(b, self.kv_heads, self.groups, ctx)
            else:
                scores = torch.matmul(qg, kk.transpose(-1, -2)).float()
            scores = scores * self.scaling  # (B, kv_heads, groups, ctx)
            probs = (scores + bias).softmax(-1).to(vv.dtype)
            out = torch.matmul(probs, vv).reshape(b, 1, self.heads * self.head_dim)
            h = h + attn.o_proj(out)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.lm_head(self.norm(h))[:, 0]
