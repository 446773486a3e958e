"""A memory plan for the update of a run: micro-batches sized from a budget, activation checkpointing where it pays.

With ``update_memory_gib`` > 0 (the real-model profile sets it) the activations and logits of one forward/backward
pass get that many GiB. :func:`plan_memory` estimates, from the model's shape, the bytes one sequence of the longest
length (longest prompt + ``max_completion_length``) holds during the backward pass, and picks:

- ``micro_batch_size`` (when not set, i.e. 0): the most rows whose activations fit the budget (at most the
  mini-batch). Gradients are unchanged by it: the loss divides by the whole mini-batch's count
  (``training.update``);
- ``gradient_checkpointing`` (when not set by the user): on when, without it, fewer than :data:`MIN_ROWS` rows would
  fit (recomputing the forward costs ~30% more compute; below that, tiny micro-batches cost more);
- ``logits_chunk_tokens`` (when 0): tokens whose full-vocabulary float32 logits exist at once, a quarter of the
  budget (the log-softmax, its exponent and their gradients hold about four copies).

The estimate (per token and layer, in the parameter dtype): ~12 x hidden + 5 x intermediate values saved for the
backward pass (norm inputs and outputs, q/k/v/o projections, the MLP's gate, up, activation and product), plus the
attention weights (heads x sequence length) where the attention kernel keeps them; with checkpointing only each
layer's input is kept, plus one layer's full activations while it is recomputed. It is an estimate: the plan is
printed at the start of a run so that a user sees it, and a run that cannot fit stops with one line before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 2**30
MIN_ROWS = 4
"""Fewest rows per micro-batch before activation checkpointing is turned on."""
LOGITS_COPIES = 4
"""Copies of a chunk's float32 logits alive at once in its backward (logits, log-softmax, exp, gradient)."""


