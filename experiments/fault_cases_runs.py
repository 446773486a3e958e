"""Fault matrix cases on runs: damaged checkpoints, full and read-only disks, kills, concurrent processes."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from fault_harness import (CASES, ROOT, T, Case, Workspace, _skip, _wait_for, case, finished, ibtpo, on_saved_run, popen,
                           simple)


# --- checkpoints (on a copy of the saved 2-step run; resumed to 3 steps) ---------------------------------------------
R = lambda r: ["train", "--resume", str(r), "max_steps=3"]  # noqa: E731
CK = lambda r, n=2: r / "checkpoints" / f"step-{n:06d}"  # noqa: E731


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


on_saved_run("checkpoints", "resume, untouched", R, expect="ok")
on_saved_run("checkpoints", "latest holds garbage text", R, expect="ok",
             damage=lambda r: (r / "checkpoints" / "latest").write_text("garbage"))
on_saved_run("checkpoints", "latest holds binary garbage", R, expect="ok",
             damage=lambda r: (r / "checkpoints" / "latest").write_bytes(b"\xff\x00\xfe"))
on_saved_run("checkpoints", "latest missing", R, expect="ok", damage=lambda r: (r / "checkpoints" / "latest").unlink())
on_saved_run("checkpoints", "latest names a missing checkpoint", R, expect="ok",
             damage=lambda r: (r / "checkpoints" / "latest").write_text("step-000009"))
on_saved_run("checkpoints", "latest names a path outside", R, expect="ok",
             damage=lambda r: (r / "checkpoints" / "latest").write_text("../../etc"))
on_saved_run("checkpoints", "latest is a directory", R, expect="ok",
             damage=lambda r: ((r / "checkpoints" / "latest").unlink(), (r / "checkpoints" / "latest").mkdir()))
on_saved_run("checkpoints", "newest trainer state truncated", R, expect="ok",
             damage=lambda r: _truncate(CK(r) / "trainer_state.pt"))
on_saved_run("checkpoints", "newest weights truncated", R, expect="ok",
             damage=lambda r: _truncate(CK(r) / "model.safetensors"))
on_saved_run("checkpoints", "newest weights bit-flipped", R, expect="ok",
             damage=lambda r: (CK(r) / "model.safetensors").write_bytes(
                 (lambda b: b[:-10] + bytes([b[-10] ^ 1]) + b[-9:])((CK(r) / "model.safetensors").read_bytes())))
on_saved_run("checkpoints", "newest manifest missing", R, expect="ok",
             damage=lambda r: (CK(r) / "manifest.json").unlink())
on_saved_run("checkpoints", "newest manifest garbage", R, expect="ok",
             damage=lambda r: (CK(r) / "manifest.json").write_text("{not json"))
on_saved_run("checkpoints", "newest tokenizer file missing", R, expect="ok",
             damage=lambda r: (CK(r) / "tokenizer.json").unlink())
on_saved_run("checkpoints", "every trainer state truncated", R, "no checkpoint to resume from",
             damage=lambda r: [_truncate(CK(r, n) / "trainer_state.pt") for n in (1, 2)])
on_saved_run("checkpoints", "trainer state of another program (manifest rebuilt)", R, "not a trainer state",
             damage=lambda r: _foreign_state(r))
on_saved_run("checkpoints", "trainer state unreadable (manifest rebuilt)", R, "unreadable trainer state",
             damage=lambda r: _foreign_state(r, b"not a torch file"))
on_saved_run("checkpoints", "all checkpoints removed", R, "no checkpoint to resume from",
             damage=lambda r: [shutil.rmtree(CK(r, n)) for n in (1, 2)])
on_saved_run("checkpoints", "metrics.jsonl ends in a torn line", R, expect="ok",
             damage=lambda r: open(r / "metrics.jsonl", "a").write('{"step": 3, "reward/me'))
on_saved_run("checkpoints", "metrics.jsonl has a garbage line", R, "metrics.jsonl:2: not a metrics record",
             damage=lambda r: _garble_metrics(r))
on_saved_run("checkpoints", "metrics.jsonl missing", R, expect="ok", steps=None,
             damage=lambda r: (r / "metrics.jsonl").unlink())
on_saved_run("checkpoints", "config.yaml garbage", R, "invalid YAML",
             damage=lambda r: (r / "config.yaml").write_text("seed: [\n"))
on_saved_run("checkpoints", "config.yaml non-UTF-8", R, "not UTF-8",
             damage=lambda r: (r / "config.yaml").write_bytes(b"seed: \xff\n"))
on_saved_run("checkpoints", "leftover temporary checkpoint directory", R, expect="ok",
             damage=lambda r: ((CK(r).parent / ".tmp-step-000003").mkdir(),
                               (CK(r).parent / ".tmp-step-000003" / "model.safetensors").write_bytes(b"x" * 1000)))
on_saved_run("checkpoints", "plain re-run on a saved run", lambda r: [*T, f"out_dir={r}"], "already holds a run")
on_saved_run("checkpoints", "overwrite=true with a mistyped model path",
             lambda r: [*T, f"out_dir={r}", "overwrite=true", "model=/no/such/model"], "model path not found")
on_saved_run("checkpoints", "overwrite=true with a missing dataset",
             lambda r: [*T, f"out_dir={r}", "overwrite=true", "dataset=/no/such.jsonl"], "no/such.jsonl")
on_saved_run("checkpoints", "overwrite=true with a bad reward function",
             lambda r: [*T, f"out_dir={r}", "overwrite=true", "reward_fn=nomod:fn"], "nomod")
on_saved_run("checkpoints", "overwrite=true with a completion cap over the context",
             lambda r: [*T, f"out_dir={r}", "overwrite=true", "max_completion_length=300"], "context window")
on_saved_run("checkpoints", "overwrite=true with a device that does not exist",
             lambda r: [*T, f"out_dir={r}", "overwrite=true", "device=cuda:3"], "device")
on_saved_run("checkpoints", "resume with a contradictory override", lambda r: [*R(r), "iib_keep=9"],
             "iib_keep (9) must be <= the group size")
on_saved_run("checkpoints", "resume with an unknown override", lambda r: [*R(r), "lerning_rate=1"],
             "unknown config key")
simple("checkpoints", "resume: not a run directory", lambda ws: ["train", "--resume", str(ws.path)], "no config.yaml")
simple("checkpoints", "resume: a file", lambda ws: ["train", "--resume", str(ws.file("f", "x"))], "no config.yaml")


def _foreign_state(r: Path, content: bytes | None = None) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from ibtpo.training.checkpoint import write_manifest

    for n in (1, 2):
        if content is None:
            torch.save({"hello": 1}, CK(r, n) / "trainer_state.pt")
        else:
            (CK(r, n) / "trainer_state.pt").write_bytes(content)
        write_manifest(CK(r, n), n)


def _garble_metrics(r: Path) -> None:
    lines = (r / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "garbage")
    (r / "metrics.jsonl").write_text("\n".join(lines) + "\n")


# --- disks ------------------------------------------------------------------------------------------------------
ENOSPC_TORCH = '''
import errno, torch
_save = torch.save
def save(obj, f, *a, **k):
    with open(f, "wb") as fh: fh.write(b"partial")
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3584 vs 3478\\nPytorchStreamWriter failed writing file data/0: file write failed")
torch.save = save
'''
ENOSPC_SAFETENSORS = '''
import errno, transformers.modeling_utils as mu
def save_file(*a, **k): raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")
mu.safe_save_file = save_file
'''
ENOSPC_SECOND = '''
import errno, torch
_save, n = torch.save, [0]
def save(obj, f, *a, **k):
    n[0] += 1
    if n[0] == 2: raise OSError(errno.ENOSPC, "No space left on device", str(f))
    return _save(obj, f, *a, **k)
torch.save = save
'''
EROFS_METRICS = '''
import errno, ibtpo.training.metrics as m
_log, n = m.MetricsLogger.log, [0]
def log(self, step, metrics):
    n[0] += 1
    if n[0] == 3: raise OSError(errno.EROFS, "Read-only file system", str(self.path))
    return _log(self, step, metrics)
m.MetricsLogger.log = log
'''
EROFS_CONFIG = '''
import errno, ibtpo.training.trainer as t
def save_config(cfg, path): raise OSError(errno.EROFS, "Read-only file system", str(path))
t.save_config = save_config
'''
SHORT_WRITE = '''
import os, ibtpo.training.metrics as m
_write, n = os.write, [0]
def write(fd, data):
    n[0] += 1
    if n[0] == 2: return _write(fd, data[: len(data) // 2])
    return _write(fd, data)
m.os.write = write
'''


def disk_then_resume(name: str, prelude: str, fragment: str, steps_first: int = 2):
    """A fault while a fresh run writes; one line, then --resume (or a plain re-run when no checkpoint was made)
    must finish the run."""
    def run(ws: Workspace):
        r = ws.path / "run"
        args = [*T, f"out_dir={r}", "max_steps=2", "save_every=1"]
        proc = ibtpo(args, prelude=prelude)
        if proc.returncode != 2:
            return proc, None
        again = ibtpo(["train", "--resume", str(r)]) if (r / "checkpoints" / "latest").exists() else ibtpo(args)
        if again.returncode != 0:
            return proc, f"could not continue after the fault: {again.stderr.strip().splitlines()[-1:]}"
        return proc, finished(r, 2)
    CASES.append(Case("disks", name, run, "error", fragment))


disk_then_resume("full disk in torch.save (inline_container error)", ENOSPC_TORCH, "file write failed")
disk_then_resume("full disk in safetensors", ENOSPC_SAFETENSORS, "No space left on device")
disk_then_resume("full disk at the second checkpoint", ENOSPC_SECOND, "the previous checkpoint step-000001 is kept")
disk_then_resume("read-only file system at a metrics write", EROFS_METRICS, "Read-only file system")
disk_then_resume("read-only file system at config.yaml", EROFS_CONFIG, "Read-only file system")
disk_then_resume("short metrics write (disk full)", SHORT_WRITE, "No space left on device")
simple("disks", "out_dir under a file", lambda ws: [*T, f"out_dir={ws.file('f', 'x')}/run"], "out_dir")
simple("disks", "out_dir is a file", lambda ws: [*T, f"out_dir={ws.file('f', 'x')}"], "out_dir")
simple("disks", "out_dir in /proc", [*T, "out_dir=/proc/ibtpo-run"], "out_dir")


def _fsize_limit(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@case("disks", "file-size limit (real EFBIG from the kernel) in the checkpoint", fragment="File too large")
def _efbig(ws: Workspace):
    r = ws.path / "run"
    proc = ibtpo([*T, f"out_dir={r}", "max_steps=1"], preexec=_fsize_limit(600_000))
    if proc.returncode != 2:
        return proc, None
    again = ibtpo(["train", str(r / "config.yaml")])
    return proc, None if again.returncode == 0 else f"re-run failed: {again.stderr[-300:]}"


@contextmanager
def _tmpfs(ws: Workspace, size: str):
    """A fresh tmpfs of `size` mounted at WORKSPACE/mnt for the block (None when this machine cannot mount one)."""
    mnt = ws.path / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@case("disks", "real full disk (small tmpfs) during a checkpoint", fragment="No space left on device")
def _tmpfs_full(ws: Workspace):
    with _tmpfs(ws, "4m") as mnt:
        if mnt is None:
            return _skip("cannot mount a tmpfs here")
        r = mnt / "run"
        proc = ibtpo([*T, f"out_dir={r}", "max_steps=1"])
        left = [p.name for p in (r / "checkpoints").glob(".tmp-*")] if (r / "checkpoints").exists() else []
        problem = f"temporary checkpoint left: {left}" if left else None
        return proc, problem


@case("disks", "real read-only remount mid-run", fragment="Read-only file system")
def _tmpfs_ro(ws: Workspace):
    with _tmpfs(ws, "200m") as mnt:
        if mnt is None:
            return _skip("cannot mount a tmpfs here")
        r = mnt / "run"
        p = popen([*T, f"out_dir={r}", "max_steps=50", "save_every=2"])
        _wait_for(lambda: (r / "checkpoints" / "latest").exists(), 240)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        so, se = p.communicate(timeout=240)
        proc = subprocess.CompletedProcess(p.args, p.returncode, so, se)
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        again = ibtpo(["train", "--resume", str(r), "max_steps=5"])
        return proc, None if again.returncode == 0 else f"resume after remount failed: {again.stderr[-300:]}"


# --- kills --------------------------------------------------------------------------------------------------------
KILL_IN_SAVE = '''
import os, signal, torch
_save, n = torch.save, [0]
def save(obj, f, *a, **k):
    n[0] += 1
    if n[0] == {at}:
        with open(f, "wb") as fh: fh.write(b"half")
        os.kill(os.getpid(), signal.SIGKILL)
    return _save(obj, f, *a, **k)
torch.save = save
'''
KILL_IN_METRICS = '''
import os, signal, ibtpo.training.metrics as m
_write, n = os.write, [0]
def write(fd, data):
    n[0] += 1
    if n[0] == {at}:
        _write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(fd, data)
m.os.write = write
'''
KILL_IN_MANIFEST = '''
import os, signal, ibtpo.training.checkpoint as c
_wm, n = c.write_manifest, [0]
def wm(d, step):
    n[0] += 1
    if n[0] == {at}:
        (d / "manifest.json").write_text('{"step": 1, "fi')
        os.kill(os.getpid(), signal.SIGKILL)
    return _wm(d, step)
c.write_manifest = wm
'''


def kill_case(name: str, prelude: str | None, delay: float | None = None):
    """SIGKILL a 3-step run (injected at a write, or after `delay` seconds); then the run must continue: --resume
    when a checkpoint exists, else a plain re-run; it must finish with a clean metrics stream."""
    def run(ws: Workspace):
        r = ws.path / "run"
        args = [*T, f"out_dir={r}", "max_steps=3", "save_every=1"]
        if prelude is not None:
            first = ibtpo(args, prelude=prelude)
        else:
            p = popen(args)
            time.sleep(delay)
            p.kill()
            so, se = p.communicate()
            first = subprocess.CompletedProcess(p.args, p.returncode, so, se)
        if first.returncode == 0:
            return first, finished(r, 3)
        resume = (r / "checkpoints").exists() and any((r / "checkpoints").glob("step-*"))
        again = ibtpo(["train", "--resume", str(r)] if resume else args)
        if again.returncode != 0:
            again2 = ibtpo(args)  # the advice the one-line error gives: start afresh
            if again2.returncode != 0:
                return again, f"stuck run after the kill: {again.stderr.strip().splitlines()[-1:]}"
            again = again2
        return again, finished(r, 3)
    CASES.append(Case("kills", name, run, "ok"))


for at in (1, 2, 3):
    kill_case(f"SIGKILL inside checkpoint write #{at} (trainer state)", KILL_IN_SAVE.replace("{at}", str(at)))
for at in (1, 3):
    kill_case(f"SIGKILL while writing manifest #{at}", KILL_IN_MANIFEST.replace("{at}", str(at)))
for at in (1, 2, 4):
    kill_case(f"SIGKILL mid metrics line #{at}", KILL_IN_METRICS.replace("{at}", str(at)))
for delay in (0.5, 3.0, 6.0, 9.0, 12.0, 16.0):
    kill_case(f"SIGKILL after {delay:g} s", None, delay)

# --- concurrency ------------------------------------------------------------------------------------------------


def _two(ws: Workspace, first: list[str], second: list[str], wait_for: Callable[[], bool]):
    p = popen(first)
    _wait_for(lambda: wait_for() or p.poll() is not None, 240)
    proc = ibtpo(second)
    so, se = p.communicate(timeout=600)
    return proc, (None if p.returncode == 0 else f"the first process failed: {se.strip().splitlines()[-1:]}")


@case("concurrency", "two fresh runs on one directory", fragment="in use by another ibtpo process")
def _two_fresh(ws: Workspace):
    r = ws.path / "run"
    proc, problem = _two(ws, [*T, f"out_dir={r}", "max_steps=3"], [*T, f"out_dir={r}", "max_steps=3"],
                         lambda: (r / "run.lock").exists())
    return proc, problem or finished(r, 3)


@case("concurrency", "two resumes of one run", fragment="in use by another ibtpo process")
def _two_resumes(ws: Workspace):
    r = ws.run()
    proc, problem = _two(ws, R(r), R(r), lambda: (r / "run.lock").exists())
    return proc, problem or finished(r, 3)


@case("concurrency", "overwrite=true while another process trains", fragment="in use by another ibtpo process")
def _overwrite_while(ws: Workspace):
    r = ws.run()
    proc, problem = _two(ws, R(r), [*T, f"out_dir={r}", "overwrite=true"], lambda: (r / "run.lock").exists())
    return proc, problem or finished(r, 3)


@case("concurrency", "fresh run while another resumes", fragment="in use by another ibtpo process")
def _fresh_while_resume(ws: Workspace):
    r = ws.run()
    proc, problem = _two(ws, R(r), [*T, f"out_dir={r}"], lambda: (r / "run.lock").exists())
    return proc, problem or finished(r, 3)


@case("concurrency", "stale lock file of a killed process", expect="ok")
def _stale(ws: Workspace):
    r = ws.run()
    (r / "run.lock").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))
    proc = ibtpo(R(r))
    return proc, finished(r, 3)


@case("concurrency", "eval of a run while it trains", expect="ok")
def _eval_while(ws: Workspace):
    r = ws.run()
    proc, problem = _two(ws, [*R(r)[:-1], "max_steps=6"], ["eval", f"model={r}", "eval_questions=2", "eval_k=1",
                                                            "max_completion_length=8"],
                         lambda: (r / "run.lock").exists())
    return proc, problem
