"""Wall-clock limits on calls into user code (reward functions, components), on POSIX, from the main thread.

``with deadline(seconds):`` runs its body; if it has not finished after `seconds`, a watchdog thread sends
``SIGUSR1`` to the main thread and the handler raises :class:`CallTimeout` there. A real signal (not
``_thread.interrupt_main``) interrupts blocking system calls such as ``time.sleep``, socket reads and subprocess
waits; pure-Python loops are interrupted at their next bytecode. A call stuck inside one long C function that never
returns to Python (a C extension's own loop) is interrupted only when that function returns: that cannot be helped
without running the call in another process, which would break reward functions that keep state.

Why not SIGALRM: math-verify (and other libraries) use ``signal.alarm`` for their own per-call limits and reset it
to 0, which would silently cancel ours. Why not a thread with ``join(timeout)``: the call would keep running.

CallTimeout derives from BaseException so that an ``except Exception`` in the user's code does not swallow it.
Off the main thread, on a platform without ``pthread_kill`` or with ``seconds <= 0`` the body runs without a limit.
Nested deadlines: only the outermost one is armed (an inner call runs under the outer limit).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Iterator

SIGNAL = getattr(signal, "SIGUSR1", None)


class CallTimeout(BaseException):
    """A call ran past its deadline (raised in the main thread by the watchdog's signal)."""


class _Watchdog:
    """One daemon thread that fires the armed deadline (no thread is started per call)."""

    def __init__(self):
        self.cond = threading.Condition()
        self.due: float | None = None
        self.token = 0
        self.fired = 0
        self.thread: threading.Thread | None = None
        self.previous = None

    def start(self) -> None:
        if self.thread is None:
            self.previous = signal.signal(SIGNAL, self._handler)  # kept installed: a late signal is harmless
            self.thread = threading.Thread(target=self._loop, name="ibtpo-deadline", daemon=True)
            self.thread.start()

    def _handler(self, signum, frame) -> None:
        if self.fired and self.fired == self.token and self.due is not None:
            self.due = None
            raise CallTimeout()
        if callable(self.previous):  # not ours (e.g. a scheduler's SIGUSR1): the handler that was there
            self.previous(signum, frame)

    def _loop(self) -> None:
        main = threading.main_thread().ident
        with self.cond:
            while True:
                if self.due is None:
                    self.cond.wait()
                    continue
                left = self.due - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                self.fired = self.token
                signal.pthread_kill(main, SIGNAL)
                self.cond.wait(0.5)  # still armed after that: the signal is sent again

    def arm(self, seconds: float) -> int:
        with self.cond:
            self.token += 1
            self.due = time.monotonic() + seconds
            self.cond.notify()
            return self.token

    def disarm(self) -> None:
        with self.cond:
            self.due = None
            self.token += 1
            self.cond.notify()


_WATCHDOG = _Watchdog()
_ACTIVE = threading.local()


def available() -> bool:
    return (SIGNAL is not None and hasattr(signal, "pthread_kill")
            and threading.current_thread() is threading.main_thread())


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise CallTimeout in the body after `seconds` of wall-clock time (None or <= 0: no limit)."""
    if not seconds or seconds <= 0 or not available() or getattr(_ACTIVE, "on", False):
        yield
        return
    _WATCHDOG.start()
    _ACTIVE.on = True
    _WATCHDOG.arm(seconds)
    try:
        yield
    finally:
        _WATCHDOG.disarm()
        _ACTIVE.on = False
