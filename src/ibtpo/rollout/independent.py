"""Independent sampling (the GRPO rollout): G completions per question, hung as a depth-one tree."""

from __future__ import annotations

import torch

from ibtpo.rollout.sampling import SamplingParams, sample
from ibtpo.rollout.tree import Tree


def sample_independent(model, prompts: list[list[int]], question_ids: list[str], columns: list[dict],
                       params: SamplingParams, num_generations: int, eos_id: int, pad_id: int,
                       generator: torch.Generator | None = None) -> list[Tree]:
    """One tree per question with `num_generations` leaf children of the root (rewards not yet set)."""
    groups = sample(model, prompts, params, eos_id, pad_id, generator=generator, n=num_generations)
    trees = []
    for prompt, qid, cols, gens in zip(prompts, question_ids, columns, groups):
        tree = Tree(question_id=qid, prompt_ids=list(prompt), columns=dict(cols))
        for g in gens:
            leaf = tree.root.add_child(g.token_ids, g.logprobs, g.entropies)
            leaf.finished = g.finished
        trees.append(tree)
    return trees
