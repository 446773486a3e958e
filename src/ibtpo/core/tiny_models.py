"""Tiny randomly initialised causal LMs of real architectures, with a byte-level BPE chat tokenizer, built offline.

For tests and smoke runs of the real-model path (``model=PATH``) without a hub: ``save_tiny_model("qwen3", DIR)``
writes a transformers model directory that loads like any downloaded checkpoint (``config.schema.json``, weights,
``tokenizer.json`` with a ChatML chat template). The weights are random, so generations are noise: these models
check plumbing (loading, chat templates, tree rollouts with cached prefixes, LoRA, one training step), not learning.

Architectures: ``qwen3`` (Qwen3ForCausalLM), ``llama`` (LlamaForCausalLM), ``gpt2`` (GPT2LMHeadModel; learned
absolute positions, fused c_attn projection) -- the three cache/position layouts the rollout engine must handle.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ARCHITECTURES = ("qwen3", "llama", "gpt2")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Solve the problem step by step. Put the final answer within \\boxed{}.",
    "What is 12 + 30? First, 12 + 30 = 42.\n\nThe answer is \\boxed{42}.",
    "Compute \\frac{1}{2} + \\frac{1}{4} = \\frac{3}{4}. Answer: 3/4",
    "If x^2 = 49 and x > 0, then x = 7.\n\nSo the answer is $7$.",
    "A train travels 60 miles per hour for 2 hours, so it travels 120 miles.\n\n#### 120",
    "0123456789 +-*/=()[]{}^_.,;:!?$%#'\"\\ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def build_chat_tokenizer(vocab_size: int = 400, corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) trained on a small math corpus, with a ChatML chat template.

    EOS is ``<|im_end|>`` (the end of an assistant turn), padding ``<|endoftext|>``.
    """
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator((corpus or _CORPUS) * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  padding_side="left")
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_causal_lm(arch: str, tokenizer, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                         seed: int = 0):
    """A randomly initialised causal LM of architecture `arch` (one of ARCHITECTURES) sized to `tokenizer`."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if arch == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                            num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                            num_key_value_heads=1, head_dim=hidden_size // num_heads,
                                            max_position_embeddings=512, tie_word_embeddings=True, **common))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                            num_hidden_layers=num_layers, num_attention_heads=num_heads,
                                            num_key_value_heads=num_heads, max_position_embeddings=512, **common))
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=512,
                                          **common))
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


def save_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny `arch` model with the chat tokenizer and save both to `out_dir` (a loadable model directory)."""
    out = Path(out_dir)
    tokenizer = build_chat_tokenizer()
    model = build_tiny_causal_lm(arch, tokenizer, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
