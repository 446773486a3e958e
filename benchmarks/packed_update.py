"""Packed trees against flattened paths: tokens run forward, wall time and peak memory of one full update and of the
reference pass, side by side in one run (medians of repeats).

    python benchmarks/packed_update.py [--device cpu|cuda] [--repeats 5] [--cases sum_ibtree,...] [--out FILE]

Cases (``--cases``, comma-separated):

- ``sum_ibtree``, ``sum_g8``, ``chain_ibtree``, ``chain_g8``: one rollout batch of the shipped testbed policies
  (16 questions; IBTree (4,9,1,1) = 12 leaves per tree, or independent G=8 = a tree whose root is the prompt), grown
  by the trainer's own rollout code;
- ``synth_ibtree``, ``synth_g8``: synthetic trees of the Qwen3-1.7B recipe's token structure (prompt 200 tokens,
  completions capped at 2,048, steps of 30-250 tokens, IBTree forks at random step boundaries of existing paths).
  On CPU the model is narrow (``benchmarks/model_shapes.py`` shape ``tiny``: 2 layers, width 64, vocabulary 512) and
  the batch is ``--synth-questions`` trees; with ``--device cuda`` the model is the real Qwen3-1.7B shape (random
  weights, bfloat16, FlexAttention-free sdpa mask) and the batch is 16 trees.

"update" = ``Trainer.update`` over the rollout batch (every micro-batch's forward + backward, then the AdamW step;
no KL reference); "reference" = the no-grad log-prob pass over the batch (``Trainer.batch_logprobs``, what the
reference and recomputed old log-probs cost). Both layouts run with the same ``micro_batch_size``: a packed
micro-batch holds at most micro_batch_size x the batch's longest path tokens, what a flattened one may pad to.
"tokens forward" counts every position the model runs (padding included; flattened trims each micro-batch to its
longest row). Wall times come from one process per case that alternates the layouts repeat by repeat (after one warm-up round),
so that a change of machine load hits both; peak memory from one process per (case, layout), so that each peak is
its own: on CUDA ``torch.cuda.max_memory_allocated`` over the allocation before the pass; on CPU the growth of the
process's peak resident set over its size before the first measured pass (``ru_maxrss``; includes allocator slack;
the update's figure is a high-water mark over both passes).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TESTBED = {"sum_ibtree": ("sum", "ib_tpo"), "sum_g8": ("sum", "grpo"), "chain_ibtree": ("chain", "ib_tpo"),
           "chain_g8": ("chain", "grpo")}
SYNTH = {"synth_ibtree": "ibtree", "synth_g8": "g8"}
DEFAULT_CASES = "sum_ibtree,sum_g8,chain_ibtree,chain_g8,synth_ibtree,synth_g8"


def _config(overrides: dict):
    from ibtpo.config.schema import build_config

    return build_config(None, {"tensorboard": False, "overwrite": True, "beta": 0.0, "old_logp": "sampler",
                               "ib_probe_every": 0, **overrides})


# -- the trees ------------------------------------------------------------------------------------------------------
def testbed_trees(task: str, algorithm: str, questions: int, seed: int) -> tuple[list, dict]:
    """One rollout batch of the shipped policy, grown by the trainer (seeded)."""
    from ibtpo.training.trainer import Trainer

    over = {"task": task, "algorithm": algorithm, "questions_per_step": questions, "seed": seed,
            "out_dir": tempfile.mkdtemp(prefix="packed_bench_")}
    if algorithm == "grpo":
        over["num_generations"] = 8
    trainer = Trainer(_config(over))
    return trainer.rollout(), over


def synthetic_trees(kind: str, questions: int, vocab: int, seed: int, prompt: int = 200, cap: int = 2048) -> list:
    """Trees of the 1.7B recipe's structure: IBTree (4,9,1,1) (B0 = 4 chains, then 8 forks, each at a random step
    boundary of an existing path, one continuation each) or independent G=8; steps of 30-250 tokens; each trajectory
    ends at a random length up to `cap` (a quarter of them at the cap)."""
    from ibtpo.core.tree import Tree, compute_p_hat

    rng = random.Random(seed)

    def steps(node, room):
        total = room if rng.random() < 0.25 else rng.randint(min(room, 150), room)
        while total > 0:
            n = min(total, rng.randint(30, 250))
            node = node.add_child([rng.randrange(3, vocab) for _ in range(n)], [-rng.random() for _ in range(n)],
                                  [0.0] * n)
            total -= n
        node.reward = float(rng.random() < 0.4)

    trees = []
    for q in range(questions):
        tree = Tree(f"synth-{q}", [rng.randrange(3, vocab) for _ in range(prompt)])
        for _ in range(4 if kind == "ibtree" else 8):
            steps(tree.root, cap)
        for _ in range(8 if kind == "ibtree" else 0):
            inner = [n for n in tree.nodes() if n.children and cap - n.end > 30]
            node = rng.choice(inner) if inner else tree.root
            steps(node, cap - node.end)
        compute_p_hat(tree.root)
        trees.append(tree)
    return trees


# -- one (case, layout) in its own process --------------------------------------------------------------------------
def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _setup(spec: dict, layout: str):
    """(trainer, batch, advantages) of a spec, the trainer set to `layout`."""
    from ibtpo.training.batch import flatten_paths
    from ibtpo.training.packed_forward import attention_kind
    from ibtpo.training.trainer import Trainer

    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    over = {**spec["config"], "train_layout": layout, "device": spec["device"], "threads": spec["threads"],
            "micro_batch_size": spec["micro_batch_size"], "out_dir": tempfile.mkdtemp(prefix="packed_bench_")}
    if spec.get("synthetic"):
        over.update(model="testbed", task="sum")
    trainer = Trainer(_config(over))
    if spec.get("synthetic"):  # the benchmark's model replaces the testbed policy (same trainer code paths)
        sys.path.insert(0, str(Path(__file__).parent))
        from model_shapes import build_model

        model, _ = build_model(spec["shape"], device, getattr(torch, spec["dtype"]), seed=0)
        model.train()
        trainer.policy = trainer.train_model = model
        trainer.params = [p for p in model.parameters() if p.requires_grad]
        trainer.optimizer = torch.optim.AdamW(trainer.params, lr=1e-6)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
        trainer.mask_kind = attention_kind(model)
    trainer.layout = layout
    batch = flatten_paths(spec["trees"], 0)
    gen = torch.Generator().manual_seed(0)
    advantages = torch.randn(batch.response_mask.shape, generator=gen) * batch.response_mask
    return trainer, batch, advantages


def _token_counts(trainer, batch, layout: str) -> dict:
    from ibtpo.training.packed import pack_paths, plan_parts, row_budget
    from ibtpo.training.packed_forward import one_row

    cfg, rows, single = trainer.cfg, torch.arange(batch.size), one_row(trainer.mask_kind)
    if layout == "packed":
        row_tokens, micro_tokens = row_budget(batch, cfg.pack_row_tokens, cfg.micro_batch_size, single)
        packs = [pack_paths(batch, part, row_tokens, one_row=single)
                 for part in plan_parts(batch, rows, row_tokens, micro_tokens, single)]
        forward, real = sum(p.shape[0] * p.shape[1] for p in packs), sum(p.tokens for p in packs)
        shapes = [list(p.shape) for p in packs]
    else:
        lengths = batch.attention_mask.sum(-1)
        parts = rows.split(cfg.micro_batch_size or batch.size)
        forward, real = sum(len(p) * int(lengths[p].max()) for p in parts), int(lengths.sum())
        shapes = [[len(p), int(lengths[p].max())] for p in parts]
    return {"paths": batch.size, "path_tokens": int(batch.attention_mask.sum()), "tokens_forward": forward,
            "real_tokens_forward": real, "micro_batches": shapes}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child_times(spec: dict) -> dict:
    """Wall times of both layouts in one process, alternating layouts repeat by repeat (load drift hits both)."""
    trainer, batch, advantages = _setup(spec, "flattened")
    device = trainer.device
    passes = {"reference": lambda: trainer.batch_logprobs(trainer.policy, batch),
              "update": lambda: trainer.update(batch, advantages)}
    times = {(layout, name): [] for layout in ("flattened", "packed") for name in passes}
    for i in range(spec["repeats"] + 1):  # the first round warms up
        for layout in ("flattened", "packed") if i % 2 == 0 else ("packed", "flattened"):
            trainer.layout = layout
            for name, run in passes.items():
                _sync(device)
                t0 = time.perf_counter()
                run()
                _sync(device)
                if i:
                    times[layout, name].append(time.perf_counter() - t0)
    out = {}
    for layout in ("flattened", "packed"):
        trainer.layout = layout
        out[layout] = {**_token_counts(trainer, batch, layout),
                       **{f"{name}_s": statistics.median(times[layout, name]) for name in passes},
                       **{f"{name}_times_s": times[layout, name] for name in passes}}
    return out


def child_memory(spec: dict, layout: str) -> dict:
    """Peak memory of one reference pass, then of one update, of one layout (its own process)."""
    trainer, batch, advantages = _setup(spec, layout)
    device = trainer.device
    out = {}
    for name, run in (("reference", lambda: trainer.batch_logprobs(trainer.policy, batch)),
                      ("update", lambda: trainer.update(batch, advantages))):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run()
            out[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            base = _rss_now_bytes() if name == "reference" else base
            run()
            out[f"{name}_peak_mib"] = (_rss_peak_bytes() - base) / 2**20
    return out


# -- the driver -----------------------------------------------------------------------------------------------------
def run_case(name: str, args) -> dict:
    spec = {"device": args.device, "threads": args.threads, "repeats": args.repeats}
    if name in TESTBED:
        task, algorithm = TESTBED[name]
        trees, over = testbed_trees(task, algorithm, args.questions, args.seed)
        spec.update(trees=trees, config={**{k: v for k, v in over.items() if k != "out_dir"},
                                         "pack_row_tokens": args.row_tokens}, micro_batch_size=args.micro_batch_size)
    else:
        cuda = args.device == "cuda"
        shape = "qwen3-1.7b" if cuda else "tiny"
        sys.path.insert(0, str(Path(__file__).parent))
        from model_shapes import SHAPES

        trees = synthetic_trees(SYNTH[name], 16 if cuda else args.synth_questions, SHAPES[shape]["vocab_size"],
                                args.seed)
        spec.update(trees=trees, config={"algorithm": "grpo", "pack_row_tokens": args.synth_row_tokens},
                    synthetic=True, shape=shape, dtype="bfloat16" if cuda else "float32",
                    micro_batch_size=args.synth_micro_batch_size)
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        f.write(pickle.dumps(spec))
    result = {"case": name, "micro_batch_size": spec["micro_batch_size"]}

    def launch(*extra):
        proc = subprocess.run([sys.executable, __file__, "--child", f.name, *extra], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} {' '.join(extra)}: {proc.stderr.strip().splitlines()[-1]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    result.update(launch())
    for layout in ("flattened", "packed"):
        result[layout].update(launch("--layout", layout))
    Path(f.name).unlink()
    f_, p_ = result["flattened"], result["packed"]
    result["token_ratio"] = f_["tokens_forward"] / p_["tokens_forward"]
    result["real_token_ratio"] = f_["real_tokens_forward"] / p_["real_tokens_forward"]
    result["update_speedup"] = f_["update_s"] / p_["update_s"]
    result["reference_speedup"] = f_["reference_s"] / p_["reference_s"]
    result["update_speedup_over_token_ratio"] = result["update_speedup"] / result["token_ratio"]
    return result


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--questions", type=int, default=16, help="testbed cases: questions per rollout batch")
    ap.add_argument("--micro-batch-size", type=int, default=0, help="testbed cases: micro_batch_size (0 = one pass)")
    ap.add_argument("--row-tokens", type=int, default=0, help="testbed cases: pack_row_tokens (0 = auto)")
    ap.add_argument("--synth-questions", type=int, default=2, help="synthetic cases on CPU: trees in the batch")
    ap.add_argument("--synth-micro-batch-size", type=int, default=4, help="synthetic cases: micro_batch_size")
    ap.add_argument("--synth-row-tokens", type=int, default=0, help="synthetic cases: pack_row_tokens (0 = auto)")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine", default=None, help="name of the machine written with the results")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = pickle.loads(Path(args.child).read_bytes())
        print(json.dumps(child_memory(spec, args.layout) if args.layout else child_times(spec)))
        return
    results = [run_case(name, args) for name in args.cases.split(",")]
    head = (f"{'case':<13} {'mbs':>3} {'paths':>5} {'tok fwd flat':>12} {'packed':>8} {'ratio':>5} | "
            f"{'update s flat':>13} {'packed':>7} {'speedup':>7} {'/ratio':>6} {'MiB flat':>8} {'packed':>7} | "
            f"{'ref s flat':>10} {'packed':>7} {'speedup':>7} {'MiB flat':>8} {'packed':>7}")
    lines = [head]
    for r in results:
        f_, p_ = r["flattened"], r["packed"]
        lines.append(f"{r['case']:<13} {r['micro_batch_size']:>3} {f_['paths']:>5} {f_['tokens_forward']:>12} "
                     f"{p_['tokens_forward']:>8} {r['token_ratio']:>5.2f} | {f_['update_s']:>13.3f} "
                     f"{p_['update_s']:>7.3f} {r['update_speedup']:>7.2f} {r['update_speedup_over_token_ratio']:>6.2f} "
                     f"{f_['update_peak_mib']:>8.1f} {p_['update_peak_mib']:>7.1f} | {f_['reference_s']:>10.3f} "
                     f"{p_['reference_s']:>7.3f} {r['reference_speedup']:>7.2f} {f_['reference_peak_mib']:>8.1f} "
                     f"{p_['reference_peak_mib']:>7.1f}")
    print("\n".join(lines))
    if args.out:
        meta = {"machine": args.machine or machine(), "device": args.device, "repeats": args.repeats,
                "threads": args.threads, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                "command": " ".join(sys.argv)}
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
        Path(args.out).with_suffix(".txt").write_text(
            f"# python {' '.join(sys.argv)}  ({meta['date']}, torch {meta['torch']} {args.device}, {args.threads} "
            f"threads, {meta['machine']}{load})\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
