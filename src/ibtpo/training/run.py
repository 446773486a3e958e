"""Driving a run: the step loop with its evaluation/checkpoint cadence, progress bar, summary and plots."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from ibtpo.config.schema import TrainConfig
from ibtpo.core.guard import ComponentError
from ibtpo.rollout.samplers import SAMPLERS
from ibtpo.reporting.progress import LogLines, binding_budget, phase, run_progress
from ibtpo.training.checkpoint import clean_temporary, latest_checkpoint
from ibtpo.training.world import is_writer
from ibtpo.training.lock import RunLock
from ibtpo.training.metrics import read_metrics
from ibtpo.training.reference import lookup
from ibtpo.training.trainer import Trainer
from ibtpo.reporting.watch import EarlyWarnings


def _print_setup(console: Console, trainer: Trainer) -> None:
    """Real-model defaults applied (ibtpo.config.profiles) and how prompts reach the model."""
    from ibtpo.data.datasets import describe_prompting
    from ibtpo.config.profiles import describe_profile

    cfg = trainer.cfg
    line = describe_profile(cfg._profile)
    if line:
        console.print(line, soft_wrap=True)
    if trainer.layout_note:  # train_layout=auto fell back to flattened rows
        console.print(trainer.layout_note, soft_wrap=True, markup=False)
    if cfg.dataset or cfg.eval_datasets or cfg.task == "arith":
        template = cfg.prompt_template or ("answer_line" if cfg.task == "arith" and not cfg.dataset else None)
        console.print(describe_prompting(cfg.chat_template, template, trainer.tokenizer), soft_wrap=True)
    if trainer.memory_plan is not None:
        console.print(trainer.memory_plan.describe(), soft_wrap=True, markup=False)


class RunIOError(RuntimeError):
    """An I/O failure during a run (unwritable or read-only directory, full disk); one line naming the path."""


def train(cfg: TrainConfig, resume: bool = False, console: Console | None = None) -> dict:
    """Run (or resume) training to its step/token budget; returns the end-of-run summary.

    The run directory is locked for the run (a second process on it is refused), leftovers of an interrupted
    checkpoint write are removed first, and a failed write (full disk, read-only file system) ends the run with a
    one-line RunIOError that names the path and the checkpoint kept."""
    console = console or Console(stderr=True)
    if not is_writer():  # data parallel: rank 0 locks the run directory, cleans it up and reports
        return _train(cfg, resume, Console(quiet=True))
    run_dir = Path(cfg.out_dir)
    try:
        lock = RunLock(run_dir).acquire()
    except OSError as exc:
        raise RunIOError(f"out_dir {run_dir}: cannot create or write the run directory ({_strerror(exc)})") from None
    saved = _saved_config(run_dir) if resume else None
    try:
        for path in clean_temporary(run_dir):
            console.print(f"removed {path}, left by an interrupted checkpoint write", soft_wrap=True, markup=False)
        return _train(cfg, resume, console)
    except BaseException as exc:
        if saved is not None:  # failed before writing a checkpoint: config.yaml describes the newest one again
            _restore_config(run_dir, saved)
        if not isinstance(exc, OSError):
            raise
        kept = latest_checkpoint(run_dir)
        where = exc.filename if getattr(exc, "filename", None) else run_dir
        note = (f"the last checkpoint, {kept.name}, is kept: continue with --resume {run_dir}" if kept
                else "no checkpoint was written yet")
        raise RunIOError(f"{where}: {_strerror(exc)}; {note}") from None
    finally:
        lock.release()


def _saved_config(run_dir: Path) -> tuple[bytes, Path | None] | None:
    """config.yaml of the run being resumed and its newest checkpoint (None: no config.yaml)."""
    try:
        return (run_dir / "config.yaml").read_bytes(), latest_checkpoint(run_dir)
    except Exception:  # unreadable: resuming reports it
        return None


def _restore_config(run_dir: Path, saved: tuple[bytes, Path | None]) -> None:
    """A resume that ends before writing a checkpoint (a refused setting, a wrong component, non-finite values, an
    interrupt) puts back the config.yaml it started from: a plain --resume then continues with the settings of the
    newest checkpoint, not with the ones that failed."""
    text, newest = saved
    try:
        if latest_checkpoint(run_dir) == newest and (run_dir / "config.yaml").read_bytes() != text:
            (run_dir / "config.yaml").write_bytes(text)
    except Exception:  # best effort: the failure being reported matters more
        pass


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc).splitlines()[0]


def _train(cfg: TrainConfig, resume: bool, console: Console) -> dict:
    trainer = Trainer(cfg, resume=resume)
    if trainer.resume_note:
        console.print(f"resume: {trainer.resume_note}", soft_wrap=True, markup=False)
    acc_key = f"val/{trainer.source.name}/avg@{cfg.eval_k}"  # the primary evaluation set
    skipped = getattr(trainer.source, "skipped", [])
    if skipped:
        console.print(f"skip_bad_rows: skipped {len(skipped)} malformed dataset rows (first: {skipped[0]})")
    _print_setup(console, trainer)
    warn = EarlyWarnings(cfg.max_completion_length, tree=SAMPLERS.get(cfg.sampler).rule is not None,
                         delimiter=cfg.step_delimiter)
    last_eval: dict[str, float] = {}
    t_start = time.perf_counter()
    bound = cfg.questions_per_step * trainer.shape.group_size * cfg.max_completion_length  # most tokens a step makes

    def bar_state() -> tuple[str, int, int]:  # the budget that stops the run: its unit, done and total
        unit = binding_budget(cfg.max_steps, cfg.max_tokens, trainer.step, trainer.tokens, bound)
        return (unit, trainer.tokens, cfg.max_tokens) if unit == "tokens" else (unit, trainer.step, cfg.max_steps)

    lines = None  # a log instead of a terminal: plain lines, since a live bar shows nothing until the end
    if cfg.progress and not console.is_terminal:
        lines = LogLines(lambda text: console.print(text, soft_wrap=True, markup=False, highlight=False),
                         cfg.progress_every)
    with run_progress(console, cfg.progress and lines is None) as progress:
        bars = phase(progress)
        if trainer.step == 0:
            last_eval = trainer.evaluate(bars)
            for line in warn.after_eval(last_eval):
                console.print(f"[yellow]{line}[/yellow]", soft_wrap=True)
            trainer.logger.log(0, {**last_eval, **(trainer.probe(bars) if cfg.ib_probe_every else {})})
            if lines is not None and acc_key in last_eval:
                lines.step(0, cfg.max_steps, 0, cfg.max_tokens, bar_state()[0], {}, last_eval[acc_key])
        unit, done, total = bar_state()
        task = progress.add_task(unit, total=total, completed=done, info="reward -  acc -") if progress else None
        while not trainer.done():
            try:
                metrics = trainer.train_step()
            except ComponentError as exc:  # a user component (or non-finite values): name the step; nothing saved
                raise exc.at_step(trainer.step + 1) from exc.__cause__
            for line in warn.after_step(metrics, last=trainer.done()):
                console.print(f"[yellow]{line}[/yellow]", soft_wrap=True)
            if trainer.done() or (cfg.eval_every and trainer.step % cfg.eval_every == 0):
                last_eval = trainer.evaluate(bars)
                metrics.update(last_eval)
            if cfg.ib_probe_every and (trainer.done() or trainer.step % cfg.ib_probe_every == 0):
                metrics.update(trainer.probe(bars))
            trainer.logger.log(trainer.step, metrics)
            if trainer.done() or (cfg.save_every and trainer.step % cfg.save_every == 0):
                trainer.save()
            if lines is not None:
                evaluated = acc_key in metrics
                lines.step(trainer.step, cfg.max_steps, trainer.tokens, cfg.max_tokens, bar_state()[0], metrics,
                           metrics[acc_key] if evaluated else None, force=trainer.done())
            if progress is not None:
                acc = f"{last_eval[acc_key]:.3f}" if acc_key in last_eval else "-"
                unit, done, total = bar_state()
                progress.update(task, description=unit, completed=done, total=total,
                                info=f"reward {metrics['reward/mean']:.3f}  acc {acc}")
    trainer.logger.close()
    summary = {"steps": trainer.step, "generated_tokens": trainer.tokens,
               "wall_clock_s": round(time.perf_counter() - t_start, 1), "final": last_eval}
    if skipped:
        summary["skipped_rows"] = {"count": len(skipped), "first": skipped[:20]}
    records = read_metrics(trainer.logger.path)
    if not last_eval:  # resumed a run that had already reached its budget: its final evaluation is on record
        final = [r for r in records if r["step"] == trainer.step and acc_key in r]
        last_eval = {k: v for k, v in final[-1].items() if k.startswith("val/")} if final else trainer.evaluate()
        summary["final"] = last_eval
    if cfg.ib_probe_every:
        probe_s = sum(r.get("perf/probe_time_s", 0.0) for r in records)
        step_s = sum(r.get("perf/step_time_s", 0.0) for r in records)
        summary["ib_probe"] = {"probes": sum("perf/probe_time_s" in r for r in records), "time_s": round(probe_s, 1),
                               "share_of_step_time": round(probe_s / max(step_s, 1e-9), 4)}
    initial = [r for r in records if r["step"] == 0]
    if initial:
        summary["initial"] = {k: v for k, v in initial[0].items() if k != "step"}
    ref = lookup(cfg)
    if ref is not None and acc_key in last_eval:
        summary["grpo_reference"] = {"mean": ref["mean"], "ci95": ref["ci95"], "seeds": ref["seeds"],
                                     "difference": last_eval[acc_key] - ref["mean"], "source": ref["source"]}
    if not is_writer():
        return summary
    (trainer.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if acc_key in summary.get("initial", {}) and acc_key in last_eval:
        before, after = summary["initial"][acc_key], last_eval[acc_key]
        console.print(f"[bold]held-out {acc_key} (T={cfg.eval_temperature}): {100 * before:.1f}% -> "
                      f"{100 * after:.1f}% ({100 * (after - before):+.1f} points) after {trainer.step} steps, "
                      f"{trainer.tokens:,} generated tokens; run directory {trainer.run_dir}[/bold]")
    if "grpo_reference" in summary:
        g = summary["grpo_reference"]
        console.print(f"[bold]GRPO with the same settings and token budget ({len(g['seeds'])} seeds, {g['source']}): "
                      f"{100 * g['mean']:.1f}% +/- {100 * g['ci95']:.1f}; this run ({cfg.algorithm}): "
                      f"{100 * last_eval[acc_key]:.1f}% ({100 * g['difference']:+.1f} points)[/bold]")
    if cfg.plots:
        from ibtpo.reporting.plots import plot_run

        plot_run(trainer.run_dir, records)
    return summary
