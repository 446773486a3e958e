"""Calling a reward function with TRL's signature on generated token ids."""

from __future__ import annotations

from typing import Any, Callable

RewardFn = Callable[..., list]


def reward_columns(problem) -> dict[str, Any]:
    """Dataset columns passed to the reward function with a problem's completions (at least its reference answer)."""
    return problem.reward_columns() if hasattr(problem, "reward_columns") else {"answer": problem.answer}


def score_completions(reward_fn: RewardFn, tokenizer, prompts: list[str], completion_ids: list[list[int]],
                      columns: dict[str, list[Any]]) -> tuple[list[str], list[float]]:
    """Decode completions and score them: ``reward_fn(prompts, completions, completion_ids, **columns)``.

    `columns` holds one list per dataset column, aligned with `prompts`. A score of None counts as 0.0.
    Returns (decoded completions, float scores).
    """
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in completion_ids]
    scores = reward_fn(prompts, list(texts), completion_ids, **columns)  # a copy: the texts returned stay decoded
    return texts, [0.0 if s is None else float(s) for s in scores]


def reward_leaves(reward_fn: RewardFn, tokenizer, prompt: str, tree, leaves: list) -> None:
    """Score new leaves of one tree (their root-to-leaf completions) and set ``leaf.reward`` and ``leaf.text`` (the
    decoded completion the reward function was given, kept for the metrics).

    The tree's ``columns`` (e.g. the reference answer) are passed to the reward function for every leaf.
    """
    from ibtpo.core.tree import Tree

    texts, scores = score_completions(reward_fn, tokenizer, [prompt] * len(leaves),
                                      [Tree.completion(leaf)[0] for leaf in leaves],
                                      {k: [v] * len(leaves) for k, v in tree.columns.items()})
    for leaf, text, s in zip(leaves, texts, scores):
        leaf.reward, leaf.text = s, text
