"""Machinery of the fault matrix (``fault_matrix.py``): running the CLI, workspaces, the case table, outcomes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TINY = ["algorithm=grpo", "questions_per_step=2", "num_generations=2", "eval_questions=4", "eval_k=1",
        "ib_probe_every=0", "plots=false", "tensorboard=false", "progress=false", "max_completion_length=16",
        "threads=1", "eval_greedy=false"]
CLI = "import sys; from ibtpo.cli import main; sys.exit(main(sys.argv[1:]))"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def ibtpo(args: list[str], prelude: str = "", timeout: int = 900, cwd: Path | None = None,
          preexec: Callable | None = None) -> subprocess.CompletedProcess:
    """Run the CLI; `prelude` is Python run first in the same process (fault injection by patching)."""
    return subprocess.run([PY, "-c", prelude + "\n" + CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env(), cwd=cwd, preexec_fn=preexec)


def popen(args: list[str], prelude: str = "") -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", prelude + "\n" + CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env())


# --------------------------------------------------------------------------------------------------------------------
# workspace: a temporary directory per case, with a copy of a saved base run on demand

BASE: Path | None = None  # a finished 2-step run with checkpoints step-000001 and step-000002


def make_base(where: Path) -> Path:
    run = where / "base"
    proc = ibtpo(["train", f"out_dir={run}", "max_steps=2", "save_every=1", "keep_checkpoints=2", "eval_every=0",
                  *TINY])
    if proc.returncode != 0:
        raise SystemExit(f"the base run failed:\n{proc.stderr[-3000:]}")
    return run


class Workspace:
    def __init__(self, path: Path):
        self.path = path

    def run(self, name: str = "run") -> Path:
        dst = self.path / name
        if not dst.exists():
            shutil.copytree(BASE, dst)
        return dst

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p


def snapshot(run: Path) -> dict[str, str]:
    """sha256 of config.yaml and of every file of every complete checkpoint (manifest present)."""
    out = {}
    if (run / "config.yaml").exists():
        out["config.yaml"] = hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()
    for ck in sorted((run / "checkpoints").glob("step-*")):
        if (ck / "manifest.json").exists():
            for f in sorted(ck.rglob("*")):
                if f.is_file():
                    out[str(f.relative_to(run))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def finished(run: Path, steps: int | None) -> str | None:
    """None when `run` holds a finished run of `steps` steps with a clean metrics stream, else the problem."""
    if not (run / "summary.json").exists():
        return "no summary.json"
    if steps is None:
        return None
    lines = (run / "metrics.jsonl").read_text().splitlines()
    got = [json.loads(ln)["step"] for ln in lines]
    if got != list(range(steps + 1)):
        return f"metrics steps {got}, expected 0..{steps}"
    return None


# --------------------------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    category: str
    name: str
    run: Callable[[Workspace], tuple[subprocess.CompletedProcess, str | None]]
    """Runs the case; returns the (last) CLI result and a problem found by the case's own checks (None: fine)."""
    expect: str = "error"  # "error" (one line, exit 2), "interrupted" (one line, exit 143: SIGTERM) or "ok" (exit 0)
    fragment: str = ""


CASES: list[Case] = []


def case(category: str, name: str, expect: str = "error", fragment: str = ""):
    def wrap(fn):
        CASES.append(Case(category, name, fn, expect, fragment))
        return fn
    return wrap


def simple(category: str, name: str, args: list[str] | Callable[[Workspace], list[str]], fragment: str = "",
           expect: str = "error", setup: Callable[[Workspace], None] | None = None, prelude: str = "") -> None:
    def run(ws: Workspace):
        if setup:
            setup(ws)
        a = args(ws) if callable(args) else args
        return ibtpo(a, prelude=prelude, cwd=ws.path), None
    CASES.append(Case(category, name, run, expect, fragment))


def on_saved_run(category: str, name: str, args: Callable[[Path], list[str]], fragment: str = "",
                 damage: Callable[[Path], None] | None = None, expect: str = "error", steps: int = 3,
                 prelude: str = "") -> None:
    """A command on a copy of the saved run (after `damage`); a refused one must leave every complete checkpoint and
    config.yaml as they were; an accepted one must finish the run."""
    def run(ws: Workspace):
        r = ws.run()
        if damage:
            damage(r)
        before = snapshot(r)
        proc = ibtpo(args(r), prelude=prelude, cwd=ws.path)
        if proc.returncode == 0:
            return proc, finished(r, steps)
        after = snapshot(r)
        lost = [k for k in before if after.get(k) != before[k]]
        return proc, (f"saved files changed or lost: {lost[:3]}" if lost else None)
    CASES.append(Case(category, name, run, expect, fragment))


T = ["train", *TINY, "max_steps=1", "eval_every=0"]


def out(ws: Workspace) -> str:
    return f"out_dir={ws.path / 'new'}"



def _skip(why: str):
    return subprocess.CompletedProcess([], -1, "", f"SKIPPED: {why}"), "skipped"


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def classify(c: Case, proc: subprocess.CompletedProcess, problem: str | None) -> dict:
    err = proc.stderr or ""
    lines = [ln for ln in err.splitlines() if ln.startswith("ibtpo: error:")]
    tb = "Traceback (most recent call last)" in err
    res = {"category": c.category, "name": c.name, "expect": c.expect, "rc": proc.returncode, "traceback": tb,
           "message": lines[0] if lines else err.strip().splitlines()[-1][:300] if err.strip() else ""}
    if problem == "skipped":
        res["outcome"] = "skipped"
    elif problem:
        res["outcome"], res["problem"] = "lost_or_stuck", problem
    elif c.expect == "ok":
        res["outcome"] = "ok" if proc.returncode == 0 else "failed"
    elif proc.returncode == (143 if c.expect == "interrupted" else 2) and len(lines) == 1 and not tb \
            and c.fragment in lines[0]:
        res["outcome"] = "one_line"
    else:
        res["outcome"] = "failed"
    if res["outcome"] == "failed":
        res["stderr_tail"] = err[-1500:]
    return res
