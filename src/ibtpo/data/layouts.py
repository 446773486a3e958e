"""Dataset layouts: how one row of a known math dataset becomes a prompt, a reference answer and an id.

A layout is a small function ``(row, overrides) -> ParsedRow`` registered in :data:`LAYOUTS`; it raises
:class:`RowError` with the reason when the row cannot become a question (the loader adds ``file:line``).

Layouts and their default columns (``prompt`` / ``answer`` / ``id``; any of them can be overridden):

* ``dapo``    DAPO-Math-17K, verl parquet: ``prompt`` (chat messages) / ``reward_model["ground_truth"]`` /
  ``extra_info["index"]``.
* ``math500`` MATH-500: ``problem`` / ``answer`` / ``unique_id``.
* ``aime``    AIME sets: ``problem`` (or ``question``) / ``answer`` (an int becomes a string) / ``id``.
* ``gsm8k``   GSM8K: ``question`` / the number after ``####`` in ``answer`` (thousands commas removed) / ``id``.
* ``columns`` generic: ``prompt`` / ``answer`` / ``id`` unless ``prompt_column=`` / ``answer_column=`` /
  ``id_column=`` say otherwise.

Auto-detection (:func:`detect_layout`, deterministic, on one row's columns, first rule that holds):

1. a prompt or answer column override was given -> ``columns``;
2. ``reward_model`` and ``prompt`` -> ``dapo``;
3. ``question`` and an ``answer`` containing ``####`` -> ``gsm8k``;
4. ``problem`` and ``answer`` and any of ``unique_id``, ``solution``, ``subject``, ``level`` -> ``math500``;
5. ``problem`` or ``question``, and an integer-like ``answer`` -> ``aime``;
6. ``problem`` and ``answer`` -> ``math500``;
7. ``prompt`` and ``answer`` -> ``columns``;
8. otherwise no layout (``None``).

Every column a layout does not consume (prompt, answer, id) is passed on as the question's extra columns.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple

Prompt = str | tuple[dict, ...]


class RowError(ValueError):
    """One row cannot become a question; the message is the reason only (the loader adds ``file:line``)."""


class Columns(NamedTuple):
    """Column overrides; ``None`` keeps the layout's default column."""

    prompt: str | None = None
    answer: str | None = None
    id: str | None = None


class ParsedRow(NamedTuple):
    """What a layout makes of one row: the prompt, the reference answer, the id (or None) and the other columns."""

    prompt: Prompt
    answer: str
    id: str | None
    columns: dict[str, Any]


Layout = Callable[[dict[str, Any], Columns], ParsedRow]

MESSAGES_HINT = "expected chat messages [{role, content}, ...]"


# --- field helpers -----------------------------------------------------------------------------------------------

def get_field(row: dict[str, Any], name: str) -> Any:
    """``row[name]``, or a RowError listing the row's fields."""
    if name not in row:
        raise RowError(f"missing field '{name}' (fields: {', '.join(sorted(row)) or 'none'})")
    return row[name]


def _is_array(value: Any) -> bool:
    """A numpy-like array (as pandas-read parquet gives for list columns)."""
    return getattr(value, "ndim", 0) >= 1 and hasattr(value, "tolist")


def chat_messages(value: Any, name: str) -> tuple[dict, ...]:
    """A list of ``{role, content}`` dicts as a tuple of plain dicts (other keys dropped)."""
    bad = RowError(f"field '{name}': {MESSAGES_HINT}")
    if _is_array(value):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise bad
    out = []
    for message in value:
        if not isinstance(message, dict):
            raise bad
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise bad
        out.append({"role": role, "content": content})
    if not any(m["content"].strip() for m in out):
        raise bad
    return tuple(out)


def prompt_value(row: dict[str, Any], name: str) -> Prompt:
    """A non-empty string prompt, or chat messages when the field holds a list."""
    value = get_field(row, name)
    if isinstance(value, (list, tuple)) or _is_array(value):
        return chat_messages(value, name)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field '{name}' must be a non-empty string")
    return str(value)


def answer_string(value: Any, name: str) -> str:
    """A reference answer as a stripped string (``3.0`` -> ``"3"``); None, NaN and empty are errors."""
    if value is None:
        raise RowError(f"field '{name}' is empty (null)")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field '{name}' must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float):
        if math.isnan(value):
            raise RowError(f"field '{name}' is empty (NaN)")
        if value.is_integer():
            value = int(value)
    text = str(value).strip()
    if not text:
        raise RowError(f"field '{name}' is empty")
    return text


