"""Loading the policy: the shipped testbed model or any local transformers causal LM."""

from __future__ import annotations

from pathlib import Path

import torch

from ibtpo.config import TESTBED_MODEL

TESTBED_POLICY_DIR = Path(__file__).parent / "testbed" / "policy"


class ModelLoadError(RuntimeError):
    """The model or its tokenizer cannot be loaded; the message is one line naming the path."""


def resolve_model_path(name: str) -> Path:
    """'testbed' -> the shipped policy directory; anything else is a local path."""
    return TESTBED_POLICY_DIR if name == TESTBED_MODEL else Path(name)


def load_policy(name: str, dtype: str = "float32"):
    """(model, tokenizer) from `name`; raises ModelLoadError with a one-line reason."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    if not path.exists():
        hint = " (run `ibtpo pretrain` to rebuild the testbed policy)" if name == TESTBED_MODEL else ""
        raise ModelLoadError(f"model path not found: {path}{hint}")
    if path.is_dir() and not (path / "config.json").exists():
        raise ModelLoadError(f"cannot load a causal LM from {path}: no config.json there (not a transformers model "
                             f"directory)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as exc:  # transformers raises many kinds; the user needs the path and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load a causal LM from {path}: {first}") from None
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"cannot use the model at {path}: its tokenizer has no EOS token (trajectories could not end)")
    embedded = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embedded:
        raise ModelLoadError(f"tokenizer and model at {path} do not match: the tokenizer has {len(tokenizer)} tokens, "
                             f"the model embeds {embedded}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
