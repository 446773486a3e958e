"""Sampling parameters, the record of one generated sequence, and the token filters of the decode loop.

The decode loop itself lives in ``backends.eager`` (it continues tree nodes from cached prefixes);
``backends.factory.sample`` is the plain "n samples per prompt" entry point used by evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How tokens are drawn."""

    temperature: float = 1.0
    """Softmax temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    max_new_tokens: int = 64
    """Length cap of a completion; a completion that reaches it without EOS is truncated."""
    greedy: bool = False
    """Take the argmax instead of sampling (log-probs and entropies are still recorded at `temperature`)."""
    max_rows: int = 0
    """Resource limit, not a sampling choice: decode at most this many rows at once (0 = a whole round together)."""
    kv_budget_bytes: int = 0
    """Resource limit: bytes of key/value cache kept for later forks (0 = no limit); past it, forks re-encode."""


@dataclass
class Generation:
    """One sampled continuation."""

    token_ids: list[int]
    """Generated tokens, including the final EOS when there is one."""
    logprobs: list[float]
    """Behaviour log-prob of each generated token."""
    entropies: list[float]
    """Entropy (nats) of the next-token distribution at each generated position."""
    finished: bool
    """True if the completion ended with EOS, False if it was truncated at the length cap."""


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the top-k and outside the nucleus of mass top_p. logits: (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(logits: torch.Tensor, params: SamplingParams,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step's draw from (B, V) logits: (B,) tokens, their behaviour log-probs and the entropies of
    softmax(logits / temperature) over the full vocabulary (top-k / top-p only restrict which token is drawn)."""
    scaled = logits.float() / params.temperature
    logp_all = scaled.log_softmax(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    if params.greedy:
        tok = scaled.argmax(-1)
    else:
        probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tok, logp_all.gather(-1, tok[:, None]).squeeze(-1), entropy


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids, attention_mask), both (B, max_len)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (input_ids, attention_mask), both (B, max_len)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask
