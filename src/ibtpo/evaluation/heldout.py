"""Held-out evaluation: avg@k, pass@k (unbiased estimator), maj@k, greedy accuracy, cap-hit rate; per-completion
records for inspection (:func:`write_samples`)."""

from __future__ import annotations

from collections import Counter
from math import comb
from typing import Callable

import torch

from ibtpo.core.correct import is_correct
from ibtpo.rewards.scoring import reward_columns, score_completions
from ibtpo.backends.factory import sample
from ibtpo.config.components import eval_spec
from ibtpo.core.sampling import SamplingParams
from ibtpo.rollout.spec import RolloutSpec


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv 2107.03374):
    1 - C(n - c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: list[str | None], correct: list[bool]) -> bool:
    """maj@k: is the most frequent extracted answer (ties: first seen) a correct one?"""
    seen = [(a, ok) for a, ok in zip(answers, correct) if a is not None]
    if not seen:
        return False
    top = Counter(a for a, _ in seen).most_common(1)[0][0]
    return any(ok for a, ok in seen if a == top)


def _columns(problems, k: int) -> dict[str, list]:
    """Reward columns of `problems`, each repeated k times (one entry per completion)."""
    rows = [reward_columns(p) for p in problems]
    return {key: [r.get(key) for r in rows for _ in range(k)] for key in rows[0]}


def _records(problems, flat: list[str], gens: list, scores: list[float], k: int, extract, label) -> list[dict]:
    """One JSON-ready record per completion of a batch (`label(j)`: its sample index, or "greedy")."""
    out = []
    for i, q in enumerate(problems):
        for j in range(k):
            text, gen = flat[i * k + j], gens[i * k + j]
            out.append({"question_id": q.id, "sample": label(j), "answer": q.answer, "completion": text,
                        "extracted": extract(text) if extract is not None else None, "score": scores[i * k + j],
                        "tokens": len(gen.token_ids), "hit_cap": not gen.finished, "prompt": q.prompt})
    return out


