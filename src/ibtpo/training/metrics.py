"""Run metrics: one JSON object per step in ``metrics.jsonl``, mirrored to TensorBoard; rollout statistics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from statistics import mean

from ibtpo.rollout.tree import Tree


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
            raise MetricsError(f"{path}:{i}: not a metrics record (a JSON object with a 'step'); fix or remove the line")
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


def rollout_metrics(trees: list[Tree]) -> dict[str, float]:
    """Reward, Eff-Rate, length, cost and tree-shape statistics of one rollout batch (CONVENTIONS.md names).

    Cost is per question: new tokens (a shared prefix counts once), prefix tokens whose keys/values were reused
    instead of computed, prefix tokens encoded (prompt prefill + one re-fed token per fork row with reuse).
    """
    rewards = [leaf.reward or 0.0 for t in trees for leaf in t.leaves()]
    lengths = [len(Tree.completion(leaf)[0]) for t in trees for leaf in t.leaves()]
    entropies = [e for t in trees for n in t.nodes() for e in n.entropies]
    effective = [len({leaf.reward for leaf in t.leaves()}) > 1 for t in trees]
    truncated = [not leaf.finished for t in trees for leaf in t.leaves()]
    stats = [t.stats() for t in trees]
    mu = mean(rewards)
    return {
        "reward/mean": mu,
        "reward/std": (sum((r - mu) ** 2 for r in rewards) / max(1, len(rewards) - 1)) ** 0.5,
        "eff_rate": mean(effective),
        "actor/entropy": mean(entropies) if entropies else 0.0,
        "response_length/mean": mean(lengths),
        "response_length/clip_ratio": mean(truncated),
        "rollout/new_tokens_per_question": mean(s["new_tokens"] for s in stats),
        "rollout/trajectories_per_question": mean(s["trajectories"] for s in stats),
        "rollout/reused_prefix_tokens": mean(t.meta.get("reused_prefix_tokens", 0) for t in trees),
        "rollout/encoded_prefix_tokens": mean(t.meta.get("encoded_prefix_tokens", 0) for t in trees),
        "rollout/tree_depth": mean(s["depth"] for s in stats),
        "rollout/branching_nodes": mean(s["branching_nodes"] for s in stats),
        "rollout/nodes_per_question": mean(s["nodes"] for s in stats),
    }


def diversity_metrics(trees: list[Tree], tokenizer, extract) -> dict[str, float]:
    """Per question, how different its trajectories are (means over the batch's questions).

    - ``diversity/distinct_answers``: distinct final answers (``extract`` of the decoded completion; completions
      without an answer are not counted);
    - ``diversity/distinct_completions``: distinct completions (as token sequences) / trajectories, in (0, 1].
    """
    answers, completions = [], []
    for t in trees:
        seqs = [tuple(Tree.completion(leaf)[0]) for leaf in t.leaves()]
        found = {extract(tokenizer.decode(list(s), skip_special_tokens=True)) for s in set(seqs)}
        answers.append(len(found - {None}))
        completions.append(len(set(seqs)) / max(1, len(seqs)))
    return {"diversity/distinct_answers": mean(answers), "diversity/distinct_completions": mean(completions)}
