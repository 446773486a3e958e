"""Progress bars of a training run: the main bar follows the budget that stops the run; evaluations and probes get
their own bars (one question batch at a time) while they run."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def binding_budget(max_steps: int, max_tokens: int, step: int, tokens: int, tokens_per_step_bound: int) -> str:
    """Which budget will stop the run: "steps" or "tokens".

    Tokens when there is a token budget and it is expected to bind first: before the first step, when even
    `tokens_per_step_bound` (the most a step can generate) x max_steps reaches it; afterwards, when the mean tokens
    per step so far x max_steps reaches it.
    """
    if max_tokens <= 0:
        return "steps"
    per_step = tokens / step if step > 0 else tokens_per_step_bound
    return "tokens" if per_step * max_steps >= max_tokens else "steps"


def run_progress(console: Console, enabled: bool):
    """A rich Progress for a run (a null context when disabled): "<what> done/total  bar  <info>  elapsed  ETA"."""
    if not enabled:
        return nullcontext(None)
    return Progress(TextColumn("{task.description} {task.completed:,}/{task.total:,}"), BarColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=False)


class PhaseBar:
    """A temporary bar for one phase of work (an evaluation, a probe): ``on_batch(n)`` advances it; ``close()``
    removes it. With no Progress it does nothing."""

    def __init__(self, progress: Progress | None, label: str, total: int, unit: str = "questions"):
        self.progress = progress
        self.task = progress.add_task(label, total=total, info=unit) if progress is not None else None

    def on_batch(self, n: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.remove_task(self.task)


def phase(progress: Progress | None) -> Callable[[str, int], PhaseBar]:
    """A factory of :class:`PhaseBar` on `progress` (what the trainer's evaluate/probe take)."""
    return lambda label, total: PhaseBar(progress, label, total)
