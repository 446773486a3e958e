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


def _clock(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m{rest % 60:02d}s" if h else f"{rest // 60}m{rest % 60:02d}s"


class LogLines:
    """Plain progress lines for a log (stdout/stderr not a terminal: ``ibtpo train > log``, a batch job), where a
    live bar shows nothing until the end: one line every `every` steps (0 = whenever `every_s` seconds passed since
    the last line), and at every evaluation and the last step.

    A line: ``step 12/100  tokens 45,312/500,000  reward 0.312  acc 0.281  tok/s 1,234  elapsed 2m10s  ETA 5m03s``
    (acc: the primary evaluation set's, when that step evaluated; ETA: from the budget that stops the run)."""

    def __init__(self, write: Callable[[str], None], every: int = 0, every_s: float = 30.0, clock=None):
        import time

        self.write, self.every, self.every_s = write, every, every_s
        self.clock = clock or time.perf_counter
        self.start = self.last = self.clock()

    def step(self, step: int, max_steps: int, tokens: int, max_tokens: int, unit: str, metrics: dict[str, float],
             acc: float | None = None, force: bool = False) -> str | None:
        """Write (and return) the line of `step` when one is due; `unit` ("steps" or "tokens") names the budget
        that stops the run, for the ETA."""
        now = self.clock()
        due = (step % self.every == 0) if self.every else (now - self.last >= self.every_s)
        if not (due or force or acc is not None or step == 1):
            return None
        self.last = now
        elapsed = now - self.start
        done, total = (tokens, max_tokens) if unit == "tokens" else (step, max_steps)
        eta = elapsed * (total - done) / done if done > 0 and total > done else 0.0
        parts = [f"step {step:,}/{max_steps:,}", f"tokens {tokens:,}" + (f"/{max_tokens:,}" if max_tokens else "")]
        if "reward/mean" in metrics:
            parts.append(f"reward {metrics['reward/mean']:.3f}")
        if acc is not None:
            parts.append(f"acc {acc:.3f}")
        if "perf/tokens_per_s" in metrics:
            parts.append(f"tok/s {metrics['perf/tokens_per_s']:,.0f}")
        parts += [f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta) if done > 0 else '-'}"]
        line = "  ".join(parts)
        self.write(line)
        return line
