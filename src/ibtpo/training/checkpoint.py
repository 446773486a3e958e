"""Atomic, manifest-verified checkpoints of everything needed to resume a run exactly.

Layout: ``<run>/checkpoints/step-000040/`` holds the model (``save_pretrained``), the tokenizer,
``trainer_state.pt`` (optimizer, scheduler, every RNG state, step, token count, data position) and, written last,
``manifest.json`` (size and SHA-256 of every other file). A checkpoint is written to a temporary directory
(``.tmp-step-*``) and renamed into place, then ``<run>/checkpoints/latest`` is replaced atomically, so a kill at any
moment leaves the previous checkpoint usable. A checkpoint counts as complete only when its manifest matches its
files; resuming takes the one ``latest`` names when it is complete, else the newest complete one (and says why).
A write that fails (full disk, read-only file system) removes its temporary directory and raises
:class:`CheckpointError` with one line; the previous checkpoint is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ibtpo.training.models import ModelLoadError, load_policy, write_base_reference

LATEST = "latest"
MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message is one line naming the path."""


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """All RNG states of the process (CUDA's too, when there is a GPU) plus the run's generator.

    Draws on a GPU come from generators seeded from the run's (CPU) generator (``backends.eager.device_generator``),
    so its state covers them; the CUDA states cover what uses the global CUDA RNG (e.g. dropout on the GPU)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "sampler": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _why(exc: BaseException) -> str:
    """One line describing an I/O failure (an OSError's strerror, else the last line of the message)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _files(directory: Path) -> list[Path]:
    return sorted(f for f in directory.rglob("*") if f.is_file() and f.name != MANIFEST)


def write_manifest(directory: Path, step: int) -> None:
    """Record size and SHA-256 of every file under `directory` in ``manifest.json`` (fsynced)."""
    entries = {str(f.relative_to(directory)): {"size": f.stat().st_size, "sha256": _sha256(f)}
               for f in _files(directory)}
    path = directory / MANIFEST
    with open(path, "w") as fh:
        fh.write(json.dumps({"step": step, "files": entries}, indent=1))
        fh.flush()
        os.fsync(fh.fileno())


def verify_checkpoint(ckpt: Path, hashes: bool = False) -> str | None:
    """None when `ckpt` is complete (its manifest matches its files: sizes, and with `hashes` also SHA-256),
    else a short reason. A checkpoint written before manifests existed counts as complete when it holds its
    trainer state and model weights."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return "missing"
    manifest = ckpt / MANIFEST
    if not manifest.exists():
        has_weights = any(ckpt.glob("*.safetensors")) or any(ckpt.glob("*.bin"))
        return None if (ckpt / "trainer_state.pt").exists() and has_weights else "no manifest (an unfinished write)"
    try:
        entries = json.loads(manifest.read_text())["files"]
        items = [(str(k), int(v["size"]), str(v["sha256"])) for k, v in entries.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "manifest.json is unreadable"
    for name, size, sha in items:
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size}"
        if hashes and _sha256(f) != sha:
            return f"{name} does not match its SHA-256 in the manifest"
    return None


def clean_temporary(run_dir: Path) -> list[Path]:
    """Remove what an interrupted checkpoint write left in ``<run>/checkpoints`` (temporary dirs and pointer);
    returns the removed paths."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = []
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) or p.name == f".{LATEST}.tmp":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict[str, Any], keep: int = 2,
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, and prune all but the newest `keep` complete ones.
    `write_extra(directory)` adds files before the manifest (data-parallel shards: ``training.dist_checkpoint``).

    Raises CheckpointError (one line) when the write fails; its temporary directory is removed and the previous
    checkpoint stays the latest."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"{TMP_PREFIX}step-{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_pretrained(tmp)
        write_base_reference(tmp, model)  # LoRA: the base model's path relative to the checkpoint
        tokenizer.save_pretrained(tmp)
        torch.save(trainer_state, tmp / "trainer_state.pt")
        if write_extra is not None:
            write_extra(tmp)
        for f in _files(tmp):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        write_manifest(tmp, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / f".{LATEST}.tmp"
        pointer_tmp.write_text(final.name)
        if (root / LATEST).is_dir() and not (root / LATEST).is_symlink():  # not a pointer: cannot be replaced
            shutil.rmtree(root / LATEST)
        os.replace(pointer_tmp, root / LATEST)
        _fsync_dir(root)
    except Exception as exc:  # OSError, or a writer's own error: torch (RuntimeError), safetensors (SafetensorError)
        why = _why(exc)
        try:
            if shutil.disk_usage(root).free < 1 << 20 and "No space left" not in why:
                why = f"No space left on device ({why})"
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(run_dir)
        note = f"the previous checkpoint {kept.name} is kept" if kept else "no earlier checkpoint exists"
        raise CheckpointError(f"could not write checkpoint {final}: {why}; {note}") from None
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and verify_checkpoint(p) is None)
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _pointer(root: Path) -> tuple[Path | None, str]:
    """The checkpoint `latest` names and, when it is unusable, why."""
    pointer = root / LATEST
    if not pointer.exists():
        return None, "checkpoints/latest is missing"
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None, "checkpoints/latest is unreadable"
    if not name.startswith("step-") or "/" in name or "\\" in name or not name[5:].isdigit():
        return None, f"checkpoints/latest holds {name[:40]!r}, not a checkpoint name"
    return root / name, ""


def find_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """The checkpoint to resume from and a note ('' when `latest` named a complete one).

    `latest` wins when its checkpoint is complete (manifest sizes and SHA-256 checked); otherwise the newest
    complete ``step-*`` checkpoint is taken and the note says why. (None, reasons) when there is none."""
    root = Path(run_dir) / "checkpoints"
    named, why = _pointer(root)
    if named is not None:
        problem = verify_checkpoint(named, hashes=True)
        if problem is None:
            return named, ""
        why = f"checkpoints/latest names {named.name}, which is incomplete ({problem})"
    steps = sorted((p for p in root.glob("step-*") if p.is_dir() and p != named), reverse=True) if root.is_dir() else []
    for cand in steps:
        if verify_checkpoint(cand, hashes=True) is None:
            return cand, f"{why}; using the newest complete checkpoint, {cand.name}"
    return None, why


def has_checkpoints(run_dir: Path) -> bool:
    """Does the run hold any checkpoint directory (complete or not; temporary ones excluded)?"""
    root = Path(run_dir) / "checkpoints"
    return root.is_dir() and any(p.is_dir() for p in root.glob("step-*"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run would resume from (see :func:`find_checkpoint`), or None when it has no complete one."""
    return find_checkpoint(run_dir)[0]


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint; CheckpointError (one line) when it cannot be read."""
    path = Path(ckpt) / "trainer_state.pt"
    try:
        state = torch.load(path, weights_only=False)
    except Exception as exc:  # a truncated or foreign file fails inside torch's unpickler with many error types
        raise CheckpointError(f"{path}: unreadable trainer state ({_why(exc)})") from None
    missing = [k for k in ("optimizer", "scheduler", "rng", "step", "tokens", "data_pos") if k not in state] \
        if isinstance(state, dict) else ["(not a dict)"]
    if missing:
        raise CheckpointError(f"{path}: not a trainer state of this version (missing {', '.join(missing)})")
    return state


def resume_point(run_dir: Path, resume: bool, overwrite: bool) -> tuple[Path | None, str]:
    """Check the run directory against the requested start, before anything in it changes.

    Returns the checkpoint to resume from (None for a fresh run) and a note for the user. Raises CheckpointError
    (one line) for --resume without a complete checkpoint, and for a fresh run in a directory holding checkpoints
    unless `overwrite` (the caller deletes them only once everything else of the run has loaded)."""
    run_dir = Path(run_dir)
    if resume:
        ckpt, note = find_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"no checkpoint to resume from in {run_dir / 'checkpoints'} "
                                  f"({note or 'none written'}); start the run afresh with: "
                                  f"ibtpo train {run_dir / 'config.yaml'}")
        return ckpt, note
    if has_checkpoints(run_dir) and not overwrite:
        raise CheckpointError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or pass "
                              f"overwrite=true or another out_dir")
    return None, ""


def load_run_policy(name: str, dtype: str):
    """(model, tokenizer) that `name` names: a model directory, hub id or 'testbed', or a run directory (its newest
    complete checkpoint; CheckpointError when it has none). A run that is training may prune that checkpoint between
    finding and loading it: then the newer one is taken (a few tries)."""
    tries = 3
    while True:
        path = name
        if (Path(name) / "checkpoints").is_dir():  # a run directory: its latest checkpoint
            ckpt = latest_checkpoint(Path(name))
            if ckpt is None:
                raise CheckpointError(f"model={name}: run directory has no complete checkpoint")
            path = str(ckpt)
        try:
            return load_policy(path, dtype)
        except ModelLoadError:
            tries -= 1
            if path == name or Path(path).exists() or tries == 0:
                raise
