"""The IB probe: grow IBTrees on a fixed set of questions and read the IB-Score instrument off them.

Used in two places:
- training-time monitoring (``ib_probe_every``): every N steps the current policy grows IBTrees on the first
  ``ib_probe_questions`` test questions, so runs that sample independently (GRPO and its regularised variants) get
  IB-Score and Cov curves too, and every algorithm is measured by the same instrument;
- ``ibtpo score``: one probe of any policy on any question set, written as JSON and a plot, and every trajectory
  with its extracted answer and score as JSONL (:func:`tree_samples`).

The probe draws from its own generator seeded with a fixed seed, so successive probes of a run differ only through
the policy (common random numbers), and the training RNG stream is not disturbed.

Per question (one tree): IB-Score, Cov(conf, r) and Tsallis-2 step entropy, each the mean over the tree's branching
nodes (>= 2 children; null when the tree has none), token entropy, mean reward, p_hat at the root, whether the
question is effective (rewards not all equal). Aggregates: node-level means over all branching nodes (the same
definition as the training metrics ``ib/*``), question-level mean and standard error, Eff-Rate, mean reward, and the
distribution of p_hat at the roots and at the inner nodes (neither root nor leaf; a leaf's p_hat is its reward).
"""

from __future__ import annotations

import math
import random
from statistics import mean, stdev
from typing import Callable

import numpy as np
import torch

from ibtpo.methods.ib_tpo import tree_ib_stats
from ibtpo.rewards.scoring import RewardFn
from ibtpo.rollout.grow import grow_problem_trees
from ibtpo.rollout.spec import RolloutSpec
from ibtpo.core.tree import Tree
from ibtpo.core.tree_stats import IBOptions
from ibtpo.rollout.metrics import rollout_metrics

PROBE_SEED_OFFSET = 2_000_003
P_HAT_BINS = 10


def grow_probe(spec: RolloutSpec, model, tokenizer, problems: list, reward_fn: RewardFn, seed: int,
               batch_questions: int = 16, on_batch: Callable[[int], None] | None = None) -> list[Tree]:
    """IBTrees for `problems`, grown as the probe's rollout spec says (``config.components.rollout_spec(cfg,
    tokenizer, "ib")``), `batch_questions` at a time, from streams seeded with `seed`; `on_batch(n)` is called after
    each batch of n."""
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    trees: list[Tree] = []
    for start in range(0, len(problems), batch_questions):
        chunk = problems[start:start + batch_questions]
        trees += grow_problem_trees(spec, model, tokenizer, chunk, reward_fn, generator, rng)
        if on_batch is not None:
            on_batch(len(chunk))
    return trees


def tree_samples(trees: list[Tree], tokenizer, extract: Callable[[str], str | None] | None) -> list[dict]:
    """One JSON-ready record per trajectory (leaf) of each tree: question id, leaf path, reference answer, completion,
    extracted answer, score, tokens, hit_cap (ended by the length cap, not by EOS)."""
    records = []
    for tree in trees:
        answer = tree.columns.get("answer")
        for leaf in tree.leaves():
            ids = Tree.completion(leaf)[0]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            records.append({"question_id": tree.question_id, "leaf": leaf.path, "answer": answer, "completion": text,
                            "extracted": extract(text) if extract is not None else None, "score": leaf.reward,
                            "tokens": len(ids), "hit_cap": not leaf.finished})
    return records


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def question_record(tree: Tree, ib_options: IBOptions) -> dict:
    """The instrument's readings on one question's tree (null where the tree has no branching node)."""
    ib = tree_ib_stats([tree], ib_options)
    ro = rollout_metrics([tree])
    return {"id": tree.question_id, "ib_score": _finite(ib["ib/score_mean"]),
            "cov_conf_gain": _finite(ib["ib/cov_conf_gain"]), "step_entropy": _finite(ib["ib/step_entropy"]),
            "branching_nodes": int(ib["ib/branching_nodes"]), "token_entropy": ro["actor/entropy"],
            "mean_reward": ro["reward/mean"], "p_hat_root": float(tree.root.p_hat), "effective": bool(ro["eff_rate"]),
            "trajectories": len(tree.leaves()), "new_tokens": tree.new_tokens}


def p_hat_histogram(values: list[float]) -> dict:
    """Counts of p_hat in 10 equal bins of [0, 1], plus how many are exactly 0 (all wrong) or 1 (all right)."""
    counts, edges = np.histogram(values, bins=P_HAT_BINS, range=(0.0, 1.0))
    return {"edges": [round(float(e), 2) for e in edges], "counts": counts.tolist(),
            "zero": sum(v == 0.0 for v in values), "one": sum(v == 1.0 for v in values), "n": len(values)}