def _size(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= 0.01 * GIB else f"{n_bytes / 2**20:.2f} MiB"


class MemoryPlanError(ValueError):
    """The run cannot fit its memory budget or its device; the message is one line."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate reads from a transformers config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
        heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1))
        kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
        head_dim = int(getattr(config, "head_dim", 0) or hidden // max(heads, 1))
        return cls(layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 1)),
                   hidden=hidden, intermediate=int(getattr(config, "intermediate_size", 0) or 4 * hidden),
                   heads=heads, kv_dim=kv_heads * head_dim, vocab=int(getattr(config, "vocab_size", 0)))


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated GiB of each part of a run's memory, and the micro-batch settings chosen from the budget."""

    weights_gib: float
    reference_gib: float
    optimizer_gib: float
    """Gradients and AdamW's two moments of the trainable parameters."""
    activations_gib_per_row: float
    logits_gib: float
    kv_gib: float
    """Key/value cache of the largest rollout or evaluation batch at the longest length."""
    seq_len: int
    micro_batch_size: int
    gradient_checkpointing: bool
    logits_chunk_tokens: int
    budget_gib: float

    @property
    def total_gib(self) -> float:
        return (self.weights_gib + self.reference_gib + self.optimizer_gib + self.logits_gib + self.kv_gib
                + self.activations_gib_per_row * self.micro_batch_size)

    def describe(self) -> str:
        ckpt = "on" if self.gradient_checkpointing else "off"
        return (f"memory plan (update_memory_gib={self.budget_gib:g}): weights {self.weights_gib:.2f} GiB"
                + (f", reference {self.reference_gib:.2f}" if self.reference_gib else "")
                + f", gradients+optimizer {self.optimizer_gib:.2f}, activations {self.activations_gib_per_row:.3f} "
                f"per row x micro_batch_size={self.micro_batch_size} (sequences up to {self.seq_len} tokens, "
                f"gradient checkpointing {ckpt}), logits {self.logits_gib:.2f} (logits_chunk_tokens="
                f"{self.logits_chunk_tokens}), KV {self.kv_gib:.2f}; about {self.total_gib:.1f} GiB in all")


def activation_bytes(shape: ModelShape, seq_len: int, elem: int, checkpointing: bool) -> int:
    """Estimated bytes one sequence of `seq_len` tokens holds for the backward pass (see the module docstring)."""
    per_layer = (12 * shape.hidden + 5 * shape.intermediate + shape.heads * seq_len) * elem
    if checkpointing:
        return seq_len * (shape.layers * shape.hidden * elem + per_layer)
    return seq_len * shape.layers * per_layer


def device_bytes(device) -> int | None:
    """Memory of the device: a GPU's total memory, or the machine's RAM (None when unknown)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def plan_memory(shape: ModelShape, elem: int, n_params: int, n_trainable: int, reference: bool, seq_len: int,
                rows: int, rollout_rows: int, budget_gib: float, micro_batch_size: int = 0,
                checkpointing: bool | None = None, logits_chunk_tokens: int = 0,
                device_total: int | None = None) -> MemoryPlan:
    """The plan for an update of mini-batches of `rows` sequences of up to `seq_len` tokens.

    `elem`: bytes per parameter value; `micro_batch_size` / `logits_chunk_tokens` > 0 and `checkpointing` not None
    are the user's settings, kept as given. `rollout_rows`: rows decoded at once (KV). Raises MemoryPlanError (one
    line) when one row cannot fit the budget even with checkpointing, or when the plan exceeds `device_total`."""
    budget = budget_gib * GIB
    chunk = logits_chunk_tokens or max(1, int(budget / (LOGITS_COPIES * 4 * max(1, shape.vocab)) / 4))
    logits = min(chunk, rows * seq_len) * LOGITS_COPIES * 4 * shape.vocab
    room = budget - logits
    ckpt = checkpointing
    if ckpt is None:
        fits = room // max(1, activation_bytes(shape, seq_len, elem, False))
        ckpt = fits < min(MIN_ROWS, rows)
    per_row = activation_bytes(shape, seq_len, elem, ckpt)
    micro = micro_batch_size
    if not micro:
        micro = int(min(rows, room // per_row)) if room > 0 else 0
        if micro < 1:
            raise MemoryPlanError(
                f"update_memory_gib={budget_gib:g}: one sequence of {seq_len} tokens needs ~{_size(per_row)} of "
                f"activations{' even with gradient checkpointing' if ckpt else ''} plus {_size(logits)} of "
                f"logits; raise update_memory_gib, lower max_completion_length, or set micro_batch_size")
    kv = rollout_rows * seq_len * shape.layers * 2 * shape.kv_dim * elem
    plan = MemoryPlan(weights_gib=n_params * elem / GIB, reference_gib=n_params * elem / GIB if reference else 0.0,
                      optimizer_gib=3 * n_trainable * elem / GIB, activations_gib_per_row=per_row / GIB,
                      logits_gib=logits / GIB, kv_gib=kv / GIB, seq_len=seq_len, micro_batch_size=micro,
                      gradient_checkpointing=ckpt, logits_chunk_tokens=chunk, budget_gib=budget_gib)
    if device_total and plan.total_gib * GIB > device_total:
        raise MemoryPlanError(f"the run needs about {plan.total_gib:.1f} GiB ({plan.describe()}) but the device has "
                              f"{device_total / GIB:.1f} GiB; lower update_memory_gib, use LoRA (lora_rank) or "
                              f"bfloat16, or a larger device")
    return plan


MMAP_THRESHOLD = 4 * 2**20
"""CPU: allocations above this many bytes get their own memory map, returned to the system when freed."""


def return_freed_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """On glibc, fix malloc's mmap threshold at `threshold` bytes (``mallopt(M_MMAP_THRESHOLD)``).

    By default glibc raises that threshold (up to 32 MiB) each time a large buffer is freed, so later activation
    buffers come from its heap, which it rarely gives back: a CPU update's resident memory then grows to several times
    the tensors alive at once (measured: 4.3 vs 2.0 GiB peak for a 16-row forward/backward of SmolLM2-135M). A fixed
    threshold returns every buffer over it on free, for a few percent more time. Returns whether it was set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):  # not glibc (macOS, musl): leave the allocator as it is
        return False


def plan_run(cfg, policy, longest_prompt: int, group: int, device, reference: bool) -> MemoryPlan:
    """:func:`plan_memory` for a run: its config (settings the user gave are kept), its policy (trainable parameters
    after LoRA), the longest prompt in tokens, the group size G and whether a reference copy is kept."""
    params = list(policy.parameters())
    elem = params[0].element_size() if params else 4
    rows = cfg.questions_per_step * group
    rollout_rows = max(rows, cfg.eval_batch_questions * (cfg.eval_k + int(cfg.eval_greedy)))
    if cfg.rollout_max_rows:
        rollout_rows = min(rollout_rows, cfg.rollout_max_rows)
    given = cfg.model_fields_set
    return plan_memory(ModelShape.of(policy.config), elem, sum(p.numel() for p in params),
                       sum(p.numel() for p in params if p.requires_grad), reference,
                       longest_prompt + cfg.max_completion_length, cfg.mini_batch_size or rows, rollout_rows,
                       cfg.update_memory_gib, cfg.micro_batch_size,
                       cfg.gradient_checkpointing if "gradient_checkpointing" in given else None,
                       cfg.logits_chunk_tokens, device_bytes(device))
