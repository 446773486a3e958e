"""Question sets from local files: math datasets in known layouts (DAPO, MATH-500, AIME, GSM8K) or plain columns.

Every row becomes a :class:`Question` (``id``, ``prompt``, ``answer``, ``columns``), the same shape as the testbed's
problems, so samplers, the probe and evaluation take either. :func:`load_questions` reads ``.jsonl``, ``.json``,
``.parquet`` and ``datasets`` ``save_to_disk`` directories; the row layouts live in :mod:`ibtpo.data.layouts`.

A malformed row stops the load with ``location: reason`` (``file:LINE`` for JSONL, ``file:row N`` for JSON and
parquet, ``dir[split]:row N`` for a saved DatasetDict), or with ``skip_bad_rows=True`` is skipped and listed in
:attr:`LoadedDataset.skipped`.

Prompt text for the policy (:func:`render_prompt`): with ``chat_template=auto`` (default) every prompt, chat messages
or a plain string (as one user turn), goes through the tokenizer's chat template when the tokenizer has one; a
tokenizer without one gets plain strings as they are. ``prompt_template`` is a template with ``{prompt}`` or the
name of a preset in :data:`PROMPT_PRESETS` (``boxed``, ``answer_line``).

Ids come from the layout's id column when present, else ``<name>-<row index>`` (0-based index of the row in the
file, blank JSONL lines not counted, bad rows counted, so ids do not move when rows are skipped). A repeated id
gets ``#2``, ``#3``, ... appended in file order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ibtpo.data.layouts import LAYOUTS, Columns, Prompt, RowError, detect_layout

ACCEPTED = ".jsonl, .json, .parquet, or a directory written by datasets save_to_disk"
LAYOUT_CHOICES = "dapo, math500, aime, gsm8k, columns (with prompt_column= and answer_column=)"

PROMPT_PRESETS = {
    "boxed": "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "answer_line": "{prompt}\nSolve the problem step by step. The last line of your response must be of the form "
                   "'Answer: X', where X is the final answer alone.",
}
"""Named prompt templates (``prompt_template=NAME``) for the common math instructions."""

RawRow = tuple[str, int, Any]  # (location, 0-based row index, parsed value or a RowError)


class DataError(ValueError):
    """A question file cannot be read; the message is one line naming file:line."""


@dataclass(frozen=True)
class Question:
    """One prompt (a string or chat messages) and its reference answer; ``columns`` are the row's other fields.

    ``columns`` does not take part in equality or hashing.
    """

    id: str
    prompt: Prompt
    answer: str
    columns: dict = field(default_factory=dict, compare=False)


@dataclass
class LoadedDataset:
    """The questions of one file, the layout that read them and the rows skipped as ``location: reason``."""

    name: str
    path: str
    layout: str
    questions: list[Question]
    skipped: list[str] = field(default_factory=list)


# --- readers: each yields (location, row index, value) ------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _jsonl_rows(path: Path) -> Iterator[RawRow]:
    """One row per non-blank line, located by its 1-based line number (a RowError value for invalid JSON)."""
    lines = (ln for ln in enumerate(_read_text(path).split("\n"), start=1) if ln[1].strip())
    for index, (lineno, line) in enumerate(lines):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            value = RowError(f"not valid JSON ({exc.msg})")
        yield f"{path}:{lineno}", index, value


def _json_rows(path: Path) -> Iterator[RawRow]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for index, value in enumerate(data):
        yield f"{path}:row {index + 1}", index, value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: cannot read parquet ({_one_line(exc)})") from None
    for index, value in enumerate(rows):
        yield f"{path}:row {index + 1}", index, value


def _pick_split(path: Path, splits: list[str], split: str | None) -> str:
    """The requested split, else ``test``, else ``train``; a DataError listing the splits otherwise."""
    if split is not None and split in splits:
        return split
    if split is None:
        for default in ("test", "train"):
            if default in splits:
                return default
    wanted = f"split '{split}' not found" if split is not None else "no 'test' or 'train' split"
    raise DataError(f"{path}: {wanted}; set split= one of {', '.join(splits) or 'none'}")


def _saved_rows(path: Path, split: str | None) -> Iterator[RawRow]:
    import datasets

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as exc:  # not a save_to_disk directory, or unreadable
        raise DataError(f"{path}: not a directory written by datasets save_to_disk ({_one_line(exc)})") from None
    where = str(path)
    if isinstance(saved, datasets.DatasetDict):
        chosen = _pick_split(path, list(saved), split)
        saved, where = saved[chosen], f"{path}[{chosen}]"
    for index, value in enumerate(saved.to_list()):
        yield f"{where}:row {index + 1}", index, value


def _open_rows(path: Path, split: str | None) -> tuple[str, list[RawRow]]:
    """(dataset name, raw rows) for a file or a saved ``datasets`` directory."""
    if path.is_dir():
        return path.resolve().name, list(_saved_rows(path, split))
    if not path.is_file():
        raise DataError(f"dataset file not found: {path} (accepted: {ACCEPTED})")
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown dataset file type '{path.suffix}' (accepted: {ACCEPTED})")
    return path.stem, list(reader(path))


# --- rows to questions ---------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A JSON-able copy: numpy arrays and scalars to Python, tuples to lists, anything unknown to ``str``."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _as_object(value: Any) -> dict[str, Any]:
    if isinstance(value, RowError):
        raise value
    if not isinstance(value, dict):
        raise RowError(f"expected a JSON object, got {type(value).__name__}")
    return _plain(value)


def _apply_template(prompt: Prompt, template: str | None) -> Prompt:
    """``template`` with ``{prompt}`` replaced: the whole string prompt, or the last user message's content."""
    if template is None:
        return prompt
    if isinstance(prompt, str):
        return template.replace("{prompt}", prompt)
    users = [i for i, message in enumerate(prompt) if message["role"] == "user"]
    if not users:
        raise RowError("chat prompt has no user message for prompt_template")
    messages = [dict(message) for message in prompt]
    messages[users[-1]]["content"] = template.replace("{prompt}", messages[users[-1]]["content"])
    return tuple(messages)


