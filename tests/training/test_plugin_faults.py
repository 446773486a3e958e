"""Wrong user components, non-finite values, hanging calls and SIGTERM through the real CLI: one line on stderr,
exit code 2 (143 for SIGTERM), the run's saved state untouched (``ibtpo.core.guard``, ``ibtpo.core.timeouts``,
``ibtpo.core.interrupts``). The components are in ``tests/fixtures/bad_components.py`` and ``tests/fixtures/plugins``."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ibtpo.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BAD = FIXTURES / "bad_components.py"
TINY = ["algorithm=grpo", "questions_per_step=2", "num_generations=2", "eval_questions=2", "eval_k=1",
        "ib_probe_every=0", "plots=false", "tensorboard=false", "progress=false", "max_completion_length=16",
        "threads=1", "eval_greedy=false", "eval_every=0"]


def _one_line(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ibtpo: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def _train(tmp_path, *args) -> int:
    return main(["train", *TINY, "max_steps=1", f"out_dir={tmp_path / 'run'}", *map(str, args)])


def snapshot(run: Path) -> dict[str, str]:
    return {str(f.relative_to(run)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((run / "checkpoints").rglob("*")) if f.is_file()}


CASES = [  # (setting, fragment of the one line)
    (f"adv_estimator={BAD}:est_shape", "step 1: advantage estimator '{bad}:est_shape' returned a tensor of shape (4,)"),
    (f"adv_estimator={BAD}:est_none", "advantage estimator '{bad}:est_none' returned None; expected advantages"),
    (f"adv_estimator={BAD}:est_scalar", "returned a 0-d tensor of float32, finite; expected advantages"),
    (f"adv_estimator={BAD}:est_int", "of int64; expected advantages"),
    (f"adv_estimator={BAD}:est_nan", "non-finite value(s); expected advantages (rows x response columns, like "
                                     "response_mask) with finite values"),
    (f"adv_estimator={BAD}:est_raises", "raised ValueError: my estimator is broken at {bad}:"),
    (f"adv_estimator={BAD}:est_positional", "cannot be called as the trainer calls it"),
    (f"adv_estimator={BAD}:est_exits", "called exit(3)"),
    (f"adv_estimator={BAD}:not_callable", "is an int (5), not a function or other callable"),
    (f"policy_loss={BAD}:loss_vector", "policy loss '{bad}:loss_vector' returned a tensor of shape"),
    (f"policy_loss={BAD}:loss_nograd", "does not require grad"),
    (f"policy_loss={BAD}:loss_bare", "expected a pair (loss: 0-d tensor, metrics: dict)"),
    (f"policy_loss={BAD}:loss_nan", "policy loss '{bad}:loss_nan' returned a 0-d tensor of float32, 1 non-finite"),
    (f"policy_loss={BAD}:loss_nan_grad", "step 1: gradient norm is nan before the optimizer step"),
    (f"policy_loss={BAD}:loss_raises", "raised RuntimeError: my loss is broken at {bad}:"),
    (f"policy_loss={BAD}:loss_one_arg", "too many positional arguments"),
    (f"sampler={BAD}:sampler_raises", "sampler '{bad}:sampler_raises' raised KeyError"),
    (f"sampler={BAD}:sampler_unrewarded", "leaves of question train-0 without a reward"),
    (f"sampler={BAD}:sampler_three_args", "missing a required argument: 'extra'"),
    (f"plugins=[{FIXTURES / 'plugins' / 'int_key.py'}]", "advantage estimator name 3: a name must be a non-empty "
                                                        "string"),
    (f"plugins=[{FIXTURES / 'plugins' / 'not_callable.py'}]", "policy loss 'my_loss' is an int (42)"),
    (f"plugins=[{FIXTURES / 'plugins' / 'raises_on_import.py'}]", "RuntimeError: plugin setup failed at "),
    (f"plugins=[{FIXTURES / 'plugins' / 'bad_preset.py'}]", "is a dict, not an ibtpo Preset"),
]
@pytest.mark.parametrize("setting, fragment", [pytest.param(s, f, id=s.rsplit("/", 1)[-1]) for s, f in CASES])
def test_wrong_component_ends_in_one_line(tmp_path, capsys, setting, fragment):
    assert _train(tmp_path, setting) == 2
    line = _one_line(capsys)
    assert fragment.format(bad=BAD) in line


def test_extension_faults(tmp_path, capsys, monkeypatch):
    plugin = f"plugins=[{FIXTURES / 'plugins' / 'bad_extension.py'}]"
    for mode, fragment in [("factory", "trainer extension 'test_bad_extension' factory returned an int (7)"),
                           ("hook", "trainer extension 'test_bad_extension'.after_rollout raised ValueError: my "
                                    "extension hook is broken at "),
                           ("adv", "adjust_advantages returned a tensor of shape")]:
        monkeypatch.setenv("IBTPO_TEST_EXT", mode)
        assert _train(tmp_path, plugin, "overwrite=true") == 2
        assert fragment in _one_line(capsys)


def test_timeouts_name_the_function(tmp_path, capsys):
    t0 = time.monotonic()
    assert _train(tmp_path, f"adv_estimator={BAD}:est_sleeps", "component_timeout_s=1") == 2
    assert f"advantage estimator '{BAD}:est_sleeps' did not return within component_timeout_s=1 s" in _one_line(capsys)
    assert _train(tmp_path, f"reward_fn={BAD}:reward_sleeps", "reward_timeout_s=1", "overwrite=true") == 2
    assert (f"reward function {BAD}:reward_sleeps did not return within reward_timeout_s=1 s on question "
            in _one_line(capsys))
    assert time.monotonic() - t0 < 120  # each stopped after ~1 s, not after the 600 s sleeps


def test_non_finite_failure_keeps_the_saved_state(tmp_path, capsys):
    """A resumed run whose estimator turns NaN stops at step 2 before the optimizer step: no checkpoint is written,
    the step-1 checkpoint is byte for byte the same, and the run resumes afterwards."""
    run = tmp_path / "run"
    assert _train(tmp_path, "save_every=1") == 0
    capsys.readouterr()
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--allow-config-change", "max_steps=2",
                 f"adv_estimator={BAD}:est_nan"]) == 2
    assert "step 2: advantage estimator" in _one_line(capsys)
    assert snapshot(run) == before
    assert main(["train", "--resume", str(run), "max_steps=2"]) == 0
    assert (run / "checkpoints" / "step-000002").is_dir()


def test_traceback_on_request(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IBTPO_TRACEBACK", "1")
    assert _train(tmp_path, f"adv_estimator={BAD}:est_raises") == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "my estimator is broken" in err
    assert f'File "{BAD}"' in err  # the user's own frame is in the chained trace
    assert err.strip().splitlines()[-1].startswith("ibtpo: error: step 1: advantage estimator")


def test_resume_refuses_a_change_that_cannot_be_continued(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tmp_path) == 0
    capsys.readouterr()
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--allow-config-change", "lora_rank=4", "max_steps=2"]) == 2
    line = _one_line(capsys)
    assert "cannot be continued from the checkpoint: lora_rank: 0 -> 4" in line
    assert main(["train", "--resume", str(run), "--allow-config-change", "iib_keep=2", "max_steps=2"]) == 2
    assert "holds no state of the trainer extension" in _one_line(capsys)
    assert snapshot(run) == before


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ibtpo.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = _cli(["train", *TINY, "max_steps=100000", "save_every=1", f"out_dir={run}"])
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-000002").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("ibtpo: error:")]
    assert lines == ["ibtpo: error: interrupted (SIGTERM); the last checkpoint is kept"] and "Traceback" not in err
    kept = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    assert kept and all((run / "checkpoints" / k / "manifest.json").exists() for k in kept)
    last = int(kept[-1].split("-")[1])
    done = _cli(["train", "--resume", str(run), f"max_steps={last + 1}"])
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-2000:]
    assert (run / "checkpoints" / f"step-{last + 1:06d}").is_dir()


@pytest.mark.distributed
def test_sigterm_under_torchrun_one_line_per_rank(tmp_path):
    """torchrun forwards SIGTERM to the ranks: each ends with one line naming it and no traceback of ibtpo code
    (torchrun's own launcher prints its SignalException trace, torch's code); the checkpoints are kept."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ibtpo.cli",
           "train", "questions_per_step=4", "num_generations=4", *TINY[2:], "max_completion_length=40",
           "save_every=1", "max_steps=100000", f"out_dir={run}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / "step-000002").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = sorted(ln for ln in err.splitlines() if ln.startswith("ibtpo: error:"))
    assert lines == [f"ibtpo: error: rank {r}: interrupted (SIGTERM); the last checkpoint is kept" for r in (0, 1)], \
        err[-3000:]
    assert "/ibtpo/" not in "".join(ln for ln in err.splitlines() if ln.strip().startswith("File ")), err[-3000:]
    kept = sorted((run / "checkpoints").glob("step-*"))
    assert kept and all((k / "manifest.json").exists() for k in kept)