def id_value(row: dict[str, Any], name: str) -> str | None:
    """The row's id as a string, or None when the column is absent, null or empty."""
    value = row.get(name)
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text or None


def other_columns(row: dict[str, Any], *used: str | None) -> dict[str, Any]:
    """The row's columns minus the ones a layout consumed."""
    return {key: value for key, value in row.items() if key not in used}


def is_integer_like(value: Any) -> bool:
    """An int (not bool), an integral float, or a string of digits with an optional sign."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value) is not None


# --- layouts -----------------------------------------------------------------------------------------------------

def dapo(row: dict[str, Any], cols: Columns) -> ParsedRow:
    """DAPO-Math-17K: chat-message ``prompt``, ``reward_model["ground_truth"]``, id from ``extra_info["index"]``."""
    p, a = cols.prompt or "prompt", cols.answer or "reward_model"
    prompt = prompt_value(row, p)
    raw = get_field(row, a)
    if isinstance(raw, dict):
        if "ground_truth" not in raw:
            raise RowError(f"field '{a}' has no 'ground_truth' (keys: {', '.join(sorted(raw)) or 'none'})")
        answer = answer_string(raw["ground_truth"], f"{a}.ground_truth")
    else:
        answer = answer_string(raw, a)
    if cols.id:
        ident = id_value(row, cols.id)
    else:
        info = row.get("extra_info")
        ident = id_value(info, "index") if isinstance(info, dict) else None
    return ParsedRow(prompt, answer, ident, other_columns(row, p, a, cols.id))


def _simple(row: dict[str, Any], p: str, a: str, i: str) -> ParsedRow:
    """Prompt, answer and id read straight from three columns."""
    prompt, answer = prompt_value(row, p), answer_string(get_field(row, a), a)
    return ParsedRow(prompt, answer, id_value(row, i), other_columns(row, p, a, i))


def math500(row: dict[str, Any], cols: Columns) -> ParsedRow:
    """MATH-500: ``problem``, ``answer``, ``unique_id``."""
    return _simple(row, cols.prompt or "problem", cols.answer or "answer", cols.id or "unique_id")


def aime(row: dict[str, Any], cols: Columns) -> ParsedRow:
    """AIME: ``problem`` (or ``question`` when there is no ``problem``), ``answer``, ``id``."""
    default = "question" if "question" in row and "problem" not in row else "problem"
    return _simple(row, cols.prompt or default, cols.answer or "answer", cols.id or "id")


def gsm8k(row: dict[str, Any], cols: Columns) -> ParsedRow:
    """GSM8K: ``question``; the answer is the number after the last ``####`` of ``answer``, commas removed."""
    p, a, i = cols.prompt or "question", cols.answer or "answer", cols.id or "id"
    prompt = prompt_value(row, p)
    text = answer_string(get_field(row, a), a)
    if "####" not in text:
        raise RowError(f"field '{a}' has no '#### <answer>' line (GSM8K layout)")
    final = text.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise RowError(f"field '{a}' has nothing after '####'")
    return ParsedRow(prompt, final, id_value(row, i), other_columns(row, p, a, i))


def columns(row: dict[str, Any], cols: Columns) -> ParsedRow:
    """Generic: ``prompt_column`` / ``answer_column`` / ``id_column`` (defaults ``prompt`` / ``answer`` / ``id``)."""
    return _simple(row, cols.prompt or "prompt", cols.answer or "answer", cols.id or "id")


LAYOUTS: dict[str, Layout] = {"dapo": dapo, "math500": math500, "aime": aime, "gsm8k": gsm8k, "columns": columns}


def detect_layout(row: dict[str, Any], cols: Columns = Columns()) -> str | None:
    """The layout name for a row's columns by the rule in the module docstring, or None."""
    has = row.__contains__
    if cols.prompt or cols.answer:
        return "columns"
    if has("reward_model") and has("prompt"):
        return "dapo"
    if not has("answer"):
        return None
    answer = row["answer"]
    if has("question") and isinstance(answer, str) and "####" in answer:
        return "gsm8k"
    if has("problem") and any(has(key) for key in ("unique_id", "solution", "subject", "level")):
        return "math500"
    if (has("problem") or has("question")) and is_integer_like(answer):
        return "aime"
    if has("problem"):
        return "math500"
    return "columns" if has("prompt") else None
