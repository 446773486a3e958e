"""Real model shapes on a GPU: one IB-TPO training step, the recipe's full-size optimizer step, memory per micro-batch.

Builds a model of a named shape with random weights (speed and memory do not depend on the weights; no hub), or loads
a path, with the testbed's character tokenizer and a logit bias that makes rows end at varied lengths and steps of a
chosen mean length (a random model never emits EOS or the step delimiter by itself). Then, each phase timed and its
peak memory recorded (GPU: torch.cuda.max_memory_allocated; CPU: the process's peak RSS):

  step    one full `Trainer.train_step` with the shipped recipe's settings (IB-TPO, IBTree (4,9,1,1), k3 KL with a
          reference model, recomputed old log-probs), on --questions testbed questions capped at --cap tokens:
          rollout / update time, new tokens/s, the behaviour/training log-prob gap;
  update  the recipe's optimizer step at full size: --update-rows sequences of --seq-len tokens in one mini-batch
          (micro-batches of the recipe's micro_batch_size), plus the reference pass over --ref-rows sequences;
  micro   peak memory of one forward/backward per micro-batch size (--micro-sizes), for this shape;
  eval    an evaluation of --eval-questions questions x --eval-k samples (+ greedy), rows capped by the recipe.

  python benchmarks/gpu.py --shape qwen3-1.7b --out benchmarks/results/gpu_h200.json            # on a GPU
  python benchmarks/gpu.py --shape tiny --device cpu --questions 2 --cap 24 --seq-len 48 \\
      --update-rows 8 --ref-rows 16 --eval-questions 2 --eval-k 4 --micro-sizes 1 2                # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ibtpo.config.schema import build_config, group_size, parse_overrides  # noqa: E402
from ibtpo.core.sampling import SamplingParams  # noqa: E402
from ibtpo.evaluation.heldout import evaluate  # noqa: E402
from ibtpo.rollout.spec import RolloutSpec  # noqa: E402
from ibtpo.core.lm import token_logprobs  # noqa: E402
from ibtpo.training.batch import TrainBatch  # noqa: E402
from ibtpo.training.trainer import Trainer  # noqa: E402
from model_shapes import add_step_bias, build_model  # noqa: E402

RECIPE = ROOT / "src/ibtpo/configs/qwen3_1.7b_dapo_ib_tpo.yaml"

def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (monotone on CPU)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(rows: int, seq_len: int, prompt_len: int, vocab: int, seed: int) -> tuple[TrainBatch, torch.Tensor]:
    """`rows` full-length sequences (prompt + response, no padding) with random tokens, log-probs and advantages."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, seq_len), generator=g)
    resp = torch.zeros(rows, seq_len - 1)
    resp[:, prompt_len - 1:] = 1.0
    batch = TrainBatch(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=resp,
                       old_logp=-torch.rand(rows, seq_len - 1, generator=g) * resp,
                       rewards=torch.zeros(rows), group_ids=torch.arange(rows) // 12, leaves=[None] * rows)
    adv = torch.randn(rows, generator=g)[:, None] * resp
    return batch, adv


def phase(name: str, results: dict, fn, device: torch.device) -> None:
    """Run one phase; record its figures, or its error (the other phases still run)."""
    reset_peak(device)
    t0 = time.perf_counter()
    try:
        figures = fn()
        sync(device)
        figures = {"seconds": round(time.perf_counter() - t0, 2), "peak_gib": round(peak_gib(device), 2), **figures}
    except Exception as exc:  # a benchmark reports what failed and goes on
        figures = {"error": f"{type(exc).__name__}: {exc}"[:600], "seconds": round(time.perf_counter() - t0, 2)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results[name] = figures
    print(f"[{name}] " + json.dumps(figures), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="qwen3-1.7b", help="qwen3-0.6b | qwen3-1.7b | qwen3-8b | tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: the recipe's (bfloat16); float32 for --shape tiny")
    ap.add_argument("--config", default=str(RECIPE), help="the training config whose settings are measured")
    ap.add_argument("--phases", nargs="+", default=["step", "update", "micro", "eval"])
    ap.add_argument("--questions", type=int, default=4, help="questions of the training step (recipe: 128)")
    ap.add_argument("--cap", type=int, default=256, help="completion cap of the training step and eval (recipe: 2048)")
    ap.add_argument("--mean-length", type=float, default=160.0, help="mean completion length the EOS bias aims at")
    ap.add_argument("--step-length", type=float, default=24.0, help="mean reasoning-step length the bias aims at")
    ap.add_argument("--seq-len", type=int, default=2048, help="tokens per sequence of the full-size update")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--update-rows", type=int, default=384, help="sequences of the optimizer step (recipe: 384)")
    ap.add_argument("--ref-rows", type=int, default=1536, help="sequences of the reference pass (recipe: 128 x 12)")
    ap.add_argument("--micro-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--eval-questions", type=int, default=4)
    ap.add_argument("--eval-k", type=int, default=32)
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides key=value")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = args.dtype or ("float32" if args.shape == "tiny" else "bfloat16")
    results: dict = {"shape": args.shape, "device": str(device), "dtype": dtype,
                     "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "args": vars(args)}
    print(json.dumps({k: v for k, v in results.items() if k != "args"}), flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="ibtpo-gpu-")
    model_dir = Path(tmp.name) / "model"
    t0 = time.perf_counter()
    model, tokenizer = build_model(args.shape, device, getattr(torch, dtype), seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    results["model"] = {"parameters": n_params}
    print(f"[model] {n_params / 1e9:.3f}B parameters", flush=True)
    if args.phases == ["micro"]:  # memory per micro-batch only: the bare model, no trainer, no optimizer state
        model.gradient_checkpointing_enable()
        model.train()
        phase("micro", results, lambda bare=model: micro_peaks(bare, tokenizer, args, device, 0), device)
        results["micro"]["note"] = ("weights + gradients + activations of one forward/backward with gradient "
                                    "checkpointing; AdamW adds 2 x parameters x dtype size")
        return _finish(results, args, tmp)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    reset_peak(device)
    results["model"]["build_and_save_s"] = round(time.perf_counter() - t0, 1)

    overrides = {"model": str(model_dir), "device": str(device), "dtype": dtype, "dataset": None,
                 "eval_datasets": [], "reward_fn": "auto", "out_dir": str(Path(tmp.name) / "run"),
                 "questions_per_step": args.questions, "max_completion_length": args.cap, "tensorboard": False,
                 "plots": False, "progress": False, "threads": 4}
    overrides.update(parse_overrides(args.set))
    cfg = build_config(args.config, overrides)
    # a mini-batch no larger than the rollout batch (the recipe's 384 rows with a few questions: one mini-batch)
    cfg.mini_batch_size = min(cfg.mini_batch_size, cfg.questions_per_step * group_size(cfg))
    results["config"] = {k: getattr(cfg, k) for k in ("algorithm", "micro_batch_size", "mini_batch_size",
                                                       "gradient_checkpointing", "rollout_max_rows", "kv_budget_gib",
                                                       "old_logp", "beta", "logits_chunk_tokens")}
    trainer = Trainer(cfg)
    for m in (trainer.policy, trainer.ref):
        if m is not None:
            add_step_bias(m, tokenizer, args.mean_length, args.step_length, cfg.temperature)

    def step() -> dict:
        m = trainer.train_step()
        keys = ("perf/rollout_time_s", "perf/update_time_s", "perf/tokens_per_s", "perf/train_tokens_per_s",
                "rollout/logp_diff_mean", "rollout/logp_diff_max", "response_length/mean", "actor/grad_norm")
        return {k: round(m[k], 4) for k in keys if k in m} | {"new_tokens": int(m["train/tokens"])}

    def update() -> dict:
        vocab = len(tokenizer)
        ref_batch, _ = synthetic_batch(args.ref_rows, args.seq_len, args.prompt_len, vocab, seed=1)
        reset_peak(device)
        t = time.perf_counter()
        if cfg.beta > 0:
            trainer.reference_logprobs(ref_batch)
        sync(device)
        ref_s, ref_peak = time.perf_counter() - t, peak_gib(device)
        del ref_batch
        batch, adv = synthetic_batch(args.update_rows, args.seq_len, args.prompt_len, vocab, seed=2)
        trainer.cfg.mini_batch_size = args.update_rows  # one optimizer step of the recipe's size
        reset_peak(device)
        t = time.perf_counter()
        m = trainer.update(batch, adv)
        sync(device)
        tokens = args.update_rows * args.seq_len
        return {"reference_rows": args.ref_rows, "reference_s": round(ref_s, 2), "reference_peak_gib": round(ref_peak, 2),
                "update_rows": args.update_rows, "seq_len": args.seq_len, "update_s": round(time.perf_counter() - t, 2),
                "update_peak_gib": round(peak_gib(device), 2), "micro_batch_size": cfg.micro_batch_size,
                "train_tokens_per_s": round(tokens / (time.perf_counter() - t), 1),
                "finite_loss": math.isfinite(m["actor/loss"])}

    def micro() -> dict:
        return micro_peaks(trainer.policy, tokenizer, args, device, cfg.logits_chunk_tokens)

    def evaluation() -> dict:
        problems = list(trainer.source.test_sets[trainer.source.name][:args.eval_questions])
        sampling = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.cap, max_rows=cfg.rollout_max_rows)
        spec = RolloutSpec.independent(args.eval_k, sampling, backend=cfg.rollout_backend,
                                       slots_gib=cfg.rollout_slots_gib)
        res = evaluate(trainer.policy, tokenizer, problems, trainer.rewards.check, spec, seed=0)
        return {"questions": len(problems), "k": args.eval_k, "response_length": round(res["response_length"], 1)}

    for name, fn in (("step", step), ("update", update), ("micro", micro), ("eval", evaluation)):
        if name in args.phases:
            phase(name, results, fn, device)
            _write(results, args)  # after every phase: a run cut short keeps what it measured
    return _finish(results, args, tmp)


def micro_peaks(policy, tokenizer, args, device: torch.device, chunk_tokens: int) -> dict:
    """Peak memory of one forward/backward of each micro-batch size (--micro-sizes x --seq-len tokens)."""
    out = {}
    for size in args.micro_sizes:
        ids = torch.randint(3, len(tokenizer), (size, args.seq_len), device=device)
        reset_peak(device)
        try:
            logp, ent = token_logprobs(policy, ids, torch.ones_like(ids), 1.0, chunk_tokens=chunk_tokens)
            (logp.mean() + 0.01 * ent.mean()).backward()
            sync(device)
            out[f"micro_{size}_peak_gib"] = round(peak_gib(device), 2)
        except torch.OutOfMemoryError:
            out[f"micro_{size}_peak_gib"] = "OOM"
        policy.zero_grad(set_to_none=True)
        del ids
    return out


def _write(results: dict, args) -> None:
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def _finish(results: dict, args, tmp) -> dict:
    tmp.cleanup()
    _write(results, args)
    return results


if __name__ == "__main__":
    main()
