"""Forward passes over packed rows (``training.packed``): the tree attention mask in the form the model's attention
implementation takes, the per-path log-probs gathered back, and which layout a run uses.

Masks (transformers passes a 4-D mask through unchanged, ``masking_utils._preprocess_mask_arguments``):

- ``sdpa``: no mask but per-path attention blocks (``training.tree_attention``: each path's positions through a causal
  kernel, so nothing crosses a tree or a branch and attention costs what the flattened rows' does); the packed rows
  are then one unpadded row per pass (``one_row``). The dense form, a boolean (R, 1, W, W) mask, True where a query
  may attend (torch's scaled_dot_product_attention), is kind ``bool`` (tests, comparisons);
- ``eager``: the same as an additive float mask (0 / the dtype's minimum);
- ``flex_attention``: a FlexAttention ``BlockMask`` built from the same rule (``k <= q <= visible_end[k]``), so that
  fully masked blocks are skipped on CUDA. Its mask rule is tested on CPU; the CUDA path is untested here.

Other implementations (flash attention kernels take no arbitrary mask) cannot run packed rows.
"""

from __future__ import annotations

import torch

from ibtpo.core.lm import decoder_and_head, head_logprobs, logits_logprobs, LOGITS_CHUNK_BYTES
from ibtpo.training.packed import PackedRows
from ibtpo.training.tree_attention import block_plan, install

MASK_KINDS = {"sdpa": "blocks", "eager": "additive", "flex_attention": "block"}
"""Attention implementations (``config._attn_implementation``) that take a tree mask, and the mask form each gets."""


def attention_kind(model) -> str | None:
    """The mask form `model`'s attention takes (``MASK_KINDS``), or None when it cannot take a tree mask."""
    model = getattr(model, "module", model)  # DDP
    config = getattr(model, "config", None)
    return MASK_KINDS.get(getattr(config, "_attn_implementation", None) or "eager")


def dense_tree_mask(visible_end: torch.Tensor) -> torch.Tensor:
    """(R, W) visible ends -> (R, 1, W, W) bool, [r, 0, q, k] True iff k <= q <= visible_end[r, k]."""
    width = visible_end.shape[1]
    q = torch.arange(width, device=visible_end.device)[:, None]
    k = torch.arange(width, device=visible_end.device)[None, :]
    return ((k <= q) & (q <= visible_end[:, None, :]))[:, None]


