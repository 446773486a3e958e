"""Refuse questions whose prompt cannot fit the model's context window with a full completion.

A prompt of P tokens with completions up to ``max_completion_length`` = M needs P + M positions; a model with
``max_position_embeddings`` = N cannot run past N (it errors or, with some position schemes, silently degrades).
Checked once, before a run or an evaluation starts, over every question that will be used.
"""

from __future__ import annotations

from typing import Iterable

from ibtpo.data.datasets import DataError

BATCH = 512


def context_window(model) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``), or None when its config does not say."""
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def fit_prompts(cfg, question_sets: dict[str, Iterable], tokenizer, model) -> int:
    """Make sure every question fits the model's context window with a full completion, tokenizing each prompt once.

    When the completion cap came from the real-model profile (the user did not set it) and leaves no room for the
    longest prompt, the cap is lowered to what fits (recorded in ``cfg._profile``, so the start line shows it).
    Otherwise raise DataError (one line naming the set and question id) for the first question whose prompt plus
    ``cfg.max_completion_length`` exceeds the window. `question_sets`: name -> objects with ``id`` and ``prompt``
    (rendered text). Returns the longest prompt's length in tokens."""
    window = context_window(model)
    lengths = list(_prompt_lengths(question_sets, tokenizer))
    longest = max((n for *_, n in lengths), default=0)
    if window is None:
        return longest
    if ("max_completion_length" in cfg._profile and longest + cfg.max_completion_length > window
            and window - longest >= 1):
        cfg.max_completion_length = window - longest
        cfg._profile["max_completion_length"] = cfg.max_completion_length
    max_completion_length = cfg.max_completion_length
    if max_completion_length >= window:
        raise DataError(f"max_completion_length={max_completion_length} leaves no room for a prompt in the model's "
                        f"context window of {window} tokens (max_position_embeddings)")
    room = window - max_completion_length
    for name, q, n in lengths:
        if n > room:
            raise DataError(f"{name}: question {q.id}: its prompt is {n:,} tokens; with "
                            f"max_completion_length={max_completion_length} that needs "
                            f"{n + max_completion_length:,} positions, but the model's context window "
                            f"is {window:,} (max_position_embeddings); shorten or drop the question, or lower "
                            f"max_completion_length")
    return longest


def _prompt_lengths(question_sets: dict[str, Iterable], tokenizer):
    """(set name, question, prompt tokens) of every question, tokenized in batches of BATCH."""
    for name, questions in question_sets.items():
        questions = list(questions)
        for start in range(0, len(questions), BATCH):
            chunk = questions[start:start + BATCH]
            ids = tokenizer([q.prompt for q in chunk], add_special_tokens=False)["input_ids"]
            yield from ((name, q, len(toks)) for q, toks in zip(chunk, ids))


def run_question_sets(source, steps_ahead: int = 1) -> dict[str, list]:
    """Every question a run will use: the evaluation sets, and the training rows (a file source), or the first
    `steps_ahead` generated training questions (the built-in task, whose questions all share one form)."""
    sets = dict(source.test_sets)
    rows = getattr(source, "rows", None)
    if rows is not None:
        sets["dataset"] = rows
    else:
        sets["train"] = [source.train_problem(i) for i in range(steps_ahead)]
    return sets
