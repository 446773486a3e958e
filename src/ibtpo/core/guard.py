"""The plugin boundary: every call the trainer makes into a registered component goes through :func:`call`.

Components (advantage estimators, policy losses, regularisers, samplers, branch rules, trainer extensions, sampler
shape functions) may be the user's own code. When one is wrong, the run ends with ONE line (a
:class:`ComponentError`, exit code 2 at the command line) that names the component as the user spelled it
(registry name or ``module:name``), what was expected and what came back (type, shape, dtype, finiteness), and, when
their code raised, the ``file:line`` of the innermost frame of their code. ``IBTPO_TRACEBACK=1`` prints the full
trace as well (``ibtpo.cli``).

- :func:`check_signature`: the call the trainer will make, bound against the component's signature before the run
  starts (cheap, and the error names the parameter instead of a ``TypeError`` from deep inside the trainer);
- :func:`call`: runs the component; an exception raised inside the user's code becomes a ComponentError chained to
  it (``raise ... from exc``, so the full trace is kept). Exceptions of built-in components (module ``ibtpo.*``)
  pass through unchanged: they are bugs of ibtpo, not of the user, and keep their own handling;
- :func:`check_tensor` and friends: validate what came back. Non-finite values are refused here, so NaN/inf never
  reach the optimizer step (the trainer checks the gradient norm with :func:`check_grad_norm`).

Nothing is written when a ComponentError is raised: the trainer stops before ``optimizer.step()`` and before the next
checkpoint, so the previous checkpoints are the run's state.
"""

from __future__ import annotations

import inspect
import math
import os
import sysconfig
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from ibtpo.core.timeouts import CallTimeout, deadline

TRACE_ENV = "IBTPO_TRACEBACK"
"""Environment variable: set to 1 to print the full trace after the one-line error."""
HINT = f"{TRACE_ENV}=1 shows the full trace"

_IBTPO_DIR = str(Path(__file__).resolve().parent)
_LIB_DIRS = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})
_PASS_THROUGH: list[type[BaseException]] = []


class ComponentError(ValueError):
    """A component that is wrong (bad registration, signature, return value, non-finite output, or it raised).
    ``str()`` is one line naming the component."""

    def at_step(self, step: int) -> "ComponentError":
        """The same error with ``step N:`` in front (the trainer's step being run)."""
        msg = str(self)
        if msg.startswith("step "):
            return self
        out = type(self)(f"step {step}: {msg}")
        out.__cause__ = self.__cause__
        return out


def pass_through(*types: type[BaseException]) -> None:
    """Exceptions that already are one-line errors of ibtpo (e.g. RewardError raised by the reward function a user
    sampler calls): :func:`call` lets them through instead of blaming the component that was running."""
    _PASS_THROUGH.extend(t for t in types if t not in _PASS_THROUGH)


pass_through(ComponentError)


def label(kind: str, name: str) -> str:
    return f"{kind} {name!r}"


def is_builtin(fn: Any) -> bool:
    """True for ibtpo's own components (functions, classes, bound methods or instances defined in ``ibtpo.*``)."""
    target = getattr(fn, "__func__", fn)
    module = getattr(target, "__module__", None) or getattr(type(target), "__module__", "")
    return module == "ibtpo" or module.startswith("ibtpo.")


def _source_file(fn: Any) -> str | None:
    target = inspect.unwrap(getattr(fn, "__func__", fn))
    if not (inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target)):
        target = type(target)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        return None
    return str(Path(path).resolve()) if path else None


def user_location(exc: BaseException, fn: Any = None) -> str | None:
    """``file:line`` of the innermost frame of the user's code in the traceback of `exc`: a frame in `fn`'s own
    source file first, else the innermost one outside ibtpo, the standard library and installed packages."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    own = _source_file(fn) if fn is not None else None
    resolved = [(f, str(Path(f.filename).resolve()) if not f.filename.startswith("<") else f.filename)
                for f in frames]
    for f, path in reversed(resolved):
        if own and path == own:
            return f"{f.filename}:{f.lineno}"
    for f, path in reversed(resolved):
        if not path.startswith("<") and not path.startswith(_IBTPO_DIR) and not path.startswith(_LIB_DIRS):
            return f"{f.filename}:{f.lineno}"
    return None


def first_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` (just the type when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def raised(who: str, exc: BaseException, fn: Any = None) -> ComponentError:
    """The one-line error of component `who` whose call raised `exc`."""
    where = user_location(exc, fn)
    if isinstance(exc, SystemExit):
        what = f"called exit({exc.code!r}) (a component must return, not exit)"
    else:
        what = f"raised {first_line(exc)}"
    return ComponentError(f"{who} {what}{f' at {where}' if where else ''}; {HINT}")


def call(who: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; an exception raised in a user component becomes a ComponentError naming `who`."""
    try:
        return fn(*args, **kwargs)
    except tuple(_PASS_THROUGH):
        raise
    except (Exception, SystemExit) as exc:
        if is_builtin(fn):
            raise
        raise raised(who, exc, fn) from exc


