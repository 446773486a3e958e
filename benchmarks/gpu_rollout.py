"""Rollout speed on a GPU: the static backend against the eager engine and transformers ``generate``.

    PYTHONPATH=src python benchmarks/gpu_rollout.py [--shape qwen3-1.7b] [--json out.json]
    PYTHONPATH=src python benchmarks/gpu_rollout.py --shape tiny --device cpu --questions 2 --cap 16   # smoke test

A model of the named shape (``model_shapes``: random weights built on the device, bf16) with a logit bias so that rows
end at varied lengths (mean ~--mean-length tokens) and steps ("\\n\\n") have a mean of ~--mean-step tokens. Phases,
each on its own (an error is printed in full and the next phase runs; results are written after every phase):

1. bandwidth: a large device-to-device copy (bytes read + written per second).
2. greedy equality: static vs eager backend on a few prompts, in float32 (the gate: PASS/FAIL with the first
   mismatch) and in the run dtype (informational: bf16 rounding may flip a near-tie).
3. one decode step of the static backend at --micro-rows rows, context --micro-ctx: ms per step (graph replay +
   sampling) against the memory-traffic bound (parameter bytes + live KV bytes) / bandwidth.
4. the runs of --plan, entries backend:sampler:questions with backend in static / eager / generate and sampler in
   independent (G=8) / ib (IBTree (4,9,1,1)): new tokens/s, wall-clock, decode steps, ms per step, the step's
   memory-traffic bound (parameter bytes + the KV the live rows attend to, averaged over steps), peak memory.
   Then the IBTree / independent wall-clock ratio per backend and question count.

The run stops starting phases after --time-limit seconds (they are reported as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_shapes import DELIMITER, add_step_bias, build_model, parameter_bytes  # noqa: E402

from ibtpo.backends.factory import make_backend, release_static  # noqa: E402
from ibtpo.backends.contract import Request  # noqa: E402
from ibtpo.rollout.samplers import GrowContext, TreeShape, grow_trees  # noqa: E402
from ibtpo.core.sampling import SamplingParams, left_pad  # noqa: E402
from ibtpo.backends.static import StaticBackend  # noqa: E402
from ibtpo.core.steps import StepSplitter  # noqa: E402
from ibtpo.core.tree import Tree  # noqa: E402

SAMPLERS = {"independent": ("independent", TreeShape(b0=8, rounds=1)),
            "ib": ("ib", TreeShape(b0=4, rounds=9, k=1, b=1))}
DEFAULT_PLAN = ("static:independent:16,static:ib:16,static:independent:128,static:ib:128,"
                "eager:independent:16,generate:independent:16")


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_reset(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def question(i: int, rng: random.Random) -> str:
    """A synthetic prompt of ~100-200 characters (one token each)."""
    terms = "+".join(str(rng.randint(10, 999)) for _ in range(rng.randint(12, 30)))
    return f"Question {i}: add up {terms}. Think step by step.{DELIMITER}"


def parity_reward(tree: Tree, leaves) -> None:
    for leaf in leaves:
        leaf.reward = float(sum(Tree.completion(leaf)[0]) % 2 == 0)


def measure_bandwidth(device, gib: float) -> float:
    """Bytes per second of a device copy (read + write) of a `gib`-GiB buffer, best of 5."""
    n = int(gib * 2**30) // 4
    x = torch.empty(n, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del x, y
    return 2 * n * 4 / best


def kv_reads(trees: list[Tree]) -> int:
    """Key/value columns the live rows attended to, over all generated tokens (context length at each token)."""
    total = 0
    for t in trees:
        p = len(t.prompt_ids)
        for node in t.nodes():
            n = len(node.token_ids)
            total += n * (p + node.offset) + n * (n - 1) // 2
    return total


def greedy_check(model, tok, prompts, cap: int, label: str) -> dict:
    """Greedy rows of the static and eager backends on the same prompts: PASS/FAIL and the first mismatch."""
    params = SamplingParams(greedy=True, max_new_tokens=cap)
    out = {}
    for name in ("eager", "static"):
        backend = make_backend(name, model, params, tok.eos_token_id, tok.pad_token_id, prefix_reuse=False,
                               reuse=False)
        trees = [Tree(question_id=str(i), prompt_ids=p) for i, p in enumerate(prompts)]
        out[name] = [g[0] for g in backend.expand([Request(t, t.root, 1, cap) for t in trees])]
    first, max_diff, same = None, 0.0, 0
    for i, (a, b) in enumerate(zip(out["eager"], out["static"])):
        for j, (x, y) in enumerate(zip(a.token_ids + [None], b.token_ids + [None])):
            if x != y:
                first = first or {"prompt": i, "position": j, "eager": x, "static": y}
                break
            if x is not None:
                same += 1
                max_diff = max(max_diff, abs(a.logprobs[j] - b.logprobs[j]))
    res = {"label": label, "result": "PASS" if first is None else "FAIL", "first_mismatch": first,
           "tokens_compared": same, "max_abs_logprob_diff": max_diff,
           "lengths": [len(c.token_ids) for c in out["eager"]]}
    print(f"greedy static vs eager [{label}]: {res['result']}  tokens {same}  max |dlogp| {max_diff:.2e}"
          + (f"  first mismatch {first}" if first else ""))
    return res


@torch.no_grad()
def micro_step(model, tok, params, rows: int, ctx: int, steps: int, bandwidth: float | None, device) -> dict:
    """ms per decode step (graph replay + sampling) of the static backend with `rows` rows at context `ctx`."""
    backend = StaticBackend(model, params, tok.eos_token_id, tok.pad_token_id,
                            generator=torch.Generator(device=device).manual_seed(0), max_rows=rows)
    backend._ensure(rows, ctx + steps + 2)
    rows = bs = backend.slots  # fewer when the KV budget holds fewer
    width = backend.max_ctx
    from ibtpo.backends.static_store import ctx_bucket

    cols = ctx_bucket(ctx + steps + 1, backend.ctx_step, width)
    backend.out_tok = torch.zeros((rows, steps + 2), dtype=torch.long, device=device)
    backend.out_lp = torch.zeros((rows, steps + 2), device=device)
    backend.out_ent = torch.zeros((rows, steps + 2), device=device)
    backend.trash = torch.tensor(steps + 1, device=device)
    backend.pos_in[:] = ctx
    backend.tok_in[:] = 10
    backend.limit[:] = steps + 1
    for _ in range(2):  # capture + warm-up
        backend.alive[:] = True
        backend.count[:] = 0
        backend._step(bs, cols)
    backend.pos_in[:] = ctx
    backend.alive[:] = True
    backend.count[:] = 0
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        backend._step(bs, cols)
    sync(device)
    ms = (time.perf_counter() - t0) / steps * 1e3
    live_kv = rows * (ctx + steps / 2) * backend.dec.bytes_per_token()
    bound = None if not bandwidth else (parameter_bytes(model) + live_kv) / bandwidth * 1e3
    res = {"rows": rows, "ctx": ctx, "attended_columns": cols, "ms_per_step": ms, "tokens_per_s": rows / ms * 1e3,
           "bound_ms": bound, "x_bound": None if bound is None else ms / bound}
    backend.free()
    print(f"decode step, {rows} rows, context {ctx} (reads {cols} columns): {ms:.2f} ms = {rows / ms * 1e3:,.0f} "
          f"tokens/s; bound {bound if bound is None else round(bound, 2)} ms"
          + (f" ({ms / bound:.1f}x)" if bound else ""))
    return res


def run_trees(backend_name: str, sampler: str, prompts, ids, model, tok, params, seed: int, args, device,
              bandwidth) -> dict:
    """Grow one tree per prompt with the named backend and sampler; timings and counts."""
    name, shape = SAMPLERS[sampler]
    gen = torch.Generator(device=device).manual_seed(seed)
    backend = make_backend(backend_name, model, params, tok.eos_token_id, tok.pad_token_id, gen,
                           slots_gib=args.slots_gib)
    stats0 = dict(getattr(backend, "stats", {}))
    ctx = GrowContext(backend, StepSplitter(tok, DELIMITER, min_step_tokens=3), shape, params.max_new_tokens,
                      parity_reward, random.Random(seed))
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    trees = grow_trees(name, ctx, prompts, ids, [{}] * len(prompts))
    sync(device)
    wall = time.perf_counter() - t0
    new = sum(t.new_tokens for t in trees)
    leaves = [x for t in trees for x in t.leaves()]
    res = {"backend": backend_name, "sampler": sampler, "questions": len(prompts), "new_tokens": new,
           "trajectories": len(leaves), "wall_s": wall, "tokens_per_s": new / wall,
           "mean_length": sum(x.end for x in leaves) / len(leaves),
           "steps_per_trajectory": sum(x.depth for x in leaves) / len(leaves), "peak_gib": peak_gib(device)}
    stats = getattr(backend, "stats", None)
    if stats is not None:
        d = {k: stats[k] - stats0.get(k, 0) for k in stats}
        steps = max(d["steps"], 1)
        res.update(decode_steps=d["steps"], mean_rows_per_step=d["row_steps"] / steps, graphs_captured=d["graphs"],
                   capture_s=d["capture_s"], rows_moved=d["moves"], prefill_rows=d["prefill_rows"],
                   ms_per_step=(wall - d["capture_s"]) / steps * 1e3,
                   tokens_per_s_excl_capture=new / max(wall - d["capture_s"], 1e-9), slots=backend.slots)
        if bandwidth:
            per_step = parameter_bytes(model) + kv_reads(trees) / steps * backend.dec.bytes_per_token()
            res["bound_ms_per_step"] = per_step / bandwidth * 1e3
            res["x_bound"] = res["ms_per_step"] / res["bound_ms_per_step"]
    if hasattr(backend, "release"):
        backend.release()
    return res


def run_generate(prompts, model, tok, params, seed: int, device) -> dict:
    """transformers ``generate``: 8 samples per prompt in one batch (left-padded)."""
    torch.manual_seed(seed)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=params.temperature,
                             top_p=params.top_p, top_k=0, max_new_tokens=params.max_new_tokens,
                             num_return_sequences=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    sync(device)
    wall = time.perf_counter() - t0
    gen = out[:, ids.shape[1]:].cpu()
    ended = gen == tok.eos_token_id
    lengths = torch.where(ended.any(1), ended.int().argmax(1) + 1, torch.full((gen.shape[0],), gen.shape[1]))
    new = int(lengths.sum())
    return {"backend": "generate", "sampler": "independent", "questions": len(prompts), "new_tokens": new,
            "trajectories": gen.shape[0], "wall_s": wall, "tokens_per_s": new / wall,
            "mean_length": new / gen.shape[0], "decode_steps": gen.shape[1],
            "ms_per_step": wall / max(gen.shape[1], 1) * 1e3, "peak_gib": peak_gib(device)}


def table(runs: list[dict]) -> str:
    head = (f"{'backend':9} {'sampler':12} {'Q':>4} {'new tok':>8} {'traj':>5} {'len':>6} {'steps/tr':>8} "
            f"{'wall s':>7} {'tok/s':>9} {'ms/step':>8} {'bound ms':>8} {'x bound':>7} {'rows/st':>7} {'peak GiB':>8}")
    lines = [head, "-" * len(head)]

    def f(x, fmt):
        return format(x, fmt) if isinstance(x, (int, float)) else "-"

    for r in runs:
        lines.append(f"{r['backend']:9} {r['sampler']:12} {r['questions']:>4} {r['new_tokens']:>8} "
                     f"{r['trajectories']:>5} {f(r['mean_length'], '6.1f')} {f(r.get('steps_per_trajectory'), '8.2f')} "
                     f"{f(r['wall_s'], '7.2f')} {f(r['tokens_per_s'], '9,.0f')} {f(r.get('ms_per_step'), '8.2f')} "
                     f"{f(r.get('bound_ms_per_step'), '8.2f')} {f(r.get('x_bound'), '7.1f')} "
                     f"{f(r.get('mean_rows_per_step'), '7.1f')} {f(r.get('peak_gib'), '8.1f')}")
    return "\n".join(lines)


def targets(report: dict) -> list[str]:
    """The issue's three targets against what this run measured (largest static runs)."""
    out = []
    static = [r for r in report["runs"] if r["backend"] == "static" and r["sampler"] == "independent"]
    if static:
        r = max(static, key=lambda x: x["questions"])
        met = "MET" if r["tokens_per_s"] >= 8000 else "NOT MET"
        out.append(f"TARGET new tokens/s >= 8,000 (static, independent, {r['questions']} questions, "
                   f"{r['trajectories']} rows): {r['tokens_per_s']:,.0f} -> {met}")
    micro = [m for m in report.get("micro") or [] if m and m.get("x_bound")]
    if micro:
        m = max(micro, key=lambda x: x["rows"])
        out.append(f"TARGET decode step <= 3x the memory-traffic bound ({m['rows']} rows, context {m['ctx']}): "
                   f"{m['ms_per_step']:.2f} ms vs {m['bound_ms']:.2f} ms = {m['x_bound']:.1f}x -> "
                   f"{'MET' if m['x_bound'] <= 3 else 'NOT MET'}")
    ratios = [x for x in report.get("ratios", []) if x["backend"] == "static"]
    if ratios:
        x = max(ratios, key=lambda y: y["questions"])
        v = x["wall_ratio_ib_over_independent"]
        out.append(f"TARGET IBTree (4,9,1,1) wall-clock <= 1.5x independent G=8 ({x['questions']} questions): "
                   f"{v:.2f}x -> {'MET' if v <= 1.5 else 'NOT MET'}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen3-1.7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--plan", default=DEFAULT_PLAN, help="comma list of backend:sampler:questions")
    ap.add_argument("--questions", default="", help="replace the question counts of the plan (comma list)")
    ap.add_argument("--cap", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--mean-length", type=float, default=300.0, help="target mean completion length (EOS bias)")
    ap.add_argument("--mean-step", type=float, default=40.0, help="target mean step length (delimiter bias)")
    ap.add_argument("--slots-gib", type=float, default=0.0, help="static backend: GiB of KV slots (0 = auto)")
    ap.add_argument("--max-rows", type=int, default=0,
                    help="rows decoded at once (the run config's rollout_max_rows; the recipe: 128; 0 = all)")
    ap.add_argument("--greedy-prompts", type=int, default=4)
    ap.add_argument("--greedy-cap", type=int, default=96)
    ap.add_argument("--no-fp32-check", action="store_true", help="skip the float32 greedy check (it builds a copy)")
    ap.add_argument("--micro-rows", default="16,128", help="comma list of row counts for the decode-step timing")
    ap.add_argument("--micro-ctx", type=int, default=300)
    ap.add_argument("--bandwidth-gib", type=float, default=2.0)
    ap.add_argument("--time-limit", type=float, default=225.0, help="start no phase after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    plan = []
    for entry in args.plan.split(","):
        parts = entry.strip().split(":")
        if len(parts) != 3 or parts[0] not in ("static", "eager", "generate") or parts[1] not in SAMPLERS \
                or not parts[2].isdigit() or (parts[0] == "generate" and parts[1] != "independent"):
            print(f"--plan: bad entry {entry!r} (backend:sampler:questions; generate only with independent)",
                  file=sys.stderr)
            return 2
        plan.append((parts[0], parts[1], int(parts[2])))
    if args.questions:
        counts = [int(q) for q in args.questions.split(",")]
        plan = list(dict.fromkeys((b, s, q) for b, s, _ in plan for q in counts))
    report: dict = {"args": vars(args), "torch": torch.__version__, "errors": [], "skipped": [], "runs": []}
    try:
        import transformers

        report["transformers"] = transformers.__version__
        report["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    except Exception:  # noqa: BLE001
        pass

    def save():
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2, default=str)

    def phase(label, fn):
        if time.perf_counter() - start > args.time_limit:
            print(f"[{label}] SKIPPED (time limit {args.time_limit:.0f} s reached)")
            report["skipped"].append(label)
            return None
        print(f"\n[{label}]", flush=True)
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001  (report the error, run the next phase)
            traceback.print_exc()
            report["errors"].append({"phase": label, "error": repr(exc), "trace": traceback.format_exc()})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        finally:
            print(f"[{label}] {time.perf_counter() - t0:.1f} s", flush=True)
            save()

    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.cap,
                            max_rows=args.max_rows)
    built = phase("build", lambda: build_model(args.shape, device, dtype, args.seed))
    if built is None:
        return 1
    model, tok = built
    phase("bias", lambda: add_step_bias(model, tok, args.mean_length, args.mean_step, args.temperature))
    report["parameter_gib"] = parameter_bytes(model) / 2**30
    rng = random.Random(args.seed)
    max_q = max([q for _, _, q in plan] + [args.greedy_prompts])
    prompts = [tok(question(i, rng), add_special_tokens=False)["input_ids"] for i in range(max_q)]
    report["mean_prompt_tokens"] = sum(map(len, prompts)) / len(prompts)
    bw = phase("bandwidth", lambda: measure_bandwidth(device, args.bandwidth_gib if device.type == "cuda" else 0.06))
    report["bandwidth_gb_s"] = None if bw is None else bw / 1e9
    if bw:
        print(f"device copy: {bw / 1e9:,.0f} GB/s (read + write)")
    report["greedy"] = []

    def fp32_check():
        m32, _ = build_model(args.shape, device, torch.float32, args.seed)
        h = add_step_bias(m32, tok, args.mean_length, args.mean_step, 1.0)
        try:
            return greedy_check(m32, tok, prompts[:args.greedy_prompts], args.greedy_cap, "float32")
        finally:
            h.remove()
            del m32
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if not args.no_fp32_check and dtype != torch.float32:
        report["greedy"].append(phase("greedy float32", fp32_check))
    report["greedy"].append(phase(f"greedy {args.dtype}", lambda: greedy_check(
        model, tok, prompts[:args.greedy_prompts], args.greedy_cap, args.dtype)))
    report["micro"] = []
    for rows in [int(x) for x in args.micro_rows.split(",") if x]:
        report["micro"].append(phase(f"decode step {rows} rows", lambda: micro_step(
            model, tok, params, rows, args.micro_ctx, 20, bw, device)))
    phase("warm-up", lambda: grow_trees("independent", GrowContext(
        make_backend("eager", model, params, tok.eos_token_id, tok.pad_token_id,
                     torch.Generator(device=device).manual_seed(0)),
        StepSplitter(tok, DELIMITER), TreeShape(b0=2, rounds=1), 8, parity_reward, random.Random(0)),
        prompts[:2], ["0", "1"], [{}, {}]))
    for backend, sampler, q in plan:
        label = f"{backend} {sampler} {q} questions"
        if backend != "static":
            release_static(model)  # its KV slots would count in this run's peak memory
        prev = [r for r in report["runs"] if (r["backend"], r["sampler"]) == (backend, sampler) and r["questions"] < q]
        if prev:  # linear in the questions, halved for the gain of larger batches: skip what would overrun
            guess = prev[-1]["wall_s"] * q / prev[-1]["questions"] / 2
            left = args.time_limit + 60 - (time.perf_counter() - start)
            if guess > left:
                print(f"[{label}] SKIPPED (expected ~{guess:.0f} s from the {prev[-1]['questions']}-question run, "
                      f"{left:.0f} s left)")
                report["skipped"].append(label)
                continue
        if backend == "generate":
            res = phase(label, lambda: run_generate(prompts[:q], model, tok, params, args.seed, device))
        else:
            res = phase(label, lambda: run_trees(backend, sampler, prompts[:q], [str(i) for i in range(q)], model,
                                                 tok, params, args.seed, args, device, bw))
        if res is not None:
            report["runs"].append(res)
            print(table([res]).splitlines()[-1], flush=True)
            save()
    ratios = []
    for r in report["runs"]:
        if r["sampler"] == "ib":
            base = [x for x in report["runs"] if x["sampler"] == "independent" and x["backend"] == r["backend"]
                    and x["questions"] == r["questions"]]
            if base:
                ratios.append({"backend": r["backend"], "questions": r["questions"],
                               "wall_ratio_ib_over_independent": r["wall_s"] / base[0]["wall_s"],
                               "token_ratio": r["new_tokens"] / base[0]["new_tokens"]})
    report["ratios"] = ratios
    report["total_s"] = time.perf_counter() - start
    save()
    print("\n" + table(report["runs"]))
    for x in ratios:
        print(f"IBTree (4,9,1,1) / independent G=8, {x['backend']}, {x['questions']} questions: wall-clock "
              f"{x['wall_ratio_ib_over_independent']:.2f}x for {x['token_ratio']:.2f}x the new tokens")
    for g in report["greedy"]:
        if g:
            print(f"greedy equality [{g['label']}]: {g['result']}")
    summary = targets(report)
    report["targets"] = summary
    save()
    for line in summary:
        print(line)
    print(f"errors: {len(report['errors'])}, skipped: {report['skipped']}, total {report['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
