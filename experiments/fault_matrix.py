"""Fault matrix: bad inputs and faults tried through the real CLI, as a new user (or a crashing machine) would.

Every case runs ``ibtpo`` in a subprocess on the shipped testbed policy with a tiny budget and is classified:

- ``one_line``: exit code 2, exactly one ``ibtpo: error:`` line on stderr, no traceback (and the fragment the case
  expects is in that line);
- ``ok``: the case expects success (e.g. resuming past a torn metrics line) and got exit code 0 with a finished run;
- anything else is a failure, kept with its stderr tail.

Cases that touch a saved run also check that nothing saved was lost or corrupted: every complete checkpoint of the
run is still there, byte for byte, and config.yaml is unchanged after a refused command; a run that must continue
does continue (``--resume`` finishes it). Faults are real where the machine allows (a small tmpfs that fills up, a
read-only remount, a file-size limit, SIGKILL) and simulated by patching the writer in the subprocess otherwise.

    python experiments/fault_matrix.py [--only SUBSTR] [--jobs 2] [--out experiments/results/fault_matrix.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
    expect: str = "error"  # "error" (one line, exit 2) or "ok" (exit 0)
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


# --- config: command line ---------------------------------------------------------------------------------------
for key, fragment in [
    ("lerning_rate=1", "unknown config key 'lerning_rate'"), ("seed=abc", "seed: got 'abc'"),
    ("max_steps=-1", "max_steps: got -1"), ("epsilon=3", "epsilon: got 3"), ("loss_agg_mode=x", "loss_agg_mode"),
    ("top_p=2", "top_p: got 2"), ("temperature=0", "temperature: got 0"), ("learning_rate=-1", "learning_rate"),
    ("sampler=nope", "sampler: got 'nope'"), ("algorithm=nope", "algorithm: got 'nope'"),
    ("max_completion_length=0", "max_completion_length: got 0"), ("max_completion_length=10000", "max_completion_length"),
    ("lora_dropout=1", "lora_dropout: got 1"), ("dtype=float16", "dtype: got 'float16'"),
    ("keep_checkpoints=0", "keep_checkpoints: got 0"), ("threads=0", "threads: got 0"),
    ("format_reward_weight=1.5", "format_reward_weight: got 1.5"), ("eval_k=0", "eval_k: got 0"),
    ("scale_rewards=std", "scale_rewards"), ("questions_per_step=0", "questions_per_step: got 0"),
    ("num_generations=[2]", "num_generations: got [2]"), ("beta=-0.1", "beta: got -0.1"),
    ("tree_l=0", "tree_l: got 0"), ("ib_zero_phat=maybe", "ib_zero_phat"), ("dual_clip_c=1", "dual_clip_c: got 1"),
    ("reward_errors=ignore", "reward_errors"), ("chat_template=sometimes", "chat_template"),
    ("task_max_terms=9", "task_max_terms: got 9"), ("eval_top_p=0", "eval_top_p: got 0"),
]:
    simple("config", f"override {key}", [*T, key], fragment)
simple("config", "option without value", ["train", "--seed"], "option --seed needs a value")
simple("config", "bare word after config", ["train", "seed=1", "oops"], "cannot read argument 'oops'")
simple("config", "missing config file", ["train", "/no/such.yaml"], "config file /no/such.yaml")
simple("config", "config file is a directory", lambda ws: ["train", str(ws.path)], "config file")

# --- config: relations -----------------------------------------------------------------------------------------------
for keys, fragment in [
    (["task_min_terms=5", "task_max_terms=3"], "task_min_terms (5) must be <= task_max_terms (3)"),
    (["iib_keep=1"], "iib_keep: got 1"),
    (["iib_keep=5"], "iib_keep (5) must be <= the group size G=2"),
    (["sampler=ib", "tree_b0=2", "tree_l=3", "tree_min_room=17"], "tree_min_room (17) must be <= max_completion_length"),
    (["mini_batch_size=5"], "mini_batch_size (5) must be <= the rollout batch"),
    (["clip_cov_lb=5", "clip_cov_ub=1"], "clip_cov_lb (5.0) must be < clip_cov_ub (1.0)"),
    (["epsilon=0", "epsilon_high=0"], "epsilon and epsilon_high are both 0"),
    (["dual_clip_c=3", "epsilon=1"], "dual_clip_c (3.0) needs epsilon < 1"),
    (["device=gpu"], "device: got 'gpu'"),
    (["device=cuda"], "device='cuda'"),
    (["device=cuda:7"], "device='cuda:7'"),
    (["sampler=ib", "tree_b0=1", "tree_l=1"], "group size G=1"),
    (["num_generations=1"], "group size G=1"),
    (["sampler=fixed_width", "treepo_segment_length=20"], "treepo_segment_length (20) must be <= max_completion_length"),
    (["eval_datasets=[x.jsonl]"], "eval_datasets: set dataset= too"),
    (["max_completion_length=300"], "context window"),
]:
    simple("config", "relation " + " ".join(keys), (lambda k: lambda ws: [*T, out(ws), *k])(keys), fragment)

# --- config: YAML files ----------------------------------------------------------------------------------------------
for name, content, fragment in [
    ("non-UTF-8 bytes", b"seed: 1\nmax_steps: \xff\xfe\n", "not UTF-8 text"),
    ("Latin-1 comment", "# r\xe9glages\nseed: 1\n".encode("latin-1"), "c.yaml:1: not UTF-8"),
    ("UTF-16 file", "seed: 1\n".encode("utf-16"), "not UTF-8"),
    ("syntax error", "seed: [1\n", "invalid YAML"),
    ("tab indentation", "seed: 1\n\tmax_steps: 2\n", "invalid YAML"),
    ("a list, not a mapping", "- seed\n- 1\n", "must be a mapping"),
    ("a scalar", "hello\n", "must be a mapping"),
    ("duplicate key", "seed: 1\nmax_steps: 2\nseed: 3\n", "c.yaml:3: key 'seed' given twice (first at line 1)"),
    ("alias and name both set", "lr: 0.1\nlearning_rate: 0.2\n", "c.yaml:2: 'learning_rate' sets learning_rate"),
    ("python tag", "seed: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ("unknown key with line", "seed: 1\n\ntemprature: 0.5\n", "c.yaml:3: unknown config key 'temprature'"),
    ("bad value with line", "seed: 1\ntop_p: 3\n", "c.yaml:2: top_p: got 3"),
    ("binary garbage", bytes(range(256)), "not UTF-8"),
    ("relation in file", "task_min_terms: 6\ntask_max_terms: 3\n", "task_min_terms (6) must be <= task_max_terms"),
]:
    simple("config", f"yaml {name}", (lambda c: lambda ws: ["train", str(ws.file("c.yaml", c)), out(ws)])(content),
           fragment)

# --- other commands ----------------------------------------------------------------------------------------------
simple("config", "compare --variants non-UTF-8", lambda ws: ["compare", "--variants", str(ws.file("v.yaml", b"a: \xff")),
                                                               "--report-only"], "not UTF-8")
simple("config", "compare --variants duplicate", lambda ws: ["compare", "--variants", str(
    ws.file("v.yaml", "a: {algorithm: grpo}\na: {algorithm: ib_tpo}\n")), "--report-only"], "key 'a' given twice")
simple("config", "compare --variants nested duplicate", lambda ws: ["compare", "--variants", str(
    ws.file("v.yaml", "a:\n  algorithm: grpo\n  algorithm: ib_tpo\n")), "--report-only"], "v.yaml:3: key 'algorithm'")
simple("config", "compare --tokens 0", ["compare", "--tokens", "0"], "--tokens: must be >= 1")
simple("config", "compare unknown preset", ["compare", "--presets", "nope"], "unknown preset 'nope'")
simple("config", "compare sets out_dir", ["compare", "out_dir=x"], "out_dir: set by compare itself")
simple("config", "pretrain unknown key", ["pretrain", "stepz=3"], "unknown pretrain key 'stepz'")
simple("config", "pretrain bad value", ["pretrain", "steps=-1"], "steps: got -1")
simple("config", "score --questions 0", lambda ws: ["score", "--questions", "0", "--out", str(ws.path / "s")],
       "--questions: must be >= 1")
simple("config", "eval --json to a directory", lambda ws: ["eval", "eval_questions=2", "eval_k=1",
                                                           "max_completion_length=4", "--json", str(ws.path)], "")

# --- data --------------------------------------------------------------------------------------------------------
GOOD_ROWS = "".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(12))


def data_case(name: str, content: str | bytes | None, fragment: str, extra: list[str] = (), filename: str = "d.jsonl",
              expect: str = "error"):
    def args(ws: Workspace):
        path = ws.file(filename, content) if content is not None else ws.path / filename
        return [*T, out(ws), f"dataset={path}", "test_size=2", *extra]
    simple("data", name, args, fragment, expect=expect)


data_case("missing file", None, "d.jsonl")
data_case("empty file", "", "")
data_case("not JSON", "hello\nworld\n", "d.jsonl")
data_case("a list row", "[1, 2]\n" + GOOD_ROWS, "d.jsonl")
data_case("no answer column", "".join(json.dumps({"prompt": "q"}) + "\n" for _ in range(5)), "")
data_case("unknown prompt_column", GOOD_ROWS, "nope", ["prompt_column=nope"])
data_case("non-UTF-8 rows", GOOD_ROWS.encode() + b'{"prompt": "\xff", "answer": "1"}\n', "d.jsonl")
data_case("garbage parquet", b"PAR1garbage", "d.parquet", filename="d.parquet")
data_case("prompt longer than the context", json.dumps({"prompt": "x" * 8000, "answer": "1"}) + "\n" + GOOD_ROWS,
          "question", )
data_case("test_size not below rows", GOOD_ROWS, "test_size", ["test_size=50"])
data_case("chat messages with chat_template=never", "".join(json.dumps(
    {"prompt": [{"role": "user", "content": f"q{i}"}], "answer": "1"}) + "\n" for i in range(6)), "chat_template",
    ["chat_template=never"])
data_case("bad layout name", GOOD_ROWS, "dataset_layout", ["dataset_layout=nope"])
data_case("truncated last row", GOOD_ROWS + '{"prompt": "What is', "d.jsonl")
data_case("duplicate ids (renamed a#2, a#3, ... by design)",
          "".join(json.dumps({"id": "a", "prompt": f"q{i}", "answer": "1"}) + "\n" for i in range(6)), "", expect="ok")
simple("data", "eval_datasets file missing", lambda ws: [*T, out(ws), f"dataset={ws.file('d.jsonl', GOOD_ROWS)}",
                                                         f"eval_datasets=[{ws.path / 'nope.jsonl'}]"], "nope.jsonl")
simple("data", "two eval sets with one name", lambda ws: [*T, out(ws), f"dataset={ws.file('d.jsonl', GOOD_ROWS)}",
                                                          f"eval_datasets=[a={ws.file('e.jsonl', GOOD_ROWS)},"
                                                          f"a={ws.file('f.jsonl', GOOD_ROWS)}]"], "named 'a'")
simple("data", "eval: prompt longer than the context", lambda ws: [
    "eval", "eval_k=1", f"eval_datasets=[{ws.file('e.jsonl', json.dumps({'prompt': 'y' * 5000, 'answer': '1'}))}]"],
    "context window")

# --- rewards -----------------------------------------------------------------------------------------------------
REWARDS = '''
import os, sys
def exits(completions, **kw): sys.exit(3)
def exits0(completions, **kw): exit(0)
def raises(completions, **kw): raise ValueError("nope")
def short(completions, **kw): return [1.0]
def strings(completions, **kw): return ["a"] * len(completions)
def nan(completions, **kw): return [float("nan")] * len(completions)
def not_list(completions, **kw): return 3
def kbd(completions, **kw): raise KeyboardInterrupt
def none(completions, **kw): return [None] * len(completions)
NOT_CALLABLE = 3
'''


def reward_case(name: str, spec: str, fragment: str, expect: str = "error", extra: list[str] = ()):
    def args(ws: Workspace):
        ws.file("myrewards.py", REWARDS)
        s = spec.replace("FILE", str(ws.path / "myrewards.py"))
        return [*T, out(ws), f"reward_fn={s}", *extra]
    simple("rewards", name, args, fragment, expect=expect)


reward_case("module not found", "no_such_module:fn", "no_such_module")
reward_case("function not in file", "FILE:missing", "no attribute 'missing'")
reward_case("not callable", "FILE:NOT_CALLABLE", "not callable")
reward_case("calls sys.exit(3)", "FILE:exits", "called exit(3)")
reward_case("calls exit(0)", "FILE:exits0", "called exit(0)")
reward_case("raises", "FILE:raises", "nope")
reward_case("one score too few", "FILE:short", "")
reward_case("strings", "FILE:strings", "")
reward_case("NaN scores", "FILE:nan", "")
reward_case("not a list", "FILE:not_list", "")
reward_case("raises with reward_errors=zero", "FILE:raises", "", expect="ok", extra=["reward_errors=zero"])
reward_case("all None (unscorable)", "FILE:none", "", expect="ok")
reward_case("unknown registered name", "nope", "unknown reward function 'nope'")


@case("rewards", "file with a syntax error", fragment="bad.py")
def _syntax(ws: Workspace):
    ws.file("bad.py", "def fn(:\n")
    return ibtpo([*T, out(ws), f"reward_fn={ws.path / 'bad.py'}:fn"], cwd=ws.path), None

# --- models ------------------------------------------------------------------------------------------------------


def model_case(name: str, make: Callable[[Workspace], str], fragment: str, extra: list[str] = ()):
    simple("models", name, lambda ws: [*T, out(ws), f"model={make(ws)}", *extra], fragment)


def _copy_model(ws: Workspace, drop: str = "", garble: str = "", truncate: str = "") -> str:
    src = BASE / "checkpoints" / "step-000002"
    dst = ws.path / "model"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("trainer_state.pt", "manifest.json"))
    if drop:
        (dst / drop).unlink()
    if garble:
        (dst / garble).write_bytes(b"\x00garbage{")
    if truncate:
        data = (dst / truncate).read_bytes()
        (dst / truncate).write_bytes(data[: len(data) // 3])
    return str(dst)


model_case("path missing", lambda ws: "/no/such/model", "model path not found")
model_case("directory without config.json", lambda ws: str(ws.path), "no config.json")
model_case("garbage config.json", lambda ws: _copy_model(ws, garble="config.json"), "")
model_case("weights missing", lambda ws: _copy_model(ws, drop="model.safetensors"), "")
model_case("weights truncated", lambda ws: _copy_model(ws, truncate="model.safetensors"), "")
model_case("weights garbage", lambda ws: _copy_model(ws, garble="model.safetensors"), "")
model_case("tokenizer missing", lambda ws: _copy_model(ws, drop="tokenizer.json"), "")
model_case("hub id not cached", lambda ws: "someone/not-cached-model", "")
model_case("a file, not a directory", lambda ws: str(ws.file("m.bin", b"x")), "")
model_case("lora targets that do not exist", lambda ws: "testbed", "lora_target_modules", ["lora_rank=2",
                                                                                          "lora_target_modules=[nope]"])
simple("models", "eval: run directory with no checkpoint", lambda ws: ["eval", f"model={ws.path}",
                                                                       "eval_questions=2"], "",
       setup=lambda ws: (ws.path / "checkpoints").mkdir())

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


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@case("disks", "real full disk (small tmpfs) during a checkpoint", fragment="No space left on device")
def _tmpfs_full(ws: Workspace):
    mnt = ws.path / "mnt"
    if not _mount_tmpfs(mnt, "4m"):
        return _skip("cannot mount a tmpfs here")
    try:
        r = mnt / "run"
        proc = ibtpo([*T, f"out_dir={r}", "max_steps=1"])
        left = [p.name for p in (r / "checkpoints").glob(".tmp-*")] if (r / "checkpoints").exists() else []
        problem = f"temporary checkpoint left: {left}" if left else None
        return proc, problem
    finally:
        _umount(mnt)


@case("disks", "real read-only remount mid-run", fragment="Read-only file system")
def _tmpfs_ro(ws: Workspace):
    mnt = ws.path / "mnt"
    if not _mount_tmpfs(mnt, "200m"):
        return _skip("cannot mount a tmpfs here")
    try:
        r = mnt / "run"
        p = popen([*T, f"out_dir={r}", "max_steps=50", "save_every=2"])
        _wait_for(lambda: (r / "checkpoints" / "latest").exists(), 240)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        so, se = p.communicate(timeout=240)
        proc = subprocess.CompletedProcess(p.args, p.returncode, so, se)
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], capture_output=True)
        again = ibtpo(["train", "--resume", str(r), "max_steps=5"])
        return proc, None if again.returncode == 0 else f"resume after remount failed: {again.stderr[-300:]}"
    finally:
        _umount(mnt)


def _skip(why: str):
    return subprocess.CompletedProcess([], -1, "", f"SKIPPED: {why}"), "skipped"


def _wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


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


# --------------------------------------------------------------------------------------------------------------------


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
    elif proc.returncode == 2 and len(lines) == 1 and not tb and c.fragment in lines[0]:
        res["outcome"] = "one_line"
    else:
        res["outcome"] = "failed"
    if res["outcome"] == "failed":
        res["stderr_tail"] = err[-1500:]
    return res


def main() -> None:
    global BASE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="run only cases whose category/name contains one of these "
                    "comma-separated strings")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "fault_matrix.json"))
    args = ap.parse_args()
    wanted = [w for w in args.only.split(",")]
    cases = [c for c in CASES if any(w in f"{c.category}/{c.name}" for w in wanted)]
    with tempfile.TemporaryDirectory() as tmp:
        BASE = make_base(Path(tmp))

        def one(i_c):
            i, c = i_c
            ws = Workspace(Path(tmp) / f"case{i:03d}")
            ws.path.mkdir()
            t0 = time.time()
            try:
                proc, problem = c.run(ws)
            except subprocess.TimeoutExpired as exc:
                proc, problem = subprocess.CompletedProcess(exc.cmd, -9, "", "TIMEOUT"), None
            res = classify(c, proc, problem)
            res["seconds"] = round(time.time() - t0, 1)
            print(f"[{i + 1}/{len(cases)}] {res['outcome']:<13} {c.category}/{c.name}: {res['message'][:150]}",
                  flush=True)
            return res

        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one, enumerate(cases)))
    tried = [r for r in results if r["outcome"] != "skipped"]
    summary = {
        "tried": len(tried),
        "by_category": {cat: sum(r["category"] == cat for r in tried) for cat in dict.fromkeys(r["category"] for r in tried)},
        "expected_errors": sum(r["expect"] == "error" for r in tried),
        "one_line_exit_2": sum(r["outcome"] == "one_line" for r in tried),
        "expected_success": sum(r["expect"] == "ok" for r in tried),
        "succeeded": sum(r["outcome"] == "ok" for r in tried),
        "failed": sum(r["outcome"] == "failed" for r in tried),
        "tracebacks": sum(r["traceback"] for r in tried),
        "lost_corrupted_or_stuck_runs": sum(r["outcome"] == "lost_or_stuck" for r in tried),
        "skipped": [r["name"] for r in results if r["outcome"] == "skipped"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "cases": results}, indent=1))
    print(json.dumps(summary, indent=1))
    for r in results:
        if r["outcome"] in ("failed", "lost_or_stuck"):
            print(f"--- {r['category']}/{r['name']} ({r['outcome']}, rc {r['rc']}): {r.get('problem', '')}\n"
                  f"{r.get('stderr_tail', '')[-600:]}")


if __name__ == "__main__":
    main()