def guarded(who: str, fn: Callable, timeout_s: float, *args: Any, **kwargs: Any) -> Any:
    """:func:`call` under a wall-clock limit of `timeout_s` seconds (0 = none; ``ibtpo.core.timeouts``)."""
    try:
        with deadline(timeout_s):
            return call(who, fn, *args, **kwargs)
    except CallTimeout:
        raise ComponentError(f"{who} did not return within component_timeout_s={timeout_s:g} s (0 = no limit)"
                             ) from None


def check_callable(who: str, obj: Any) -> None:
    if not callable(obj):
        raise ComponentError(f"{who} is {describe(obj)}, not a function or other callable")


def _call_shape(args: tuple, kwargs: dict) -> str:
    parts = ["_"] * len(args) + [f"{k}=" for k in kwargs]
    return f"({', '.join(parts)})"


def check_signature(who: str, fn: Any, args: tuple = (), kwargs: dict | None = None, hint: str = "") -> None:
    """Refuse a component that cannot be called the way the trainer calls it (`args` positionally, `kwargs` by
    keyword: the values only serve as placeholders). Objects without an inspectable signature are let through."""
    kwargs = kwargs or {}
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        where = _source_file(fn)
        try:
            line = inspect.getsourcelines(inspect.unwrap(fn))[1] if where else None
        except (OSError, TypeError):
            line = None
        at = f" (defined at {where}:{line})" if where and line else ""
        raise ComponentError(f"{who}{at} cannot be called as the trainer calls it, fn{_call_shape(args, kwargs)}: "
                             f"{exc}{'; ' + hint if hint else ''}") from None


def describe(value: Any) -> str:
    """What a value is, for messages: type, and for a tensor its dtype, shape and finiteness."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        finite = ""
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value.detach())).sum()) if value.numel() else 0
            finite = f", {bad} non-finite value(s)" if bad else ", finite"
        shape = "a 0-d tensor" if value.dim() == 0 else f"a tensor of shape {tuple(value.shape)}"
        return f"{shape} of {str(value.dtype).removeprefix('torch.')}{finite}"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name} ({shown})"


def shape_ok(value: torch.Tensor, shape: tuple | None, ndim: int | None) -> bool:
    """`value` has `shape` (when given) and `ndim` dimensions (ndim=0: exactly one element)."""
    if shape is not None and tuple(value.shape) != tuple(shape):
        return False
    return ndim is None or (value.numel() == 1 if ndim == 0 else value.dim() == ndim)


def check_tensor(who: str, value: Any, what: str, shape: tuple | None = None, ndim: int | None = None,
                 floating: bool = True, finite: bool = True, grad: bool = False) -> torch.Tensor:
    """`value` must be a tensor (of `shape`, or with `ndim` dimensions / 1 element when ndim=0), floating, finite,
    requiring grad when `grad`; else a ComponentError naming `who`, `what` was expected and what came back."""
    expected = what + (f" of shape {tuple(shape)}" if shape is not None else "")
    ok = isinstance(value, torch.Tensor) and shape_ok(value, shape, ndim)
    if ok and floating:
        ok, expected = value.is_floating_point(), expected + " (floating point)"
    if not ok:
        raise ComponentError(f"{who} returned {describe(value)}; expected {expected}")
    if finite and value.numel() and not bool(torch.isfinite(value.detach()).all()):
        raise ComponentError(f"{who} returned {describe(value)}; expected {what} with finite values")
    if grad and not value.requires_grad:
        raise ComponentError(f"{who} returned {describe(value)} that does not require grad (detached, or not computed "
                             f"from logp); expected {what} with a gradient")
    return value


def check_loss_pair(who: str, out: Any, grad: bool) -> tuple[torch.Tensor, dict]:
    """A policy loss or regulariser result: ``(0-d loss tensor, {str: number} metrics)``."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ComponentError(f"{who} returned {describe(out)}; expected a pair (loss: 0-d tensor, metrics: dict)")
    loss, metrics = out
    check_tensor(who, loss, "a 0-d loss tensor", ndim=0, grad=grad)
    if not isinstance(metrics, dict):
        raise ComponentError(f"{who} returned metrics as {describe(metrics)}; expected a dict of name -> number")
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise ComponentError(f"{who} returned a metric key {describe(k)}; expected str keys")
        if not isinstance(v, (int, float)) and not (isinstance(v, torch.Tensor) and v.numel() == 1):
            raise ComponentError(f"{who} returned metric {k!r} as {describe(v)}; expected a number")
    return loss.reshape(()) if loss.dim() else loss, metrics


def check_grad_norm(norm: float, step_hint: str = "") -> None:
    """Stop before the optimizer step when the gradient norm is NaN or infinite (the weights would become NaN)."""
    if not math.isfinite(norm):
        raise ComponentError(f"gradient norm is {norm} before the optimizer step{step_hint}: the loss or its "
                             f"gradient is not finite; the weights were not updated and the last checkpoint is kept")


def trace_requested() -> bool:
    return os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no")