def tree_mask_mod(visible_end: torch.Tensor):
    """FlexAttention mask_mod of the same rule as :func:`dense_tree_mask`."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx <= visible_end[b, kv_idx])
    return mask_mod


def one_row(kind: str | None) -> bool:
    """Whether mask form `kind` packs each pass into one unpadded row (``training.packed.pack_paths``)."""
    return kind == "blocks"


def tree_mask(visible_end: torch.Tensor, kind: str, dtype: torch.dtype):
    """The 4-D mask (or BlockMask) of packed rows for a mask `kind` of ``MASK_KINDS`` (``bool``: the dense boolean
    mask; ``blocks`` takes none: a (1, 1, 1, 1) placeholder, so that the model builds no mask of its own)."""
    if kind == "blocks":
        return torch.ones((1, 1, 1, 1), dtype=torch.bool, device=visible_end.device)
    if kind == "block":
        from torch.nn.attention.flex_attention import create_block_mask

        rows, width = visible_end.shape
        return create_block_mask(tree_mask_mod(visible_end), rows, None, width, width, device=visible_end.device)
    mask = dense_tree_mask(visible_end)
    if kind == "additive":
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def packed_logprobs(model, packed: PackedRows, temperature: float, device: torch.device, chunk_tokens: int = 0,
                    whole: bool = False, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-path ((n, T) logp, (n, T) entropy) of the paths of `packed`, zeros off their response columns; gradients
    flow to the model (a token shared by several paths adds up their gradients).

    One forward over the packed rows; the LM head runs on the E entries only, `chunk_tokens` at a time (0 = auto, as
    ``core.lm.token_logprobs``). `whole`: call the model itself (wrappers such as DDP must see the forward), logits at
    every packed position. `kind`: the mask form (default: from the model's attention implementation)."""
    kind = kind or attention_kind(model)
    if kind is None:
        raise ValueError("the model's attention implementation cannot take a tree attention mask")
    ids = packed.input_ids.to(device)
    head = model.get_output_embeddings() if not whole else None
    dtype = head.weight.dtype if head is not None else next(model.parameters()).dtype
    inputs = {"input_ids": ids, "position_ids": packed.position_ids.to(device), "use_cache": False,
              "attention_mask": tree_mask(packed.visible_end.to(device), kind, dtype)}
    plan = None
    if kind == "blocks":
        install()
        plan = inputs["tree_blocks"] = block_plan(packed.blocks, ids.numel()).to(device)
    entry_pos, targets = packed.entry_pos.to(device), packed.entry_target.to(device)
    parts = None if whole else decoder_and_head(model)
    if parts is None:
        logits = model(**inputs).logits
        lp, ent = logits_logprobs(logits.reshape(-1, logits.shape[-1])[entry_pos], targets, temperature)
    else:
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state
        chunk = chunk_tokens or max(1, LOGITS_CHUNK_BYTES // (4 * max(1, head.weight.shape[0])))
        lp, ent = head_logprobs(head, hidden.reshape(-1, hidden.shape[-1])[entry_pos], targets, temperature, chunk)
    if plan is not None and not plan.calls:
        raise ValueError("the model's attention did not take the packed rows' path blocks (not transformers' sdpa "
                         "attention function); use train_layout=flattened or attn_implementation='eager'")
    index = packed.path_entry.to(device)
    on = index >= 0
    safe = index.clamp(min=0)
    zero = torch.zeros((), dtype=lp.dtype, device=device)
    if lp.numel() == 0:
        return torch.zeros(index.shape, device=device), torch.zeros(index.shape, device=device)
    return torch.where(on, lp[safe], zero), torch.where(on, ent[safe], zero)


def choose_layout(requested: str, model, blockers: list[str]) -> tuple[str, str]:
    """(layout, note) of a run: ``train_layout`` `requested` (auto / packed / flattened) given the policy `model` and
    the reasons some component cannot run packed (`blockers`, e.g. an extension's per-row inputs).

    auto: packed when nothing blocks it, else flattened with the reason as its note. packed: raises ValueError with
    the reason when something blocks it."""
    if requested == "flattened":
        return "flattened", ""
    reasons = list(blockers)
    if attention_kind(model) is None:
        impl = getattr(getattr(getattr(model, "module", model), "config", None), "_attn_implementation", None)
        reasons.insert(0, f"attention implementation {impl!r} takes no tree mask (packed needs one of "
                          f"{', '.join(MASK_KINDS)})")
    if not reasons:
        return "packed", ""
    if requested == "packed":
        raise ValueError(f"train_layout=packed: {reasons[0]}")
    return "flattened", f"train_layout=auto: flattened rows, since {reasons[0]}"


def packed_batch_logprobs(model, batch, row_tokens: int, micro_tokens: int, temperature: float,
                          device: torch.device, chunk_tokens: int = 0, whole: bool = False, kind: str | None = None,
                          lockstep=None) -> torch.Tensor:
    """No-grad per-path token log-probs (N, T) of a whole batch on CPU, one pass per micro-batch of packed rows
    (``plan_parts``). `lockstep(n)` -> the passes every rank runs (a sharded model's all-gathers pair up; the extra
    passes re-run the first path and are dropped, and the logits come from the model's own forward); None = this
    rank's own."""
    from ibtpo.training.packed import pack_paths, plan_parts

    kind = kind or attention_kind(model)
    parts = plan_parts(batch, torch.arange(batch.size), row_tokens, micro_tokens, one_row(kind))
    out = torch.zeros(batch.size, batch.input_ids.shape[1] - 1)
    passes = lockstep(len(parts)) if lockstep is not None else len(parts)
    whole = whole or lockstep is not None
    with torch.no_grad():
        for i in range(passes):
            rows = parts[i] if i < len(parts) else torch.zeros(1, dtype=torch.long)
            logp = packed_logprobs(model, pack_paths(batch, rows, row_tokens, one_row=one_row(kind)), temperature,
                                   device, chunk_tokens, whole, kind)[0]
            if i < len(parts):
                out[rows] = logp.float().cpu()
    return out
