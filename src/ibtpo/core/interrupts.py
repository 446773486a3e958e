"""SIGTERM handled like Ctrl-C: what Slurm, Kubernetes and spot instances send on preemption.

:func:`install` (main thread only) makes SIGTERM raise :class:`Terminated`, a KeyboardInterrupt, in the main
thread, so every path that lets Ctrl-C through (reward guards, user-component guards, checkpoint writes, which write
to a temporary directory and rename) lets it through too, and the command ends with one line and the last complete
checkpoint kept (``ibtpo.cli``). Under torchrun the launcher forwards SIGTERM to every rank; each rank prints its line.
"""

from __future__ import annotations

import os
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM received (raised once, in the main thread)."""


_received = False


def received() -> bool:
    """Whether SIGTERM arrived since :func:`install`."""
    return _received


def _handler(signum, frame) -> None:
    global _received
    if not _received:  # once: the unwinding that follows must not be interrupted again
        _received = True
        raise Terminated()


def _early(signum, frame) -> None:
    """SIGTERM before :func:`install` (while the command line is still importing torch and transformers): nothing
    has been loaded or written yet, so the process ends at once, with its one line."""
    os.write(2, b"ibtpo: error: interrupted (SIGTERM) while starting; nothing was written\n")
    os._exit(128 + signal.SIGTERM)


def install_early() -> None:
    """Cover the start-up window of the command line (imports take seconds on a loaded machine); only where SIGTERM
    still has its default action (a handler someone else installed is left alone)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _early)


def install():
    """Handle SIGTERM (main thread only); returns the previous handler (None: not installed) for :func:`restore`."""
    global _received
    _received = False
    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, _handler)
    return None


def restore(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is _early else previous)


def message() -> tuple[str, int]:
    """The one line of an interrupted command and its exit code (130 for SIGINT, 143 for SIGTERM); data parallel:
    the line names the rank."""
    rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ else ""
    if _received:
        return f"{rank}interrupted (SIGTERM); the last checkpoint is kept", 128 + signal.SIGTERM
    return f"{rank}interrupted; the last checkpoint is kept", 130
