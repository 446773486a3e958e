"""The ``ibtpo`` command line: train, eval, score, compare, pretrain.

    ibtpo train [CONFIG.yaml] [key=value | --key value ...] [--resume RUN_DIR]
    ibtpo eval  [model=PATH_OR_RUN_DIR] [eval_datasets=[A.jsonl,NAME=B.parquet]] [eval_k=8 ...] [--json FILE]
    ibtpo score [model=PATH_OR_RUN_DIR] [tree_b0=4 tree_l=9 ...] [--dataset sum|FILE] [--questions N] [--out DIR]
    ibtpo compare [CONFIG.yaml] [--presets grpo ib_tpo ...] [--seeds 0 1 2] [--tokens N] [--out DIR] [--jobs N]
                  [k=v ...]
    ibtpo pretrain [--out DIR] [steps=900 ...]

Bad input ends with one line on stderr naming the culprit and exit code 2 (``IBTPO_TRACEBACK=1`` also prints the
full trace). SIGINT and SIGTERM (what schedulers send on preemption) end the command with one line, the last checkpoint
kept, exit code 130 / 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from ibtpo.core import interrupts  # noqa: E402  (stdlib only: SIGTERM during the imports below ends with one line)

interrupts.install_early()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from ibtpo.config.schema import (ConfigError, build_config, check_training, config_help, load_yaml_mapping,  # noqa: E402
                          parse_overrides)


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def _fail(msg: str, code: int = 2) -> int:
    from ibtpo.core.guard import trace_requested

    if trace_requested() and sys.exc_info()[1] is not None:
        import traceback

        traceback.print_exc()
    print(f"ibtpo: error: {msg}", file=sys.stderr)
    return code


def _interrupted() -> int:
    from ibtpo.core.interrupts import message

    return _fail(*message())


def _split_config_path(rest: list[str]) -> tuple[str | None, list[str]]:
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        return rest[0], rest[1:]
    return None, rest


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from ibtpo.training.run import train

    if args.help_config:
        print(config_help())
        return 0
    path, rest = _split_config_path(rest)
    overrides = parse_overrides(rest)
    base = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise UsageError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
        path = path or str(run_dir / "config.yaml")
        overrides["out_dir"] = str(run_dir)
    cfg = build_config(path, overrides, base)
    if args.resume:
        _check_resume_changes(Path(args.resume), cfg, args.allow_config_change)
    summary = train(cfg, resume=bool(args.resume))
    from ibtpo.training.world import is_writer

    if is_writer():  # data parallel: rank 0 reports
        print(json.dumps(summary, indent=2))
    return 0


def _print_setup(console, cfg, tokenizer) -> None:
    """The start-of-work lines: real-model defaults applied, and how prompts reach the model."""
    from ibtpo.data.datasets import describe_prompting
    from ibtpo.config.profiles import describe_profile

    line = describe_profile(cfg._profile)
    if line:
        console.print(line, soft_wrap=True)
    if cfg.dataset or cfg.eval_datasets:
        console.print(describe_prompting(cfg.chat_template, cfg.prompt_template, tokenizer), soft_wrap=True)


def _check_resume_changes(run_dir: Path, cfg, allowed: bool) -> None:
    """Refuse settings that break an exact continuation of the run in `run_dir` unless `allowed` (names them)."""
    import yaml

    from ibtpo.config.resume_check import config_changes, impossible_changes

    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    impossible = impossible_changes(saved, cfg.model_dump())
    if impossible:  # even with --allow-config-change
        raise UsageError(f"--resume {run_dir}: this change cannot be continued from the checkpoint: "
                         f"{'; '.join(impossible)}; start a new run in another out_dir instead")
    breaking, harmless = config_changes(saved, cfg.model_dump())
    if harmless:
        print(f"--resume: changed settings that keep the run exact: {'; '.join(harmless)}", file=sys.stderr)
    if breaking and not allowed:
        raise UsageError(f"--resume {run_dir}: these changes make the run no longer an exact continuation: "
                         f"{'; '.join(breaking)} (pass --allow-config-change to resume with them anyway)")
    if breaking:
        print(f"--resume: continuing with changed settings (not an exact continuation): {'; '.join(breaking)}",
              file=sys.stderr)


def _bars(console):
    """A progress display on `console` that only starts when drawing does (after the setup lines)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("questions"),
                    TimeElapsedColumn(), console=console)


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from ibtpo.api import evaluate
    from ibtpo.evaluation.heldout import write_samples
    from ibtpo.reporting.progress import PhaseBar

    path, rest = _split_config_path(rest)
    cfg = build_config(path, parse_overrides(rest))
    console = Console(stderr=True)
    records = [] if args.samples else None
    loaded = {}
    progress = _bars(console)

    def start(setup) -> None:
        loaded["setup"] = setup
        _print_setup(console, setup.cfg, setup.tokenizer)
        progress.start()

    def bar(name: str, total: int):
        return PhaseBar(progress, f"{name} ({cfg.eval_k} samples + greedy)", total)

    try:
        found = evaluate(cfg, bar=bar, samples=records, on_start=start)
    finally:
        progress.stop()
    sets, rewards = loaded["setup"].sets, loaded["setup"].rewards
    results = {name: {"questions": len(sets[name]), **res} for name, res in found.items()}
    metrics = list(next(iter(results.values())))[1:]
    table = Table(title=f"{cfg.model}: {cfg.eval_k} samples per question at T={cfg.eval_temperature}")
    table.add_column("dataset")
    table.add_column("questions", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    for name, res in results.items():
        table.add_row(name, str(res["questions"]),
                      *[f"{100 * res[m]:.1f}%" if m != "response_length" else f"{res[m]:.1f}" for m in metrics])
        if res["cap_hit_rate"] > 0.5:
            console.print(f"[yellow]warning: {100 * res['cap_hit_rate']:.0f}% of the completions on {name} hit "
                          f"max_completion_length={cfg.max_completion_length} before ending: raise it[/yellow]",
                          soft_wrap=True)
    Console().print(table)
    errors = rewards.check.pop_stats()
    if any(errors.values()):
        console.print(f"reward function: {errors['reward/errors']} errors (scored 0), {errors['reward/none']} "
                      f"unscorable answers (scored 0)")
    out = {"model": cfg.model, "eval_k": cfg.eval_k, "eval_temperature": cfg.eval_temperature,
           "max_completion_length": cfg.max_completion_length, "reward_fn": rewards.check.name, "datasets": results,
           "reward_stats": errors}
    if records is not None:
        write_samples(args.samples, records)
        console.print(f"wrote {len(records)} completions to {args.samples}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        console.print(f"wrote {args.json}")
    return 0


def cmd_score(args: argparse.Namespace, rest: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from ibtpo.api import score
    from ibtpo.config.components import tree_shape
    from ibtpo.evaluation.heldout import write_samples
    from ibtpo.evaluation.probe import plot_summary, tree_samples

    path, rest = _split_config_path(rest)
    cfg = build_config(path, parse_overrides(rest))
    out_dir = Path(args.out)
    if (out_dir / "score.json").exists() and not args.overwrite:
        raise UsageError(f"--out {out_dir}: already holds score.json; pass --overwrite or another --out")
    for flag, value in (("--questions", args.questions), ("--batch", args.batch)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: must be >= 1, got {value}")
    console = Console(stderr=True)
    batch = args.batch or (16 if cfg._profile else 64)  # a real model: smaller batches, a bar that moves
    loaded = {}
    progress = _bars(console)

    def start(setup) -> None:
        loaded["setup"] = setup
        _print_setup(console, setup.cfg, setup.tokenizer)
        progress.start()
        loaded["bar"] = progress.add_task("growing IBTrees", total=sum(len(qs) for qs in setup.sets.values()))

    try:
        trees, summary = score(cfg, args.questions, dataset=args.dataset, split=args.split, batch=batch,
                               on_batch=lambda n: progress.advance(loaded["bar"], n), on_start=start)
    finally:
        progress.stop()
    setup = loaded["setup"]
    cfg, tok, (dataset, questions) = setup.cfg, setup.tokenizer, next(iter(setup.sets.items()))
    shape = tree_shape(cfg, "ib")
    settings = {"model": cfg.model, "dataset": dataset, "questions": len(questions), "seed": cfg.seed,
                "tree": {"b0": shape.b0, "l": shape.rounds, "k": shape.k, "b": shape.b, "G": shape.group_size},
                "ib_beta": cfg.ib_beta, "ib_conf": cfg.ib_conf, "temperature": cfg.temperature,
                "max_completion_length": cfg.max_completion_length}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "score.json").write_text(json.dumps({"settings": settings, **summary}, indent=2))
    write_samples(out_dir / "samples.jsonl", tree_samples(trees, tok, setup.rewards.extract))
    plot_summary(summary, out_dir / "score.png", f"{cfg.model} on {dataset}: IBTree {shape.b0},{shape.rounds},"
                                                f"{shape.k},{shape.b} (beta {cfg.ib_beta})")
    agg = summary["aggregate"]
    table = Table(title=f"IB probe of {cfg.model} on {dataset} ({len(questions)} questions, G={shape.group_size})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("per question: mean +/- se", justify="right")
    for key in ("ib_score", "cov_conf_gain", "step_entropy", "token_entropy", "eff_rate", "mean_reward",
                "branching_nodes_per_question", "new_tokens_per_question"):
        value = "n/a" if agg[key] is None else f"{agg[key]:.4f}"
        pq = agg["per_question"].get(key)
        spread = "" if not pq or pq["mean"] is None else (
            f"{pq['mean']:.4f} +/- {pq['se']:.4f}" if pq["se"] is not None else f"{pq['mean']:.4f}")
        table.add_row(key, value, spread)
    root = summary["p_hat"]["root"]
    table.add_row("p_hat at root = 0 / = 1", f"{root['zero']} / {root['one']} of {root['n']}", "")
    Console().print(table)
    console.print(f"wrote {out_dir / 'score.json'}, {out_dir / 'score.png'} and {out_dir / 'samples.jsonl'} (every "
                  f"trajectory with its extracted answer and score)")
    return 0


def _load_variants(path: str) -> dict[str, dict]:
    """``name: {algorithm: PRESET, key: value, ...}`` entries of a variants YAML file (ablations for compare)."""
    from ibtpo.algos.presets import PRESETS

    data, _ = load_yaml_mapping(path, "--variants file")
    if not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"--variants {path}: expected 'name: {{algorithm: PRESET, key: value, ...}}' entries")
    for name, fields in data.items():
        if fields.get("algorithm") not in PRESETS:
            raise UsageError(f"--variants {path}: {name}: 'algorithm' must be one of {', '.join(PRESETS)}")
    return {str(k): v for k, v in data.items()}


def cmd_compare(args: argparse.Namespace, rest: list[str]) -> int:
    from rich.console import Console

    from ibtpo.algos.presets import PRESETS
    from ibtpo.compare import build_report, run_dir
    from ibtpo.training.run import train

    rest = [p for p in args.presets if "=" in p] + rest  # key=value typed after --presets belongs to the config
    args.presets = [p for p in args.presets if "=" not in p]
    variants = _load_variants(args.variants) if args.variants else {}
    unknown = [p for p in args.presets if p not in PRESETS and p not in variants]
    if unknown:
        raise UsageError(f"--presets: unknown preset {unknown[0]!r}; known: {', '.join([*PRESETS, *variants])}")
    if args.tokens < 1:
        raise UsageError(f"--tokens: must be >= 1, got {args.tokens}")
    path, rest = _split_config_path(rest)
    shared = parse_overrides(rest)
    for key in ("algorithm", "seed", "out_dir", "max_tokens"):
        if key in shared:
            raise UsageError(f"{key}: set by compare itself (use --presets, --seeds, --out, --tokens)")
    out = Path(args.out)
    plan = []  # build every config first: a bad setting fails before any run starts
    for preset in args.presets:
        for seed in args.seeds:
            fields = variants.get(preset, {"algorithm": preset})
            over = {"max_steps": 1_000_000, **shared, **fields, "seed": seed,
                    "out_dir": str(run_dir(out, preset, seed)), "max_tokens": args.tokens, "overwrite": True}
            sources = {k: f"{args.variants}: {preset}" for k in fields} if preset in variants else None
            plan.append((preset, seed, check_training(build_config(path, over, sources=sources))))
    if args.jobs < 1:
        raise UsageError(f"--jobs: must be >= 1, got {args.jobs}")
    console = Console(stderr=True)
    if not args.report_only:
        todo = []
        for i, (preset, seed, cfg) in enumerate(plan, start=1):
            rd = Path(cfg.out_dir)
            if (rd / "summary.json").exists():
                console.print(f"[{i}/{len(plan)}] {preset} seed {seed}: finished earlier, reused")
                continue
            resume = (rd / "checkpoints" / "latest").exists()
            todo.append((f"[{i}/{len(plan)}] {preset} seed {seed}", cfg, resume))
        if args.jobs == 1:
            for label, cfg, resume in todo:
                console.print(f"[bold]{label}[/bold]" + (" (resuming its last checkpoint)" if resume else ""))
                train(cfg, resume=resume, console=console)
        else:
            from ibtpo.compare import run_parallel

            run_parallel(todo, args.jobs, console)
    data = build_report(out, args.presets, args.seeds, baseline=args.baseline)
    print((out / "report.md").read_text())
    console.print(f"wrote {out / 'report.md'}, {out / 'report.json'} and {out / 'plots' / 'compare_vs_tokens.png'}")
    return 0 if data["rows"] else 1


def cmd_pretrain(args: argparse.Namespace, rest: list[str]) -> int:
    from pydantic import TypeAdapter, ValidationError

    from ibtpo.training.testbed_policy import build_base_policy
    from ibtpo.testbed.pretrain import PretrainConfig

    overrides = parse_overrides(rest)
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown pretrain key '{key}'; known: {', '.join(sorted(known))}")
    try:
        pcfg = TypeAdapter(PretrainConfig).validate_python(overrides)
    except ValidationError as err:
        e = err.errors()[0]
        raise ConfigError(f"{e['loc'][0]}: got {e['input']!r}; {e['msg'].lower()}") from None
    summary = build_base_policy(pcfg, Path(args.out))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_components(args: argparse.Namespace, rest: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from ibtpo.config.catalog import catalog

    build_config(None, parse_overrides(rest))  # imports plugins=[...] and checks the rest
    table = Table(title="registered components (name them in a config; `module:name` loads your own)")
    for col in ("kind", "name", "set with", "what", "options <- config field"):
        table.add_column(col)
    for row in catalog():
        table.add_row(row["kind"], row["name"], row["field"], row["summary"], row["options"])
    Console(width=200).print(table)
    return 0


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ibtpo", description="IB-TPO and its baselines for LLM reasoning RL.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="RL training (defaults: the CPU testbed main job)")
    p_train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p_train.add_argument("--allow-config-change", action="store_true",
                         help="with --resume: accept settings that differ from the saved run's and break exactness")
    p_train.add_argument("--help-config", action="store_true", help="list every config field with its default and doc")
    p_eval = sub.add_parser("eval", help="held-out avg@k / pass@k / maj@k / greedy accuracy")
    p_eval.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p_eval.add_argument("--samples", metavar="FILE", help="write every completion with its extracted answer and "
                        "score as JSONL")
    p_score = sub.add_parser("score", help="IB-Score probe: grow IBTrees with a policy on a question set")
    p_score.add_argument("--dataset", default="sum",
                         help="'sum' (the testbed task) or a dataset file/dir (any layout of dataset=; "
                              "scored by reward_fn, auto = math-verify)")
    p_score.add_argument("--split", choices=("test", "train"), default="test", help="testbed split (--dataset sum)")
    p_score.add_argument("--questions", type=int, default=None, help="score only the first N questions")
    p_score.add_argument("--batch", type=int, default=None, help="questions grown together in one batch (default 64; "
                         "16 for a real model)")
    p_score.add_argument("--out", default="runs/score", help="directory for score.json and score.png")
    p_score.add_argument("--overwrite", action="store_true", help="replace an existing score.json in --out")
    p_cmp = sub.add_parser("compare", help="presets x seeds at the same generated-token budget, with a report")
    p_cmp.add_argument("--presets", nargs="+", default=["grpo", "ib_tpo"], help="algorithm presets to compare")
    p_cmp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of every preset")
    p_cmp.add_argument("--tokens", type=int, default=1_500_000, help="generated-token budget of every run")
    p_cmp.add_argument("--baseline", default="grpo", help="the preset others are measured against")
    p_cmp.add_argument("--out", default="reports/compare", help="report directory (runs go to OUT/runs)")
    p_cmp.add_argument("--variants", metavar="FILE.yaml", help="named ablations: name: {algorithm: PRESET, key: value}")
    p_cmp.add_argument("--report-only", action="store_true", help="rebuild the report from finished runs only")
    p_cmp.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process with `threads` "
                       "torch threads (keep jobs x threads <= cores; e.g. --jobs 2 threads=1 on 2 cores)")
    sub.add_parser("components", help="every registered algorithm, sampler, rule, estimator, loss, extension, reward "
                   "(with plugins=[...]: yours too)")
    p_pre = sub.add_parser("pretrain", help="supervised warm-up that builds the testbed base policy")
    p_pre.add_argument("--out", default="runs/pretrain", help="where to save the policy and tokenizer")
    args, rest = parser.parse_known_args(argv)
    previous = interrupts.install()
    try:
        return _run(args, rest)
    finally:
        interrupts.restore(previous)


def _run(args: argparse.Namespace, rest: list[str]) -> int:
    """The command, with every known failure turned into one line on stderr and its exit code."""
    _quiet_transformers()
    handlers = {"train": cmd_train, "eval": cmd_eval, "score": cmd_score, "compare": cmd_compare,
                "pretrain": cmd_pretrain, "components": cmd_components}
    try:
        return handlers[args.command](args, rest)
    except (ConfigError, UsageError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as exc:  # argparse exits before this point: this one came from user code (a reward function)
        return _fail(f"the run called exit({exc.code!r}) (a reward function or other user code must return, not exit);"
                     f" the last checkpoint is kept")
    except Exception as exc:  # known one-line failures
        from ibtpo.core.interrupts import received

        if received():  # e.g. a collective that failed because another rank stopped on SIGTERM first
            return _interrupted()
        from ibtpo.data.datasets import DataError
        from ibtpo.core.guard import ComponentError
        from ibtpo.core.registry import RegistryError
        from ibtpo.training.models import ModelLoadError
        from ibtpo.rewards.functions import RewardError
        from ibtpo.training.checkpoint import CheckpointError
        from ibtpo.training.lock import RunLockedError
        from ibtpo.training.metrics import MetricsError
        from ibtpo.training.run import RunIOError

        if isinstance(exc, (ModelLoadError, DataError, RewardError, CheckpointError, RunLockedError, MetricsError,
                            RunIOError, ComponentError, RegistryError, FileNotFoundError, FileExistsError)):
            return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        if isinstance(exc, OSError):  # an I/O failure outside a run (an output file that cannot be written, ...)
            return _fail(f"{exc.filename or 'I/O'}: {exc.strerror or exc}")
        from ibtpo.training.distributed import DistError, peer_failure

        if isinstance(exc, DistError):
            return _fail(str(exc))
        lost = peer_failure(exc)  # data parallel: another rank died or timed out
        if lost:
            return _fail(lost, 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
