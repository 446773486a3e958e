"""Supervised warm-up that produces the testbed's base policy.

The warm-up sees a *limited* set of gold solutions (``num_examples``), so the base policy is imperfect and RL, which
can draw unlimited fresh problems with a verifiable reward, has room to improve it. Loss is next-token cross-entropy
on the solution tokens only (the prompt is context).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

import torch
from pydantic import Field

from ibtpo.testbed.task import GeneratedTask


@dataclass
class PretrainConfig:
    """Settings of the supervised warm-up."""

    task: Literal["sum", "chain"] = "sum"
    """Built-in task whose warm-up stream the policy learns from (its default generator settings)."""
    num_examples: Annotated[int, Field(ge=1)] = 4000
    """Distinct gold solutions the warm-up may see (drawn from the warm-up stream, disjoint from test)."""
    steps: Annotated[int, Field(ge=1)] = 900
    """Optimizer steps."""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """Sequences per step."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 3e-3
    """Peak AdamW learning rate (linear warm-up over 5% of steps, then cosine decay to 10%)."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    """AdamW weight decay."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seed of model initialisation and data order."""
    hidden_size: Annotated[int, Field(ge=8, multiple_of=2)] = 128
    """Model width."""
    num_layers: Annotated[int, Field(ge=1)] = 2
    """Transformer layers."""
    intermediate_size: Annotated[int, Field(ge=1)] = 512
    """MLP width."""
    device: str = "cpu"
    """Where the warm-up runs: cpu (the shipped policies were built there), cuda, cuda:1, or auto."""


def encode_examples(tokenizer, problems) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids + EOS) for each problem."""
    out = []
    for p in problems:
        prompt = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        sol = tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((prompt, sol))
    return out


def sft_batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) with labels = -100 on prompt and padding."""
    width = max(len(a) + len(b) for a, b in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (a, b) in enumerate(examples):
        seq = a + b
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(a): len(seq)] = torch.tensor(b)
    return ids, mask, labels


def pretrain(model, tokenizer, task: GeneratedTask, cfg: PretrainConfig,
             on_step: Callable[[int, float], None] | None = None) -> dict:
    """Run the warm-up in place on `model`; returns summary stats. `on_step(step, loss)` reports progress."""
    rng = random.Random(cfg.seed)
    examples = encode_examples(tokenizer, [task.train_problem(i, split="warmup") for i in range(cfg.num_examples)])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warm = max(1, int(0.05 * cfg.steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return cfg.learning_rate * (step + 1) / warm
        frac = (step - warm) / max(1, cfg.steps - warm)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    t0, loss_val = time.time(), float("nan")
    order: list[int] = []
    for step in range(cfg.steps):
        while len(order) < cfg.batch_size:  # reshuffle once per pass over the examples
            more = list(range(len(examples)))
            rng.shuffle(more)
            order += more
        batch = [examples[order.pop()] for _ in range(cfg.batch_size)]
        ids, mask, labels = sft_batch(batch, tokenizer.pad_token_id)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        dev = next(model.parameters()).device
        loss = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_val = loss.item()
        if on_step:
            on_step(step, loss_val)
    model.eval()
    return {"final_loss": loss_val, "seconds": time.time() - t0, "examples": len(examples)}
