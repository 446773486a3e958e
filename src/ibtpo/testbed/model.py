"""The tiny testbed policy: a Qwen3-architecture causal LM built from a config (no download)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3 model sized for a 2-core CPU (defaults: ~0.5M parameters, tied embeddings)."""
    import torch

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)
