"""Loading the policy: the shipped testbed model, a local transformers causal LM, a hub id, or a LoRA checkpoint.

- ``model=testbed`` is the shipped tiny policy; any other value is a local directory or a Hugging Face hub id.
  Runs are offline (``HF_HUB_OFFLINE=1`` in ``run.sh``): a hub id loads from the local Hugging Face cache.
- A directory holding ``adapter_config.json`` (what a LoRA run's checkpoints hold) is loaded as its base model
  (``base_model_name_or_path``) with the adapters attached.
- A LoRA checkpoint finds its base model by the absolute path or hub id in ``adapter_config.json``, else by the path
  relative to the checkpoint stored in ``base_model.json`` (so a run moved together with its base model still
  loads); otherwise a one-line error names both.
- LoRA through peft (``lora_rank > 0``): only the adapters train and are saved; the base weights stay frozen, so
  the KL reference is the same model with its adapters disabled (no second copy in memory).
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ibtpo.config.profiles import TESTBED as TESTBED_MODEL

TESTBED_POLICY_DIR = Path(__file__).parents[1] / "testbed" / "policy"
TESTBED_POLICIES = {TESTBED_MODEL: TESTBED_POLICY_DIR, "testbed-chain": TESTBED_POLICY_DIR.with_name("policy_chain")}
"""Shipped testbed policies by model name: the sum task's and the chain task's."""
ADAPTER_CONFIG = "adapter_config.json"
BASE_REFERENCE = "base_model.json"
"""Next to saved adapters: the base model as loaded, and its path relative to the adapter directory."""


class ModelLoadError(RuntimeError):
    """The model or its tokenizer cannot be loaded; the message is one line naming the path."""


def resolve_model_path(name: str) -> Path:
    """'testbed' -> the shipped policy directory; anything else is a local path (or a hub id, see load_policy)."""
    return TESTBED_POLICIES.get(name, Path(name))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not name.endswith((".json", ".pt"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _source(name: str) -> str:
    """The argument for from_pretrained: a local directory, or a hub id (resolved from the local cache)."""
    path = resolve_model_path(name)
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists():
            raise ModelLoadError(f"cannot load a causal LM from {path}: no config.json there (not a transformers "
                                 f"model directory)")
        return str(path.resolve())  # absolute: what adapters saved on top of it record as their base
    if name in TESTBED_POLICIES:
        raise ModelLoadError(f"model path not found: {path} (run `ibtpo pretrain` to rebuild the testbed policy)")
    if _looks_like_hub_id(name):
        return name
    raise ModelLoadError(f"model path not found: {name}")


def _from_pretrained(name: str, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    src = _source(name)
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype))
    except Exception as exc:  # transformers raises many kinds; the user needs the path and the first line
        hint = (" (not a local path; as a hub id it must already be in the local Hugging Face cache, "
                "since runs are offline: download it first or pass a local copy)") if not Path(src).exists() else ""
        raise ModelLoadError(f"cannot load a causal LM from {src}: {_first_line(exc)}{hint}") from None
    return model, tokenizer


def _check_pair(model, tokenizer, where: str) -> None:
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"cannot use the model at {where}: its tokenizer has no EOS token (trajectories could "
                             f"not end)")
    embedded = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embedded:
        raise ModelLoadError(f"tokenizer and model at {where} do not match: the tokenizer has {len(tokenizer)} tokens, "
                             f"the model embeds {embedded}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


@contextmanager
def _quiet_peft():
    """peft asks transformers (5.x) for `is_gradient_checkpointing`, which warns FutureWarning on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def adapter_base(adapter_dir: Path) -> str:
    """The base model of the LoRA adapters in `adapter_dir`: the stored name if it is a local path that exists or a
    hub id, else the stored path relative to `adapter_dir`; a ModelLoadError naming both otherwise."""
    stored = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    ref_file = adapter_dir / BASE_REFERENCE
    relative = json.loads(ref_file.read_text()).get("relative") if ref_file.exists() else None
    if not stored and not relative:
        raise ModelLoadError(f"cannot load LoRA adapters from {adapter_dir}: {ADAPTER_CONFIG} names no base model")
    if stored and (Path(stored).exists() or stored == TESTBED_MODEL):
        return stored
    if relative and (adapter_dir / relative).exists():
        return str((adapter_dir / relative).resolve())
    if stored and not Path(stored).is_absolute() and _looks_like_hub_id(stored):
        return stored
    tried = " nor ".join(f"'{x}'" for x in (stored, relative and str(adapter_dir / relative)) if x)
    raise ModelLoadError(f"cannot load LoRA adapters from {adapter_dir}: their base model is not found at {tried}; "
                         f"put it back, or set base_model_name_or_path in {adapter_dir / ADAPTER_CONFIG}")


def write_base_reference(adapter_dir: Path, model) -> None:
    """Next to adapters saved in `adapter_dir`, record their base model's path relative to it (BASE_REFERENCE).
    Does nothing for a model without adapters."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return
    base = next(iter(configs.values())).base_model_name_or_path
    ref = {"name_or_path": base}
    if base and Path(base).exists():
        ref["relative"] = os.path.relpath(Path(base).resolve(), Path(adapter_dir).resolve())
    (Path(adapter_dir) / BASE_REFERENCE).write_text(json.dumps(ref, indent=2))


def load_policy(name: str, dtype: str = "float32", gradient_checkpointing: bool = False):
    """(model, tokenizer) from `name`; raises ModelLoadError with a one-line reason.

    A directory with LoRA adapters loads its base model and attaches them (trainable). Gradient checkpointing
    (non-reentrant) trades compute for activation memory in the training forward passes.
    """
    path = resolve_model_path(name)
    if (path / ADAPTER_CONFIG).exists():
        model, tokenizer = _from_pretrained(adapter_base(path), dtype)
        if (path / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        from peft import PeftModel

        try:
            with _quiet_peft():
                model = PeftModel.from_pretrained(model, path, is_trainable=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load LoRA adapters from {path}: {_first_line(exc)}") from None
    else:
        model, tokenizer = _from_pretrained(name, dtype)
    _check_pair(model, tokenizer, str(path if path.exists() else name))
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model, tokenizer


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of `model`'s layers (through a peft wrapper too)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x names it so
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch names it (one-line error if unavailable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelLoadError(f"device={name!r}: not a torch device name (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={name!r}: this machine has no CUDA device (use device=cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device={name!r}: MPS is not available here (use device=cpu or auto)")
    return device


def add_lora(model, rank: int, alpha: float, dropout: float, target_modules: str | list[str]):
    """Wrap `model` with fresh LoRA adapters (peft); only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    if hasattr(model, "peft_config"):  # resumed from a LoRA checkpoint: the adapters are already there
        return model
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    try:
        with _quiet_peft():
            return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                    target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as exc:
        raise ModelLoadError(f"lora_target_modules={target_modules!r}: {_first_line(exc)}") from None


def is_lora(model) -> bool:
    """Does `model` carry peft adapters (then the KL reference is the model with its adapters disabled)?"""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