def resolve_prompt_template(template: str | None) -> str | None:
    """A preset name -> its template; a template with ``{prompt}`` as it is; anything else a DataError."""
    if template is None or "{prompt}" in template:
        return template
    if template in PROMPT_PRESETS:
        return PROMPT_PRESETS[template]
    raise DataError(f"prompt_template {template!r} has no {{prompt}} placeholder and is not a preset "
                    f"({', '.join(PROMPT_PRESETS)})")


def _check_options(layout: str, template: str | None) -> None:
    if layout != "auto" and layout not in LAYOUTS:
        raise DataError(f"unknown dataset layout '{layout}'; use auto or one of {LAYOUT_CHOICES}")
    resolve_prompt_template(template)


def uses_chat_template(prompt: Prompt, tokenizer, chat_template: str) -> bool:
    """Does `prompt` go through the tokenizer's chat template? (the rule of :func:`render_prompt`)"""
    if not isinstance(prompt, str):
        return True  # chat messages (chat_template=never then fails in render_prompt)
    if chat_template == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return chat_template == "always"


def render_prompt(prompt: Prompt, tokenizer, chat_template: str) -> str:
    """Prompt text for the policy. Chat messages always go through the tokenizer's chat template (with the generation
    prompt); a string does too, as one user turn, with ``always``, or with ``auto`` when the tokenizer has one;
    otherwise the string is used as it is."""
    if not uses_chat_template(prompt, tokenizer, chat_template):
        return prompt
    messages = ({"role": "user", "content": prompt},) if isinstance(prompt, str) else prompt
    if chat_template == "never":
        raise DataError("chat_template=never, but a question's prompt is chat messages; set chat_template=auto, or "
                        "use a string prompt column (prompt_column=)")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat_template: the prompts need a chat template but the tokenizer has none; use a chat "
                        "model, or string prompts with chat_template=auto or never")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def describe_prompting(chat_template: str, prompt_template: str | None, tokenizer) -> str:
    """One line for the start of a run or evaluation: how prompts reach the model."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "never":
        how = "plain text (chat_template=never)"
    elif chat_template == "always" or has:
        how = (f"through the tokenizer's chat template (chat_template={chat_template}"
               + ("; chat_template=never sends plain text)" if chat_template == "auto" else ")"))
    else:
        how = "plain text (the tokenizer has no chat template; chat messages would fail)"
    name = prompt_template if prompt_template in PROMPT_PRESETS else ("custom" if prompt_template else None)
    tmpl = f", prompt_template={name}" if name else " (prompt_template=boxed asks for a boxed final answer)"
    return f"prompts: {how}{tmpl}"


def _resolve_layout(path: Path, rows: list[RawRow], layout: str, cols: Columns) -> str:
    """``layout``, or for ``auto`` the layout of the first row (a JSON object) whose columns match a rule."""
    if layout != "auto":
        return layout
    objects = [value for _, _, value in rows if isinstance(value, dict)]
    for row in objects:
        found = detect_layout(row, cols)
        if found is not None:
            return found
    if not objects:
        return "columns"  # nothing to read: the rows fail (or are skipped) on their own reasons
    names = ", ".join(sorted(objects[0])) or "none"
    raise DataError(f"{path}: cannot tell the dataset layout from its columns ({names}); "
                    f"set dataset_layout= one of {LAYOUT_CHOICES}")


def _unique_ids(questions: list[Question]) -> list[Question]:
    """Questions with repeated ids renamed ``id#2``, ``id#3``, ... in order."""
    seen: set[str] = set()
    out = []
    for q in questions:
        ident, n = q.id, 1
        while ident in seen:
            n += 1
            ident = f"{q.id}#{n}"
        seen.add(ident)
        out.append(q if ident == q.id else Question(ident, q.prompt, q.answer, q.columns))
    return out


