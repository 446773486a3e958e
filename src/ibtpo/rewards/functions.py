"""Reward functions for math data, a registry to load them by name, and a guard around user reward functions.

All reward functions take TRL's signature ``fn(prompts, completions, completion_ids=None, **columns)`` and return one
score per completion; None means "no score" (the caller counts it and scores it 0.0).

- `math_accuracy`: 1.0 when the completion's final answer is equivalent to the `answer` column per math-verify; the
  final answer is the last ``\\boxed{...}``, else the value after the last "Answer:" / "the answer is" marker, else
  the last number or expression of the last line that holds one (rules and their guards: :mod:`ibtpo.rewards.answers`).
- `explain_math`: the extracted answer, the rule that found it and the score of one completion (for inspection).
- `boxed_format`: 1.0 when the completion states a final answer in one of those two forms.
- `load_reward_fn("math" | "pkg.module:fn" | "path/to/file.py:fn")`, `weighted_sum`, `GuardedReward`.

math-verify times out with SIGALRM, which only works in the main thread; elsewhere its timeouts are turned off.
"""

from __future__ import annotations

import importlib
import importlib.util
import importlib
import math
import numbers
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from ibtpo.core.guard import pass_through
from ibtpo.core.registry import import_file
from ibtpo.core.timeouts import CallTimeout, deadline
from ibtpo.rewards.answers import FinalAnswer, find_final_answer, last_boxed
from ibtpo.rewards.scoring import RewardFn

PARSE_TIMEOUT_S = 3  # math-verify's per-call limits (whole seconds, signal.alarm)
VERIFY_TIMEOUT_S = 3
STR_TIMEOUT_S = 2  # str() of a huge sympy value can hang too

T = TypeVar("T")
_ANSWER_LINE_RE = re.compile(r"^[ \t>#*_]*(?:final[ \t]+)?answer[ \t*_]*[:：][ \t*_]*(.*?)[ \t]*$",
                             re.IGNORECASE | re.MULTILINE)


class RewardError(ValueError):
    """A reward function could not be loaded, raised, or returned something that is not one score per row."""


pass_through(RewardError)  # raised by the reward a sampler calls: not the sampler's fault


