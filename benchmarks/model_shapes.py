"""Models of real shapes with random weights, built on the device without any download, for speed and memory runs.

    build_model(shape, device, dtype, seed) -> (model, tokenizer)
    add_step_bias(model, tokenizer, ...)    -> hook handle

Speed and memory of a decoder do not depend on its weights, so a ``Qwen3Config`` with a real model's numbers, built
straight on the GPU, measures what the real model would cost. The tokenizer is the testbed's character tokenizer
(works offline) plus one token "\\n\\n", the step delimiter, so that a step ends at one token; the model's vocabulary
keeps the real size (the LM head and the softmax cost what they cost) and :func:`add_step_bias` pushes every id the
tokenizer does not have to a large negative logit. A random model never picks EOS or the delimiter by itself; the
same hook adds constant biases to both so that rows end at varied lengths and steps have a chosen mean length.
"""

from __future__ import annotations

import math

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from ibtpo.testbed.tokenizer import build_char_tokenizer

SHAPES: dict[str, dict] = {
    # numbers of the published Qwen3 configs (vocabulary, widths, depth, heads, tied embeddings)
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-1.7b": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # a CPU smoke-test size (same code paths: GQA with 2 query heads per KV head, q/k norms, a vocabulary wider
    # than the tokenizer)
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
}
DELIMITER = "\n\n"


def build_tokenizer():
    """The testbed character tokenizer with one extra token for the step delimiter "\\n\\n" (offline)."""
    tok = build_char_tokenizer()
    tok.add_tokens([DELIMITER])
    return tok


def build_model(shape: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> tuple[Qwen3ForCausalLM, object]:
    """(model in eval mode, tokenizer) of the named shape, random weights initialised directly on `device`."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    tok = build_tokenizer()
    cfg = Qwen3Config(**SHAPES[shape], max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if cfg.vocab_size < len(tok):
        raise ValueError(f"shape {shape!r} has a vocabulary of {cfg.vocab_size} < the tokenizer's {len(tok)}")
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.eval(), tok


def parameter_bytes(model) -> int:
    """Bytes of the distinct parameters (tied weights once): what a decode step reads at least once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())  # parameters() yields tied ones once


@torch.no_grad()
def add_step_bias(model, tokenizer, mean_length: float = 300.0, mean_step: float = 40.0, temperature: float = 0.7,
                  seed: int = 0, mask_value: float = -1e4):
    """A forward hook on the LM head: ids beyond the tokenizer get `mask_value`; EOS and the delimiter token get
    constant biases such that, at `temperature`, a token is EOS with probability ~1/mean_length and the delimiter
    with probability ~1/mean_step (calibrated on one forward of random text). Returns the hook's handle.

    The probabilities hold on average over positions; the benchmark reports the lengths and steps it actually got.
    """
    head = model.get_output_embeddings()
    weight = head.weight
    vocab, n_tok = weight.shape[0], len(tokenizer)
    eos, delim = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(DELIMITER)
    bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device)
    bias[n_tok:] = mask_value
    for special in tokenizer.all_special_ids:  # pad / bos / unk never drawn
        if special != eos:
            bias[special] = mask_value
    handle = head.register_forward_hook(lambda module, inputs, out: out + bias.to(out.dtype))
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, n_tok - 1, (4, 64), generator=gen).to(weight.device)
    z = model(input_ids=ids).logits.float().reshape(-1, vocab) / temperature
    others = torch.ones(vocab, dtype=torch.bool, device=weight.device)
    others[n_tok:] = False
    others[[eos, delim]] = False
    others[list(tokenizer.all_special_ids)] = False
    lse = torch.logsumexp(z[:, others], -1).mean().item()
    p_eos, p_delim = 1.0 / mean_length, 1.0 / mean_step
    rest = 1.0 - p_eos - p_delim
    if rest <= 0:
        raise ValueError(f"1/mean_length + 1/mean_step must be < 1; got {p_eos + p_delim:.3f}")
    for token, p in ((eos, p_eos), (delim, p_delim)):
        bias[token] = temperature * (lse + math.log(p / rest) - z[:, token].mean().item())
    return handle
