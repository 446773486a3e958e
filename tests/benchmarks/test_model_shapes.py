"""Random-weight models of real shapes (built on the meta device: no memory) and the step-bias hook."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from model_shapes import DELIMITER, add_step_bias, build_model, parameter_bytes  # noqa: E402


@pytest.mark.parametrize("shape,billions", [("qwen3-0.6b", 0.596), ("qwen3-1.7b", 1.721), ("qwen3-8b", 8.191)])
def test_real_shapes_have_the_published_sizes(shape, billions):
    model, tok = build_model(shape, "meta", torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e9 - billions) < 0.002
    assert parameter_bytes(model) == 2 * n and model.config.vocab_size == 151936
    assert tok.decode([tok.convert_tokens_to_ids(DELIMITER)]) == DELIMITER


def test_step_bias_sets_eos_and_delimiter_rates():
    model, tok = build_model("tiny", "cpu", torch.float32, seed=1)
    add_step_bias(model, tok, mean_length=20, mean_step=5, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, len(tok) - 1, (16, 48), generator=gen)
    with torch.no_grad():
        probs = model(input_ids=ids).logits.softmax(-1).reshape(-1, model.config.vocab_size)
    assert probs[:, len(tok):].sum(-1).max() < 1e-6  # ids the tokenizer lacks are never drawn
    assert probs[:, tok.pad_token_id].max() < 1e-6
    p_eos = probs[:, tok.eos_token_id].mean().item()
    p_delim = probs[:, tok.convert_tokens_to_ids(DELIMITER)].mean().item()
    assert 0.5 / 20 < p_eos < 2 / 20 and 0.5 / 5 < p_delim < 2 / 5
    with pytest.raises(ValueError, match="unknown shape"):
        build_model("qwen9", "meta")