def _first_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` (just the type when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _timeout(seconds: int) -> int | None:
    """math-verify's timeouts use SIGALRM: only possible in the main thread."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def _text(completion: Any) -> str:
    """The completion as text: a string, or the last message's content of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return "" if completion is None else str(completion)


def _answer_line(text: str, must_be_last: bool = False) -> str | None:
    """The value of the last "Answer: X" line (optionally only if it is the last non-empty line), else None."""
    matches = list(_ANSWER_LINE_RE.finditer(text))
    if not matches or (must_be_last and text[matches[-1].end():].strip()):
        return None
    value = matches[-1].group(1).strip().rstrip(".").strip("*_ ")
    for open_, close in (("\\(", "\\)"), ("\\[", "\\]")):
        if value.startswith(open_) and value.endswith(close):
            value = value[len(open_):-len(close)].strip()
    return value or None


def _quietly(call: Callable[[], T], default: T) -> T:
    """call(), or `default` if it raises (math-verify's TimeoutException, a BaseException, included; not Ctrl-C)."""
    try:
        return call()
    except (KeyboardInterrupt, SystemExit, CallTimeout):
        raise
    except BaseException:
        return default


def _parse(text: str, anchored_only: bool = False) -> list:
    """math-verify's parse, never raising: [] when nothing is found or parsing fails."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(try_extract_without_anchor=not anchored_only),
              ExprExtractionConfig(try_extract_without_anchor=not anchored_only)]
    return _quietly(lambda: list(parse(text, config, parsing_timeout=_timeout(PARSE_TIMEOUT_S))), [])


def _has_value(parsed: list) -> bool:
    return any(not isinstance(p, str) for p in parsed)  # parse also returns the raw matched string


def _parse_value(value: str) -> list:
    """Parse a bare answer ("1/2", "(1, 2)", "\\sqrt{2}/2") or one already in ``$...$``/``\\boxed{}``.

    Bare values are parsed boxed first: as plain text math-verify would pick a number out of them ("(1, 2)" -> 2).
    """
    value = value.strip()
    if not value:
        return []
    attempts = [value] if ("$" in value or "\\boxed" in value) else []
    attempts += [f"\\boxed{{{value}}}", f"${value}$", value]
    fallback: list = []
    for attempt in attempts:
        parsed = _parse(attempt)
        if _has_value(parsed):
            return parsed
        fallback = fallback or parsed
    return fallback


@lru_cache(maxsize=16384)
def _parse_gold(answer: str) -> tuple | None:
    """Cached parse of a reference answer; None when math-verify finds no mathematical value in it."""
    parsed = _parse_value(answer)
    return tuple(parsed) if _has_value(parsed) else None


def _parse_answer(found: FinalAnswer | None) -> list:
    """math-verify's parse of an extracted final answer ([] when there is none; the raw string if unparsable)."""
    if found is None:
        return []
    return _parse_value(found.value) or [found.value]


def _parse_completion(text: str) -> list:
    """The completion's final answer (rules: :mod:`ibtpo.rewards.answers`), parsed by math-verify."""
    return _parse_answer(find_final_answer(text))


def _canonical(value: Any) -> str | None:
    """str of a sympy value with exact decimals as fractions and rationalised denominators (0.5 -> 1/2,
    1/sqrt(2) -> sqrt(2)/2), so that most equal values give equal strings; None if that fails or times out."""
    import sympy
    from math_verify.utils import timeout

    def convert() -> str:
        if not isinstance(value, sympy.Basic):
            return str(value)
        floats = value.atoms(sympy.Float)
        v = value.xreplace({f: sympy.Rational(str(f)) for f in floats}) if floats else value
        return str(sympy.radsimp(v) if isinstance(v, sympy.Expr) else v)

    return _quietly(timeout(_timeout(STR_TIMEOUT_S))(convert), None)


def extract_math_answer(text: str) -> str | None:
    """A canonical string of the completion's final answer, for majority voting; None if it has none.

    Forms that math-verify parses to the same value ("\\frac{1}{2}", "0.5", "1/2") give the same string;
    an answer math-verify cannot parse is returned as the raw extracted string.
    """
    parsed = _parse_completion(_text(text))
    values = [_canonical(p) for p in parsed if not isinstance(p, str)]
    strings = [p.strip() for p in parsed if isinstance(p, str) and p.strip()]
    return next((v for v in values if v), strings[-1] if strings else None)


def _equivalent(gold: tuple, pred: list) -> bool:
    from math_verify import verify

    return _quietly(lambda: bool(verify(list(gold), pred, timeout_seconds=_timeout(VERIFY_TIMEOUT_S))), False)


def math_accuracy(prompts: list, completions: list, completion_ids: list | None = None, answer: list | None = None,
                  **columns: Any) -> list[float | None]:
    """1.0 if the completion's final answer is mathematically equivalent to `answer`, else 0.0.

    None for a row whose reference answer math-verify cannot parse (so the caller can count those).
    """
    if answer is None:
        raise RewardError("math_accuracy needs an 'answer' column (the reference answers)")
    scores: list[float | None] = []
    for completion, ref in zip(completions, answer):
        gold = None if ref is None else _parse_gold(str(ref).strip())
        if gold is None:
            scores.append(None)
            continue
        pred = _parse_completion(_text(completion))
        scores.append(1.0 if pred and _equivalent(gold, pred) else 0.0)
    return scores


def explain_math(completion: Any, answer: Any) -> dict[str, Any]:
    """How `math_accuracy` scores one completion: ``{"extracted", "rule", "score"}`` (extracted/rule None when
    the completion states no final answer; score None when the reference cannot be parsed)."""
    found = find_final_answer(_text(completion))
    score = math_accuracy([""], [completion], None, answer=[answer])[0]
    return {"extracted": None if found is None else found.value, "rule": None if found is None else found.rule,
            "score": score}


def boxed_format(prompts: list, completions: list, completion_ids: list | None = None,
                 **columns: Any) -> list[float]:
    """1.0 if the completion gives a final answer in ``\\boxed{...}`` or as an "Answer: X" last line, else 0.0."""
    def ok(text: str) -> bool:
        return last_boxed(text) is not None or _answer_line(text, must_be_last=True) is not None

    return [1.0 if ok(_text(c)) else 0.0 for c in completions]


REWARD_FUNCTIONS: dict[str, RewardFn] = {"math": math_accuracy, "format": boxed_format}
"""Reward functions known by name (``reward_fn=NAME``); anything else is ``module:function`` or ``file.py:function``.
The testbed tasks register their own checks (``sum``, ``chain``) when ``ibtpo.testbed`` is imported: use
:func:`known_rewards` to read the complete table."""

BUILTIN_REWARDS = "ibtpo.testbed"
"""The package whose import registers the built-in tasks' rewards (imported by name on first lookup, as the
component registries import ``ibtpo.methods``)."""


def known_rewards() -> dict[str, RewardFn]:
    """Every registered reward function by name, the built-in tasks' included."""
    importlib.import_module(BUILTIN_REWARDS)
    return REWARD_FUNCTIONS


def register_reward(name: str, fn: RewardFn | None = None):
    """Register a reward function (TRL signature) under `name`, so that ``reward_fn=name`` uses it; a call or a
    decorator (``@register_reward("mine")``)."""
    if not isinstance(name, str) or not name.strip():
        raise RewardError(f"reward function name {name!r}: a name must be a non-empty string, got "
                          f"{type(name).__name__}")

    def add(f: RewardFn) -> RewardFn:
        if not callable(f):
            raise RewardError(f"reward function {name!r} is a {type(f).__name__}, not a function or other callable")
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name] is not f:
            raise ValueError(f"reward function {name!r} is already registered")
        REWARD_FUNCTIONS[name] = f
        return f

    return add if fn is None else add(fn)


def weighted_sum(fns: list[RewardFn], weights: list[float]) -> RewardFn:
    """A reward fn scoring ``sum(w * fn(...))``; a row that any component scores None is None."""
    if len(fns) != len(weights) or not fns:
        raise RewardError(f"weighted_sum needs one weight per function: got {len(fns)} functions, "
                          f"{len(weights)} weights")

    def combined(prompts: list, completions: list, completion_ids: list | None = None,
                 **columns: Any) -> list[float | None]:
        parts = [fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
                 for fn in fns]
        return [None if any(s is None for s in row) else float(sum(w * s for w, s in zip(weights, row)))
                for row in zip(*parts)]

    combined.__name__ = "weighted_sum(" + ", ".join(getattr(f, "__name__", "?") for f in fns) + ")"
    return combined


def _load_file(path_str: str) -> Any:
    """Import a .py file as a module (once per path, shared with components named ``file.py:name``)."""
    if not Path(path_str).expanduser().is_file():
        raise RewardError(f"reward file not found: {path_str}")
    try:
        return import_file(path_str)
    except Exception as exc:
        raise RewardError(f"cannot load reward file {path_str}: {_first_line(exc)}") from exc


def load_reward_fn(spec: str) -> RewardFn:
    """A registered name ("math", "format"), "package.module:function" or "path/to/file.py:function"."""
    spec = spec.strip()
    if spec in known_rewards():
        return REWARD_FUNCTIONS[spec]
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise RewardError(f"unknown reward function {spec!r}: known ones are {', '.join(sorted(REWARD_FUNCTIONS))}, "
                          "or give 'module:function' / 'path/to/file.py:function'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _load_file(where)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise RewardError(f"cannot import reward module {where!r}: {_first_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise RewardError(f"reward module {where!r} has no attribute {attr!r}")
    if not callable(fn):
        raise RewardError(f"reward {spec!r} is not callable (it is a {type(fn).__name__})")
    return fn


class GuardedReward:
    """Calls a reward fn on a batch, checks what it returns, and finds the rows it raises on.

    A ``question_id`` column (ids aligned with the batch) is taken out of the columns and used in messages.
    on_error="fail": raise RewardError naming the question; "zero": score failing rows 0.0 and record them in
    `errors` (cumulative, last `max_errors`). `pop_stats()` returns error and None counts since its last call.
    `timeout_s` (> 0): a call that has not returned after that many seconds ends the run with a RewardError naming
    the function and the question, whatever `on_error` says (``ibtpo.core.timeouts``; main thread only).
    """

    def __init__(self, fn: RewardFn, name: str, on_error: Literal["fail", "zero"] = "fail", max_errors: int = 1000,
                 timeout_s: float = 0.0):
        if on_error not in ("fail", "zero"):
            raise RewardError(f"on_error must be 'fail' or 'zero', got {on_error!r}")
        self.fn, self.name, self.on_error, self.max_errors = fn, name, on_error, max_errors
        self.timeout_s = timeout_s
        self.__name__ = name
        self.errors: list[tuple[Any, str]] = []
        self.error_count = self.none_count = 0

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 **columns: Any) -> list[float | None]:
        qids = columns.pop("question_id", None)
        qids = list(range(len(completions))) if qids is None else list(qids)
        try:
            scores = self._call(prompts, completions, completion_ids, columns, qids)
        except RewardError:
            raise
        except SystemExit as exc:  # exit() inside a reward function would end the run without a word
            raise RewardError(f"reward function {self.name} called exit({exc.code!r}) on questions {qids[:3]}; "
                              f"a reward function must return scores") from None
        except Exception as exc:
            scores = self._row_by_row(prompts, completions, completion_ids, columns, qids, exc)
        scores = self._check(scores, len(completions), qids)
        self.none_count += sum(s is None for s in scores)
        return scores

    def _call(self, prompts: list, completions: list, completion_ids: list | None, columns: dict,
              qids: list | None = None) -> Any:
        # keywords, so that TRL-style `def fn(completions, **kwargs)` works too
        try:
            with deadline(self.timeout_s):
                return self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except CallTimeout:
            shown = "" if qids is None else f" on question {qids[0]}" + (f" (batch of {len(qids)})" if len(qids) > 1
                                                                           else "")
            raise RewardError(f"reward function {self.name} did not return within reward_timeout_s="
                              f"{self.timeout_s:g} s{shown}; make it faster or raise reward_timeout_s "
                              f"(0 = no limit)") from None

    def _row_by_row(self, prompts: list, completions: list, completion_ids: list | None, columns: dict,
                    qids: list, batch_exc: Exception) -> list:
        """Score each row alone to find the failing ones (after the batch call raised `batch_exc`)."""
        scores: list = []
        for i, qid in enumerate(qids):
            row_cols = {k: [v[i]] for k, v in columns.items()}
            try:
                out = self._call([prompts[i]], [completions[i]],
                                 None if completion_ids is None else [completion_ids[i]], row_cols, [qid])
            except RewardError:
                raise
            except Exception as exc:
                message = f"reward function {self.name} raised on question {qid}: {_first_line(exc)}"
                if self.on_error == "fail":
                    raise RewardError(message) from exc
                self.errors.append((qid, message))
                del self.errors[:-self.max_errors]
                self.error_count += 1
                scores.append(0.0)
                continue
            scores.extend(self._check(out, 1, [qid]))
        if self.on_error == "fail" and len(scores) == len(qids):
            raise RewardError(f"reward function {self.name} raised on a batch of {len(qids)} (no single question "
                              f"fails alone): {_first_line(batch_exc)}") from batch_exc
        return scores

    def _check(self, scores: Any, n: int, qids: list) -> list[float | None]:
        """A list/tuple of n scores, each a real number (not NaN/inf) or None; else RewardError."""
        who = f"reward function {self.name}"
        if not isinstance(scores, (list, tuple)):
            raise RewardError(f"{who} returned {type(scores).__name__}, expected a list of {n} scores")
        if len(scores) != n:
            raise RewardError(f"{who} returned {len(scores)} scores for {n} completions")
        out: list[float | None] = []
        for s, qid in zip(scores, qids):
            if s is not None and not isinstance(s, numbers.Real):
                shown = repr(s)[:60].replace("\n", " ")
                raise RewardError(f"{who} returned a {type(s).__name__} score for question {qid}: {shown}")
            if s is not None and not math.isfinite(float(s)):
                raise RewardError(f"{who} returned a non-finite score {s} for question {qid}")
            out.append(None if s is None else float(s))
        return out

    def pop_stats(self) -> dict[str, int]:
        """{"reward/errors": n, "reward/none": n} since the last call; resets the counts."""
        stats = {"reward/errors": self.error_count, "reward/none": self.none_count}
        self.error_count = self.none_count = 0
        return stats