@torch.no_grad()
def evaluate(model, tokenizer, problems, reward_fn: Callable, spec: RolloutSpec, greedy: bool = True, seed: int = 0,
             batch_questions: int = 128, extract: Callable[[str], str | None] | None = None,
             on_batch: Callable[[int], None] | None = None, samples: list[dict] | None = None,
             formats: dict[str, Callable[[str, str], bool]] | None = None) -> dict[str, float]:
    """Sample k completions per problem (and one greedy) and score them; returns avg@k, pass@k, maj@k, greedy acc,
    the mean sampled length and ``cap_hit_rate`` (share of all completions, sampled and greedy, that reached the
    completion cap without an end-of-sequence token).

    `spec`: how to draw (``config.components.eval_spec``, or ``RolloutSpec.independent(k, sampling)``): k = its group
    size, its sampling parameters (temperature, top-p, the cap ``max_new_tokens``, ``max_rows`` rows decoded at once,
    0 = batch_questions x k together), its backend (auto: static on CUDA, eager elsewhere; ``backends.factory``) and
    KV slots; its sampler is not used (evaluation samples independently).
    A completion counts as correct when its reward is >= 1. Uses its own generator seeded with `seed`, so evaluation
    neither depends on nor disturbs the training RNG. `on_batch(n)` is called after every batch of n questions.
    `samples`, when given, receives one record per completion (question id, sample index or "greedy", answer,
    completion, extracted answer, score, tokens, hit_cap, prompt). Completions end at the tokenizer's EOS or any
    EOS id of the model's generation config. `formats` (name -> fn(completion, answer) -> bool) adds, per name,
    ``NAME_avg@k`` (share of the sampled completions it accepts) and ``NAME_greedy_acc`` (of the greedy ones).
    """
    k, params, backend, slots_gib = spec.shape.group_size, spec.sampling, spec.backend, spec.slots_gib
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    totals = Counter()
    lengths = []
    capped = 0
    for start in range(0, len(problems), batch_questions):
        chunk = problems[start:start + batch_questions]
        prompts = [tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in chunk]
        groups = sample(model, prompts, params, eos, pad, generator=gen, n=k, backend=backend, slots_gib=slots_gib)
        gens = [g for grp in groups for g in grp]
        flat, scores = score_completions(reward_fn, tokenizer, [p.prompt for p in chunk for _ in range(k)],
                                         [g.token_ids for g in gens], _columns(chunk, k))
        lengths += [len(g.token_ids) for g in gens]
        capped += sum(not g.finished for g in gens)
        if samples is not None:
            samples += _records(chunk, flat, gens, scores, k, extract, lambda j: j)
        for name, fn in (formats or {}).items():
            totals[f"{name}_avg"] += sum(fn(t, chunk[j // k].answer) for j, t in enumerate(flat)) / k
        for i in range(len(chunk)):
            grp = flat[i * k:(i + 1) * k]
            ok = [is_correct(s) for s in scores[i * k:(i + 1) * k]]
            c = sum(ok)
            totals["avg"] += c / k
            totals["passk"] += pass_at_k(k, c, k)
            if extract is not None:
                totals["maj"] += majority_correct([extract(t) for t in grp], ok)
        if greedy:
            greedy_params = SamplingParams(greedy=True, max_new_tokens=params.max_new_tokens,
                                           max_rows=params.max_rows)
            gg = [g[0] for g in sample(model, prompts, greedy_params, eos, pad, backend=backend, slots_gib=slots_gib)]
            gtexts, gscores = score_completions(reward_fn, tokenizer, [p.prompt for p in chunk],
                                                [g.token_ids for g in gg], _columns(chunk, 1))
            totals["greedy"] += sum(is_correct(s) for s in gscores)
            for name, fn in (formats or {}).items():
                totals[f"{name}_greedy"] += sum(fn(t, q.answer) for t, q in zip(gtexts, chunk))
            capped += sum(not g.finished for g in gg)
            if samples is not None:
                samples += _records(chunk, gtexts, gg, gscores, 1, extract, lambda j: "greedy")
        if on_batch is not None:
            on_batch(len(chunk))
    n = len(problems)
    out = {f"avg@{k}": totals["avg"] / n, f"pass@{k}": totals["passk"] / n,
           "response_length": sum(lengths) / max(1, len(lengths)),
           "cap_hit_rate": capped / max(1, n * (k + int(greedy)))}
    if extract is not None:
        out[f"maj@{k}"] = totals["maj"] / n
    if greedy:
        out["greedy_acc"] = totals["greedy"] / n
    for name in formats or {}:
        out[f"{name}_avg@{k}"] = totals[f"{name}_avg"] / n
        if greedy:
            out[f"{name}_greedy_acc"] = totals[f"{name}_greedy"] / n
    model.train(was_training)
    return out


def write_samples(path, records: list[dict]) -> None:
    """Write evaluation records as JSONL (one completion per line), creating the parent directory."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


EVAL_SEED_OFFSET = 1_000_003
"""Evaluation draws from seed + this offset: its own stream, the same at every evaluation of a run."""


def evaluate_sets(cfg, model, tokenizer, rewards, sets: dict[str, list], bar: Callable | None = None,
                  samples: list[dict] | None = None) -> dict[str, dict[str, float]]:
    """:func:`evaluate` on every named question set with a run config's evaluation settings (``eval_*``).

    `rewards`: the run's ``data.tasks.Rewards`` (check + extract). `bar(label, total)` may return an object with
    ``on_batch(n)`` and ``close()`` (a progress bar). `samples` receives every completion record, with its set name.
    Returns {set name: metrics}."""
    spec = eval_spec(cfg)
    out = {}
    for name, problems in sets.items():
        progress = bar(name, len(problems)) if bar else None
        found = [] if samples is not None else None
        out[name] = evaluate(model, tokenizer, problems, rewards.check, spec, greedy=cfg.eval_greedy,
                             seed=cfg.seed + EVAL_SEED_OFFSET, batch_questions=cfg.eval_batch_questions,
                             extract=rewards.extract, on_batch=progress.on_batch if progress else None,
                             samples=found, formats=getattr(rewards, "formats", None))
        if progress:
            progress.close()
        if found is not None:
            samples += [{"dataset": name, **r} for r in found]
    return out
