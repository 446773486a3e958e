"""The parts of a causal LM that memory-bounded passes call directly: its decoder and its LM head.

A full forward materialises logits over the whole vocabulary for every position (N x L x V floats; 1.2 GB per
2,048-token sequence of a 151,936-token vocabulary in float32). Passes that need hidden states only, or log-probs
chunk by chunk, run the decoder and apply the head themselves.
"""

from __future__ import annotations

import torch


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
