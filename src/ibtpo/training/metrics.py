"""Run metrics: one JSON object per step in ``metrics.jsonl``, mirrored to TensorBoard (rollout statistics:
``rollout.metrics``)."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read; the message is one line naming file:line."""


def _parse_lines(path: Path) -> tuple[list[dict], list[bytes], bool]:
    """Records of a metrics.jsonl, their lines as written, and whether a torn last line was left out.

    A last line without its newline is what a kill during a write leaves: it is left out (and not counted in the
    length). Any other line that is not a JSON object with a "step" raises MetricsError naming file:line."""
    raw = Path(path).read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    records, lines = [], []
    for i, line in enumerate(whole.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise MetricsError(f"{path}:{i}: not a metrics record (a JSON object with a 'step'); "
                               f"fix or remove the line")
        records.append(rec)
        lines.append(line + b"\n")
    return records, lines, len(whole) != len(raw)


class MetricsLogger:
    """Appends ``{"step": s, ...}`` lines to metrics.jsonl (each line in one write) and scalars to TensorBoard.

    On resume from step `resume_step` the file is cut back to the records up to that step (dropping what was logged
    after the checkpoint, and a torn last line)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            records, lines, torn = _parse_lines(self.path)
            kept = [ln for r, ln in zip(records, lines) if r["step"] <= resume_step]
            if torn or len(kept) != len(records):
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_bytes(b"".join(kept))
                os.replace(tmp, self.path)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        line = (json.dumps({"step": step, **metrics}) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write (full disk): never leave half a record behind
                os.ftruncate(fd, os.fstat(fd).st_size - written)
                raise OSError(28, "No space left on device (short write)", str(self.path))
        finally:
            os.close(fd)
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics.jsonl file (a torn last line, left by a kill during a write, is skipped)."""
    return _parse_lines(Path(path))[0]
