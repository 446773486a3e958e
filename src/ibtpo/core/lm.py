"""The parts of a causal LM that memory-bounded passes call directly (its decoder and its LM head), and the token
log-probs and entropies every pass computes through them (:func:`token_logprobs`).

A full forward materialises logits over the whole vocabulary for every position (N x L x V floats; 1.2 GB per
2,048-token sequence of a 151,936-token vocabulary in float32). Passes that need hidden states only, or log-probs
chunk by chunk, run the decoder and apply the head themselves.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, LM head) of a plain causal LM whose logits are head(decoder's last hidden states), or None when the
    model changes its logits in other ways (soft-capping, logit scales) or hides its parts (callers then use the full
    forward). Works through peft wrappers, whose attribute lookups reach the base model."""
    config = getattr(model, "config", None)
    if any(getattr(config, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def last_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, L, H) final hidden states (after the last norm, what the LM head reads), without computing logits when the
    decoder can be called alone."""
    parts = decoder_and_head(model)
    if parts is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[-1]
    return parts[0](input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


LOGITS_CHUNK_BYTES = 512 * 2**20
"""Default budget of float32 logits materialised at once by :func:`token_logprobs` (0.5 GiB: 880 tokens of a
151,936-token vocabulary; the whole batch at once for a small vocabulary)."""


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                   embed_offset: torch.Tensor | None = None, offset_start: torch.Tensor | None = None,
                   chunk_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of each predicted token and the entropy of each next-token distribution, at `temperature`.

    (N, L) ids -> ((N, L-1) logp, (N, L-1) entropy). Gradients flow through both (and into `embed_offset`).
    embed_offset (N, hidden) is added to the input embeddings of columns >= offset_start (N,): a per-row
    conditioning vector (IIB-LPO's latent code W z; ``methods.iib_lpo``).

    Memory: when the batch's float32 logits exceed `chunk_tokens` tokens (0 = :data:`LOGITS_CHUNK_BYTES` worth), the
    decoder runs once and the LM head, log-softmax and entropy run chunk by chunk over tokens, each chunk under
    activation checkpointing, so peak memory is set by the chunk, not by N x L x vocabulary. Otherwise (small
    vocabularies) one full forward, as before; both give the same values to float tolerance.
    """
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else 0
    chunk = chunk_tokens or max(1, LOGITS_CHUNK_BYTES // (4 * max(1, vocab)))
    n_tokens = input_ids.shape[0] * (input_ids.shape[1] - 1)
    parts = decoder_and_head(model) if n_tokens > chunk else None
    if parts is None:
        out = model(**_model_inputs(model, input_ids, attention_mask, embed_offset, offset_start))
        return _head_logprobs(out.logits[:, :-1, :], input_ids[:, 1:], temperature)
    decoder, head = parts
    hidden = decoder(**_model_inputs(model, input_ids, attention_mask, embed_offset, offset_start)).last_hidden_state
    n, width = input_ids.shape[0], input_ids.shape[1] - 1
    flat_h = hidden[:, :-1, :].reshape(n * width, -1)
    logp, entropy = head_logprobs(head, flat_h, input_ids[:, 1:].reshape(-1), temperature, chunk)
    return logp.view(n, width), entropy.view(n, width)


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                  chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, H) final hidden states and (tokens,) targets -> ((tokens,) log-probs, (tokens,) entropies) through the
    LM head, `chunk` tokens at a time, each chunk under activation checkpointing when gradients flow."""
    logps, ents = [], []
    for h, t in zip(hidden.split(chunk), targets.split(chunk)):
        if torch.is_grad_enabled() and h.requires_grad:
            lp, ent = checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(head, h, t, temperature)
        logps.append(lp)
        ents.append(ent)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float)
        return empty, empty
    return torch.cat(logps), torch.cat(ents)


def logits_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits and (...) targets -> (log-prob of each target, entropy), at `temperature`, in float32."""
    return _head_logprobs(logits, targets, temperature)


def _model_inputs(model, input_ids, attention_mask, embed_offset, offset_start) -> dict:
    if embed_offset is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    embeds = model.get_input_embeddings()(input_ids)
    on = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= offset_start[:, None]
    embeds = embeds + on[..., None].to(embeds.dtype) * embed_offset[:, None, :].to(embeds.dtype)
    return {"inputs_embeds": embeds, "attention_mask": attention_mask, "use_cache": False}


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, H) hidden states -> ((tokens,) log-prob of `targets`, (tokens,) entropy) through the LM head."""
    return _head_logprobs(head(hidden), targets, temperature)


def _head_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits and (...) targets -> log-prob of each target and entropy, at `temperature`, in float32."""
    logp_all = (logits.float() / temperature).log_softmax(-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
