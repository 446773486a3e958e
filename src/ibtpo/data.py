"""Question sets from local files: JSONL rows with a prompt and a reference answer.

Every row becomes a :class:`Question` (``id``, ``prompt``, ``answer``), the same shape as the testbed's problems, so
samplers, the probe and evaluation take either. A malformed row stops the load with ``file:line: reason``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A question file cannot be read; the message is one line naming file:line."""


@dataclass(frozen=True)
class Question:
    """One prompt and its reference answer."""

    id: str
    prompt: str
    answer: str


def load_jsonl_questions(path: str | Path, prompt_key: str = "prompt", answer_key: str = "answer",
                         id_key: str = "id") -> list[Question]:
    """Questions from a JSONL file (one object per line; blank lines skipped; ``id`` defaults to the line number)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for key in (prompt_key, answer_key):
            if key not in row:
                raise DataError(f"{path}:{lineno}: missing field '{key}' (fields: {', '.join(sorted(row)) or 'none'})")
        if not isinstance(row[prompt_key], str) or not row[prompt_key]:
            raise DataError(f"{path}:{lineno}: field '{prompt_key}' must be a non-empty string")
        out.append(Question(id=str(row.get(id_key, f"line-{lineno}")), prompt=row[prompt_key],
                            answer=str(row[answer_key])))
    if not out:
        raise DataError(f"{path}: no questions (empty file)")
    return out
