"""Finding the final answer of a math completion, boxed or in plain text (the rules of the ``math`` reward).

:func:`find_final_answer` returns the answer text and the rule that found it; the first rule that finds one wins:

1. ``boxed``: the content of the last complete, non-empty ``\\boxed{...}`` (or ``\\fbox{...}``). When the *last*
   ``\\boxed{`` of the text is never closed, the completion was cut while stating its answer: no answer at all.
2. ``answer_marker``: the last "Answer: X", "Final answer: X", "the answer is X", "answer = X" (any case, anywhere
   in a line; the value may also be alone on the next line). From the marker's sentence: the part after its last
   ``=``, then its first math span (``$...$``, ``\\(...\\)``), or the whole rest when it is pure math (``3/4``,
   ``\\frac{3}{4}``, ``(1, 2)``), else its first number (``7 dollars`` -> ``7``). A marker with no value is skipped.
3. ``last_line``: the last line that holds a digit or a math span, skipping trailing lines without one (closing
   ``\\end{align}``, ``$$``, sign-offs). From it: the last math span, the part after its last ``=``, then the whole
   rest when it is pure math, else its *last* number (``There are 70 students in total.`` -> ``70``). A leading list
   marker (``3.``, ``Step 2:``, ``-``) is dropped first. No answer when that line looks unfinished: it ends with an
   operator or ``:`` (``7 * 2 =``, cut by the length cap), or with ``?`` (a question restated).

Numbers read in plain text: an optional sign, thousands separators (``1,200`` -> ``1200``), decimals, a simple
fraction ``3/4``, a trailing ``%``; a currency sign before them is dropped (``$342.`` -> ``342``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKER_RE = re.compile(r"(?:\bfinal\s+)?\banswer\b[\s*_]*(?:is|:|：|=|would\s+be|will\s+be)[\s*_:]*",
                        re.IGNORECASE)
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_NUMBER_RE = re.compile(r"(?<![\w.)])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?%?")
_LIST_MARKER_RE = re.compile(r"^\s*(?:(?:step|part)\s*\d+\s*[:.)]|\d+\s*[.)](?!\d)|[-*•>#]+)\s*", re.IGNORECASE)
_WORD_RE = re.compile(r"(?<!\\)\b[A-Za-z]{2,}\b")
_UNFINISHED = ("=", "+", "-", "*", "/", "×", "÷", "^", ":", "(", "?")
_SENTENCE_END_RE = re.compile(r"(?<!\d)\.(?:\s|$)|(?<=\d)\.(?:\s+[A-Z]|\s*$)|[;!]\s|\n")


@dataclass(frozen=True)
class FinalAnswer:
    """The answer text a completion ends with (not yet parsed) and the rule that found it."""

    value: str
    rule: str  # "boxed" | "answer_marker" | "last_line"


def _brace_pairs(text: str) -> dict[int, int]:
    """Index of each ``{`` that is closed -> index of its ``}`` (one pass; escaped ``\\{``/``\\}`` skipped)."""
    pairs, stack, i = {}, [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 1
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` (or ``\\fbox{...}``) in `text`, else None."""
    boxes = list(_BOX_RE.finditer(text))
    pairs = _brace_pairs(text) if boxes else {}
    for m in reversed(boxes):
        end = pairs.get(m.end() - 1)
        if end is not None and text[m.end():end].strip():
            return text[m.end():end].strip()
    return None


def _last_box_unclosed(text: str) -> bool:
    boxes = list(_BOX_RE.finditer(text))
    return bool(boxes) and (boxes[-1].end() - 1) not in _brace_pairs(text)


def _clean(value: str) -> str:
    """Strip spaces, markdown emphasis, alignment marks and trailing sentence punctuation."""
    value = value.replace("&", " ").replace("\\\\", " ").strip()
    value = value.strip("*_ \t")
    return re.sub(r"[\s.,;!]+$", "", value).strip("*_ \t")


def _is_pure_math(value: str) -> bool:
    """No words of two letters or more outside LaTeX commands, and at least one digit or LaTeX command."""
    return bool(value) and not _WORD_RE.search(value) and bool(re.search(r"\d|\\[a-zA-Z]", value))


def _number(match: re.Match) -> str:
    return match.group(0).replace(",", "").replace(" ", "")


def _after_equals(value: str) -> str:
    return value.rsplit("=", 1)[1] if "=" in value else value


def _marker_value(rest: str) -> str | None:
    """The value stated after an answer marker (rule 2): first math span, pure math, else first number."""
    end = _SENTENCE_END_RE.search(rest)
    sentence = rest[:end.start()] if end else rest
    math = _MATH_SPAN_RE.search(sentence)
    if math:
        return _clean(_after_equals(next(g for g in math.groups() if g is not None))) or None
    sentence = _clean(_after_equals(sentence))
    if _is_pure_math(sentence):
        return sentence.lstrip("$").strip()
    number = _NUMBER_RE.search(sentence)
    return _number(number) if number else None


def _answer_marker(text: str) -> str | None:
    """Rule 2: the value after the last answer marker that states one."""
    for m in reversed(list(_MARKER_RE.finditer(text))):
        rest = text[m.end():]
        line, _, after = rest.partition("\n")
        if not line.strip():  # "Answer:" alone on its line: the value is on the next non-empty line
            line = next((ln for ln in after.split("\n") if ln.strip()), "")
        value = _marker_value(line)
        if value:
            return value
    return None


def _line_value(line: str) -> str | None:
    """Rule 3 on one line: last math span, after the last '=', pure math, else the last number."""
    maths = list(_MATH_SPAN_RE.finditer(line))
    if maths:
        inner = next(g for g in maths[-1].groups() if g is not None)
        value = _clean(_after_equals(inner))
        if value:
            return value
    rest = _clean(_after_equals(line))
    if _is_pure_math(rest):
        return rest.lstrip("$").strip()
    numbers = list(_NUMBER_RE.finditer(rest))
    return _number(numbers[-1]) if numbers else None


def _last_line(text: str) -> str | None:
    """Rule 3: the value of the last line holding a digit or a math span, unless that line looks unfinished."""
    for raw in reversed(text.split("\n")):
        line = _LIST_MARKER_RE.sub("", raw, count=1).strip()
        if not (re.search(r"\d", line) or _MATH_SPAN_RE.search(line)):
            continue
        tail = line.replace("\\\\", " ").rstrip("*_ \t$")
        if tail.endswith(_UNFINISHED):
            return None
        return _line_value(line)
    return None


def find_final_answer(text: str) -> FinalAnswer | None:
    """The completion's final answer by the rules of the module docstring, or None when it states none."""
    if not text or not text.strip():
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return FinalAnswer(boxed, "boxed")
    if _last_box_unclosed(text):
        return None
    marked = _answer_marker(text)
    if marked is not None:
        return FinalAnswer(marked, "answer_marker")
    value = _last_line(text)
    return FinalAnswer(value, "last_line") if value else None
