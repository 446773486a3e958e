"""Statistics of one batch of rewarded trees: reward, Eff-Rate, length, cost, tree shape and diversity.

Metric names follow CONVENTIONS.md; the trainer logs them every step and the IB probe on its fixed questions. Both
read the trees' kept statistics (``Tree.statistics``): lineages and completions are not walked again.
"""

from __future__ import annotations

from statistics import mean

from ibtpo.core.group_std import group_std
from ibtpo.core.tree import Tree


def rollout_metrics(trees: list[Tree]) -> dict[str, float]:
    """Reward, Eff-Rate, length, cost and tree-shape statistics of one rollout batch (CONVENTIONS.md names).

    Cost is per question: new tokens (a shared prefix counts once), prefix tokens whose keys/values were reused
    instead of computed, prefix tokens encoded (prompt prefill + one re-fed token per fork row with reuse).
    """
    kept = [t.statistics() for t in trees]
    rewards = [leaf.reward or 0.0 for k in kept for leaf in k.leaves]
    lengths = [len(ids) for k in kept for ids, _ in k.completions]
    entropies = [e for t in trees for n in t.nodes() for e in n.entropies]
    effective = [len({leaf.reward for leaf in k.leaves}) > 1 for k in kept]
    truncated = [not leaf.finished for k in kept for leaf in k.leaves]
    stats = [t.stats() for t in trees]
    mu = mean(rewards)
    return {
        "reward/mean": mu,
        "reward/std": group_std(rewards, mean=mu),
        "eff_rate": mean(effective),
        "actor/entropy": mean(entropies) if entropies else 0.0,
        "response_length/mean": mean(lengths),
        "response_length/clip_ratio": mean(truncated),
        "rollout/new_tokens_per_question": mean(s["new_tokens"] for s in stats),
        "rollout/trajectories_per_question": mean(s["trajectories"] for s in stats),
        "rollout/reused_prefix_tokens": mean(t.meta.get("reused_prefix_tokens", 0) for t in trees),
        "rollout/encoded_prefix_tokens": mean(t.meta.get("encoded_prefix_tokens", 0) for t in trees),
        "rollout/tree_depth": mean(s["depth"] for s in stats),
        "rollout/branching_nodes": mean(s["branching_nodes"] for s in stats),
        "rollout/nodes_per_question": mean(s["nodes"] for s in stats),
    }


def diversity_metrics(trees: list[Tree], tokenizer, extract) -> dict[str, float]:
    """Per question, how different its trajectories are (means over the batch's questions).

    - ``diversity/distinct_answers``: distinct final answers (``extract`` of the decoded completion, the text the
      reward step kept on the leaf, else decoded with `tokenizer`; completions without an answer are not counted);
    - ``diversity/distinct_completions``: distinct completions (as token sequences) / trajectories, in (0, 1].
    """
    answers, completions = [], []
    for t in trees:
        kept = t.statistics()
        seqs = [tuple(ids) for ids, _ in kept.completions]
        texts: dict[tuple[int, ...], str | None] = {}
        for seq, leaf in zip(seqs, kept.leaves):
            if texts.get(seq) is None:
                texts[seq] = leaf.text
        found = {extract(tokenizer.decode(list(s), skip_special_tokens=True) if texts[s] is None else texts[s])
                 for s in set(seqs)}
        answers.append(len(found - {None}))
        completions.append(len(set(seqs)) / max(1, len(seqs)))
    return {"diversity/distinct_answers": mean(answers), "diversity/distinct_completions": mean(completions)}
