"""Bad input and faults through the CLI: one line on stderr, exit code 2, no traceback, nothing saved lost.

Table-driven bad inputs run ``ibtpo.cli.main`` in this process (fast); faults that need a real process (SIGKILL, a
full disk in the middle of a checkpoint write, a second process on the run directory) run the CLI in a subprocess,
with the fault injected by patching the writer in that subprocess. ``experiments/fault_matrix.py`` runs the full
matrix (180 cases) and counts the outcomes.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from ibtpo.cli import main

TINY = ["algorithm=grpo", "questions_per_step=2", "num_generations=2", "eval_questions=4", "eval_k=1",
        "ib_probe_every=0", "plots=false", "tensorboard=false", "progress=false", "max_completion_length=16",
        "threads=1", "eval_greedy=false", "eval_every=0"]
CLI = "import sys; from ibtpo.cli import main; sys.exit(main(sys.argv[1:]))"


def cli(args, prelude=""):
    return subprocess.run([sys.executable, "-c", prelude + "\n" + CLI, *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("ibtpo: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def steps(run):
    return [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def digest(run):
    files = [run / "config.yaml", *sorted((run / "checkpoints").rglob("*"))]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished 2-step run with checkpoints step-000001 and step-000002."""
    run = tmp_path_factory.mktemp("saved") / "run"
    proc = cli(["train", f"out_dir={run}", "max_steps=2", "save_every=1", *TINY])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture
def run_copy(saved_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(saved_run, dst)
    return dst


def _write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


BAD = [  # (args built from tmp_path, fragment of the one error line)
    (lambda t: ["train", _write(t, "c.yaml", b"seed: \xff\n")], "c.yaml:1: not UTF-8 text"),
    (lambda t: ["train", _write(t, "c.yaml", "seed: 1\nseed: 2\n")], "c.yaml:2: key 'seed' given twice"),
    (lambda t: ["train", *TINY, "iib_keep=3"], "iib_keep (3) must be <= the group size G=2"),
    (lambda t: ["train", *TINY, "sampler=ib", "tree_b0=2", "tree_l=2", "tree_min_room=17"], "tree_min_room (17) must be <= max_completion_length (16)"),
    (lambda t: ["train", *TINY, "mini_batch_size=5"], "mini_batch_size (5) must be <= the rollout batch"),
    (lambda t: ["train", *TINY, "device=cuda:9"], "device='cuda:9'"),
    (lambda t: ["train", *TINY, f"out_dir={_write(t, 'f', 'x')}/run"], "out_dir"),
    (lambda t: ["train", *TINY, f"out_dir={t / 'r'}", "max_completion_length=300"], "context window of 256 tokens"),
    (lambda t: ["train", *TINY, f"out_dir={t / 'r'}", "test_size=1", f"dataset={_write(t, 'd.jsonl', ''.join(json.dumps({'prompt': p, 'answer': '1'}) + chr(10) for p in ['x' * 900, 'a', 'b']))}"],
     "question d-0: its prompt is 900 tokens"),
    (lambda t: ["train", *TINY, f"out_dir={t / 'r'}", "max_steps=1",
                f"reward_fn={_write(t, 'rw.py', 'import sys' + chr(10) + 'def fn(completions, **kw): sys.exit(3)')}:fn"],
     "reward function"),
    (lambda t: ["train", "--resume", t], "no config.yaml there"),
]


@pytest.mark.parametrize("make_args,fragment", BAD)
def test_bad_input_is_one_line_with_exit_2(tmp_path, capsys, make_args, fragment):
    code = main([str(a) for a in make_args(tmp_path)])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and fragment in line, line


def test_reward_exit_names_the_exit_code(tmp_path, capsys):
    rw = _write(tmp_path, "rw.py", "import sys\ndef fn(completions, **kw): sys.exit(3)\n")
    assert main(["train", *TINY, f"out_dir={tmp_path / 'r'}", "max_steps=1", f"reward_fn={rw}:fn"]) == 2
    assert "called exit(3)" in one_line(capsys.readouterr().err)


def test_resume_past_bad_latest_truncated_state_torn_metrics_and_leftover_tmp(run_copy, capsys):
    ck = run_copy / "checkpoints"
    (ck / "latest").write_text("garbage")
    state = ck / "step-000002" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with open(run_copy / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "rew')
    (ck / ".tmp-step-000003").mkdir()
    assert main(["train", "--resume", str(run_copy), "max_steps=3"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "using the newest complete checkpoint, step-000001" in err and ".tmp-step-000003" in err
    assert steps(run_copy) == [0, 1, 2, 3] and not (ck / ".tmp-step-000003").exists()


@pytest.mark.parametrize("args,fragment", [
    (lambda r: ["train", *TINY, f"out_dir={r}", "overwrite=true", "model=/no/such/model"], "model path not found"),
    (lambda r: ["train", *TINY, f"out_dir={r}", "overwrite=true", "max_completion_length=300"], "context window"),
    (lambda r: ["train", *TINY, f"out_dir={r}"], "already holds a run"),
    (lambda r: (open(r / "metrics.jsonl", "a").write("garbage\n{}\n"), ["train", "--resume", r, "max_steps=3"])[1],
     "metrics.jsonl:4: not a metrics record"),
    (lambda r: ([(r / "checkpoints" / f"step-00000{n}" / "trainer_state.pt").write_bytes(b"x") for n in (1, 2)],
                ["train", "--resume", r])[1], "no checkpoint to resume from"),
])
def test_refused_commands_leave_the_saved_run_as_it_was(run_copy, capsys, args, fragment):
    argv = [str(a) for a in args(run_copy)]
    before = digest(run_copy)
    assert main(argv) == 2
    assert fragment in one_line(capsys.readouterr().err)
    assert digest(run_copy) == before  # checkpoints and config.yaml untouched


def test_second_process_on_a_run_directory_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; from ibtpo.training.lock import RunLock; "
                               f"RunLock({str(run)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = cli(["train", *TINY, f"out_dir={run}", "max_steps=1"])
        assert proc.returncode == 2
        assert f"in use by another ibtpo process (pid {holder.pid}" in one_line(proc.stderr)
        assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


FULL_AT_SECOND_SAVE = """
import errno, torch
_save, n = torch.save, [0]
def save(obj, f, *a, **k):
    n[0] += 1
    if n[0] == 2:
        open(f, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos\\nPytorchStreamWriter failed writing file data/0: file write failed")
    return _save(obj, f, *a, **k)
torch.save = save
"""
KILL_IN_FIRST_SAVE = """
import os, signal, torch
def save(obj, f, *a, **k):
    open(f, "wb").write(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
"""


@pytest.mark.slow
def test_full_disk_during_checkpoint_then_resume(tmp_path):
    run = tmp_path / "run"
    proc = cli(["train", *TINY, f"out_dir={run}", "max_steps=2", "save_every=1"], prelude=FULL_AT_SECOND_SAVE)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert "could not write checkpoint" in line and "file write failed" in line and "step-000001 is kept" in line
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the failed write gave its space back
    res = cli(["train", "--resume", run])
    assert res.returncode == 0, res.stderr[-3000:]
    assert steps(run) == [0, 1, 2]


@pytest.mark.slow
def test_kill_during_first_checkpoint_write_does_not_leave_a_stuck_run(tmp_path):
    run = tmp_path / "run"
    args = ["train", *TINY, f"out_dir={run}", "max_steps=1"]
    proc = cli(args, prelude=KILL_IN_FIRST_SAVE)
    assert proc.returncode == -9 and list((run / "checkpoints").glob(".tmp-*"))
    resumed = cli(["train", "--resume", run])
    assert resumed.returncode == 2 and "start the run afresh" in one_line(resumed.stderr)
    again = cli(args)  # a plain re-run is accepted: nothing complete was saved
    assert again.returncode == 0, again.stderr[-3000:]
    assert steps(run) == [0, 1] and not list((run / "checkpoints").glob(".tmp-*"))