def _mean_se(values: list[float | None]) -> dict:
    xs = [v for v in values if v is not None]
    return {"mean": mean(xs) if xs else None, "se": stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None,
            "n": len(xs)}


def summarize(trees: list[Tree], ib_options: IBOptions) -> dict:
    """Aggregate and per-question readings of a probe with the IB options `ib_options` (JSON-ready; see the module
    docstring)."""
    questions = [question_record(t, ib_options) for t in trees]
    ib = tree_ib_stats(trees, ib_options)
    ro = rollout_metrics(trees)
    inner_phat = [float(n.p_hat) for t in trees for n in t.nodes() if n.children]
    aggregate = {
        "ib_score": _finite(ib["ib/score_mean"]), "cov_conf_gain": _finite(ib["ib/cov_conf_gain"]),
        "step_entropy": _finite(ib["ib/step_entropy"]), "branching_nodes_per_question": ib["ib/branching_nodes"],
        "token_entropy": ro["actor/entropy"], "eff_rate": ro["eff_rate"], "mean_reward": ro["reward/mean"],
        "new_tokens_per_question": ro["rollout/new_tokens_per_question"],
        "trajectories_per_question": ro["rollout/trajectories_per_question"],
        "per_question": {k: _mean_se([q[k] for q in questions])
                         for k in ("ib_score", "cov_conf_gain", "step_entropy", "mean_reward")},
    }
    return {"aggregate": aggregate,
            "p_hat": {"root": p_hat_histogram([q["p_hat_root"] for q in questions]),
                      "inner_nodes": p_hat_histogram(inner_phat)},
            "questions": questions}


def probe_metrics(trees: list[Tree], ib: IBOptions) -> dict[str, float]:
    """Training-log scalars of a probe, named ``probe/...``: the aggregate readings of :func:`summarize` and the
    question-level standard errors of IB-Score and Cov (readings that do not exist, e.g. no branching node, are left
    out)."""
    agg = summarize(trees, ib)["aggregate"]
    per_q = agg["per_question"]
    out = {"probe/ib/score_mean": agg["ib_score"], "probe/ib/cov_conf_gain": agg["cov_conf_gain"],
           "probe/ib/step_entropy": agg["step_entropy"],
           "probe/ib/branching_nodes": agg["branching_nodes_per_question"],
           "probe/eff_rate": agg["eff_rate"], "probe/reward_mean": agg["mean_reward"],
           "probe/token_entropy": agg["token_entropy"], "probe/ib/score_se": per_q["ib_score"]["se"],
           "probe/ib/cov_se": per_q["cov_conf_gain"]["se"]}
    return {k: v for k, v in out.items() if v is not None}


def plot_summary(summary: dict, path, title: str) -> None:
    """PNG: p_hat at the roots and at the inner nodes, per-question IB-Score against mean reward, the IB histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, key, label in ((axes[0, 0], "root", "p_hat at the root (per question)"),
                           (axes[0, 1], "inner_nodes", "p_hat at inner nodes")):
        h = summary["p_hat"][key]
        widths = np.diff(h["edges"])
        ax.bar(h["edges"][:-1], h["counts"], width=widths, align="edge", edgecolor="k", alpha=0.7)
        ax.set_title(f"{label}: {h['zero']} at 0, {h['one']} at 1, of {h['n']}")
        ax.set_xlabel("p_hat")
    qs = [q for q in summary["questions"] if q["ib_score"] is not None]
    axes[1, 0].scatter([q["mean_reward"] for q in qs], [q["ib_score"] for q in qs], s=12, alpha=0.6)
    axes[1, 0].set_xlabel("mean reward of the question's trajectories")
    axes[1, 0].set_ylabel("IB-Score (mean over branching nodes)")
    axes[1, 0].set_title("per question")
    axes[1, 1].hist([q["ib_score"] for q in qs], bins=20, edgecolor="k", alpha=0.7)
    agg = summary["aggregate"]
    ib_txt = f"{agg['ib_score']:.3f}" if agg["ib_score"] is not None else "n/a"
    cov_txt = f"{agg['cov_conf_gain']:.4f}" if agg["cov_conf_gain"] is not None else "n/a"
    axes[1, 1].set_title(f"IB-Score per question (node mean {ib_txt}, Cov {cov_txt})")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
