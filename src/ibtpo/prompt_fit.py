"""Refuse questions whose prompt cannot fit the model's context window with a full completion.

A prompt of P tokens with completions up to ``max_completion_length`` = M needs P + M positions; a model with
``max_position_embeddings`` = N cannot run past N (it errors or, with some position schemes, silently degrades).
Checked once, before a run or an evaluation starts, over every question that will be used.
"""

from __future__ import annotations

from typing import Iterable

from ibtpo.data import DataError

BATCH = 512


def context_window(model) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``), or None when its config does not say."""
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def check_prompts_fit(question_sets: dict[str, Iterable], tokenizer, model, max_completion_length: int) -> None:
    """Raise DataError (one line naming the set and question id) for the first question whose prompt plus
    `max_completion_length` exceeds the model's context window. `question_sets`: name -> objects with ``id`` and
    ``prompt`` (rendered text)."""
    window = context_window(model)
    if window is None:
        return
    if max_completion_length >= window:
        raise DataError(f"max_completion_length={max_completion_length} leaves no room for a prompt in the model's "
                        f"context window of {window} tokens (max_position_embeddings)")
    room = window - max_completion_length
    for name, questions in question_sets.items():
        questions = list(questions)
        for start in range(0, len(questions), BATCH):
            chunk = questions[start:start + BATCH]
            ids = tokenizer([q.prompt for q in chunk], add_special_tokens=False)["input_ids"]
            for q, toks in zip(chunk, ids):
                if len(toks) > room:
                    raise DataError(f"{name}: question {q.id}: its prompt is {len(toks):,} tokens; with "
                                    f"max_completion_length={max_completion_length} that needs "
                                    f"{len(toks) + max_completion_length:,} positions, but the model's context window "
                                    f"is {window:,} (max_position_embeddings); shorten or drop the question, or lower "
                                    f"max_completion_length")


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


def fit_profile_cap(cfg, question_sets: dict[str, Iterable], tokenizer, model) -> None:
    """When the completion cap came from the real-model profile (the user did not set it) and leaves no room for the
    longest prompt in the model's context window, lower it to what fits (recorded in ``cfg._profile``, so the start
    line shows it); a cap the user set is left for :func:`check_prompts_fit` to judge."""
    window = context_window(model)
    if window is None or "max_completion_length" not in cfg._profile:
        return
    longest = 0
    for questions in question_sets.values():
        questions = list(questions)
        for start in range(0, len(questions), BATCH):
            ids = tokenizer([q.prompt for q in questions[start:start + BATCH]], add_special_tokens=False)["input_ids"]
            longest = max([longest] + [len(t) for t in ids])
    if longest + cfg.max_completion_length > window and window - longest >= 1:
        cfg.max_completion_length = window - longest
        cfg._profile["max_completion_length"] = cfg.max_completion_length