def _no_questions(path: Path, rows: list[RawRow], skipped: list[str]) -> DataError:
    if not rows:
        return DataError(f"{path}: no questions (empty file)")
    return DataError(f"{path}: no questions (all {len(rows)} rows skipped; first: {skipped[0]})")


def load_questions(path: str | Path, layout: str = "auto", prompt_column: str | None = None,
                   answer_column: str | None = None, id_column: str | None = None,
                   prompt_template: str | None = None, skip_bad_rows: bool = False,
                   split: str | None = None) -> LoadedDataset:
    """Questions from a ``.jsonl`` / ``.json`` / ``.parquet`` file or a ``datasets`` ``save_to_disk`` directory.

    ``layout`` is ``auto`` or a name in :data:`ibtpo.data.layouts.LAYOUTS` (auto rule: see :mod:`ibtpo.data.layouts`);
    the ``*_column`` arguments override the layout's columns. ``prompt_template`` must contain ``{prompt}`` (replaced
    literally, so LaTeX braces such as ``\\boxed{}`` are kept) or name a preset of :data:`PROMPT_PRESETS`.
    ``split`` picks a DatasetDict split (default ``test``, else ``train``) and is ignored for other inputs.
    """
    path = Path(path)
    _check_options(layout, prompt_template)
    prompt_template = resolve_prompt_template(prompt_template)
    name, rows = _open_rows(path, split)
    cols = Columns(prompt_column, answer_column, id_column)
    resolved = _resolve_layout(path, rows, layout, cols)
    questions, skipped = [], []
    for where, index, value in rows:
        try:
            parsed = LAYOUTS[resolved](_as_object(value), cols)
            prompt = _apply_template(parsed.prompt, prompt_template)
        except RowError as exc:
            if not skip_bad_rows:
                raise DataError(f"{where}: {exc}") from None
            skipped.append(f"{where}: {exc}")
            continue
        questions.append(Question(parsed.id or f"{name}-{index}", prompt, parsed.answer, parsed.columns))
    if not questions:
        raise _no_questions(path, rows, skipped)
    return LoadedDataset(name, str(path), resolved, _unique_ids(questions), skipped)

