"""One process per run directory: an advisory lock on ``<run>/run.lock`` that names its holder.

The lock is an ``fcntl.flock`` on the file, so the kernel releases it when its process ends in any way (exit, crash,
SIGKILL): a lock file left behind by a dead process is stale by construction and is simply taken over. The file
holds the holder's pid, host and start time, which the refusal message of a second process quotes.
On systems without ``fcntl`` (Windows) the lock is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory; the message is one line naming it."""


class RunLock:
    """``with RunLock(run_dir): ...`` holds the run directory for this process (creating the directory)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> "RunLock":
        self._created_dir = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)  # held read-only: no open writer for the run
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe(fd)
                os.close(fd)
                raise RunLockedError(f"{self.path.parent} is in use by another ibtpo process ({holder}); wait for it "
                                     f"to finish or stop it, or use another out_dir") from None
            try:  # the holder may have removed the file between our open and flock: lock the file on disk
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._fd = fd
        try:
            self.path.write_text(json.dumps(info))
        except OSError:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the lock file (and the run directory when this process created it and left nothing else)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
            if self._created_dir and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
        except OSError:  # a read-only file system: the kernel lock still goes with the descriptor
            pass
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(fd: int) -> str:
    """'pid 123 on host, since ...' from a held lock file (best effort)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"
