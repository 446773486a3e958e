"""Build the testbed base policy from scratch: tokenizer + tiny model + supervised warm-up, then measure and save.

``ibtpo pretrain --out src/ibtpo/testbed/policy`` reproduces the shipped policy (same seeds, same data).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ibtpo.core.sampling import SamplingParams
from ibtpo.evaluation.heldout import evaluate
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.training.models import resolve_device
from ibtpo.testbed.model import build_tiny_model
from ibtpo.testbed.pretrain import PretrainConfig, pretrain
from ibtpo.testbed.chain import ChainTask, chain_reward
from ibtpo.testbed.task import GeneratedTask, SumTask, extract_answer, sum_reward
from ibtpo.testbed.tokenizer import build_char_tokenizer


TASKS = {"sum": (SumTask, sum_reward), "chain": (ChainTask, chain_reward)}
"""Built-in task name -> (generator class with default settings, exact-match reward)."""


def build_base_policy(cfg: PretrainConfig, out_dir: Path, task: GeneratedTask | None = None, threads: int = 2,
                      progress: bool = True) -> dict:
    """Warm up a fresh tiny model on `task` (default: the built-in task ``cfg.task`` with its default settings) and
    save it with its tokenizer."""
    torch.set_num_threads(threads)
    task_cls, reward = TASKS[cfg.task]
    task = task or task_cls()
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                             intermediate_size=cfg.intermediate_size, seed=cfg.seed)
    model.to(resolve_device(cfg.device))
    console = Console(stderr=True)
    t0 = time.time()
    if progress:
        with Progress(TextColumn("pretrain step {task.completed}/{task.total}"), BarColumn(),
                      TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=console) as bar:
            job = bar.add_task("pretrain", total=cfg.steps, loss=float("nan"))
            stats = pretrain(model, tokenizer, task, cfg, lambda s, loss: bar.update(job, completed=s + 1, loss=loss))
    else:
        stats = pretrain(model, tokenizer, task, cfg)
    spec = RolloutSpec.independent(4, SamplingParams(temperature=1.0, max_new_tokens=task.max_tokens))
    res = evaluate(model, tokenizer, list(task.test_problems), reward, spec=spec, greedy=True, seed=0,
                   extract=extract_answer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = {"pretrain_config": asdict(cfg), "task": asdict(task), "seconds": round(time.time() - t0, 1),
               "parameters": sum(p.numel() for p in model.parameters()), "final_loss": stats["final_loss"],
               "test_sampled_avg@4_T1": res["avg@4"], "test_greedy_acc": res["greedy_acc"]}
    (out_dir / "pretrain_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
