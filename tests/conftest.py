"""Shared fixtures: a tiny randomly initialised testbed-architecture model saved to a temp dir (offline)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ibtpo.testbed.model import build_tiny_model
from ibtpo.testbed.tokenizer import build_char_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A 2-layer, 32-wide Qwen3 model with the testbed tokenizer, saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny_model")
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture
def one_thread():
    """Run a test on one torch thread (tiny tensors: as fast, and immune to a busy machine), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def testbed():
    """The shipped testbed policy (eval mode) and its tokenizer."""
    from ibtpo.training.models import load_policy

    model, tokenizer = load_policy("testbed", "float32", False)
    return model.eval(), tokenizer
