"""Batched sampling with a key/value cache, recording what RL needs about every generated token.

Simplifications, on purpose:
- Our own decode loop over a transformers ``DynamicCache`` instead of ``model.generate``: tree rollouts must
  continue from cached prefixes and record per-token behaviour log-probs and entropies, which the loop makes explicit.
- Behaviour log-probs and entropies are those of ``softmax(logits / temperature)`` over the full vocabulary; top-k and
  top-p only restrict which token is drawn. This matches how verl and TRL recompute old log-probs in training.
- Each distinct prompt is encoded once; its cache is repeated for the samples of its group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


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


@torch.no_grad()
def sample(
    model,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    n: int = 1,
) -> list[list[Generation]]:
    """Draw `n` continuations for each prompt. Returns one list of `n` generations per prompt.

    prompts: token-id lists (no padding). All B*n rows decode together; finished rows are masked, not removed.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1, :]
    if n > 1:  # encode each prompt once, then branch its cache into n rows
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
        mask = mask.repeat_interleave(n, 0)
        positions = positions.repeat_interleave(n, 0)
    rows = logits.shape[0]
    next_pos = positions[:, -1:] + 1
    tokens = torch.zeros((rows, 0), dtype=torch.long, device=device)
    logps, ents = [], []
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    for _ in range(params.max_new_tokens):
        scaled = logits.float() / params.temperature
        logp_all = scaled.log_softmax(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        if params.greedy:
            tok = scaled.argmax(-1)
        else:
            probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        logps.append(logp_all.gather(-1, tok[:, None]).squeeze(-1))
        ents.append(ent)
        tokens = torch.cat([tokens, tok[:, None]], dim=1)
        done = done | (tok == eos_id)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
                    use_cache=True)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    logp_t = torch.stack(logps, 1).cpu() if logps else torch.zeros((rows, 0))
    ent_t = torch.stack(ents, 1).cpu() if ents else torch.zeros((rows, 0))
    tokens = tokens.cpu()
    gens: list[Generation] = []
    for r in range(rows):
        row = tokens[r].tolist()
        length = row.index(eos_id) + 1 if eos_id in row else len(row)
        gens.append(Generation(token_ids=row[:length], logprobs=logp_t[r, :length].tolist(),
                               entropies=ent_t[r, :length].tolist(), finished=eos_id in row))
    return [gens[i * n:(i + 1) * n] for i in range(len(prompts))]
