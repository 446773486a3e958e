"""Fault matrix cases of issue 27: the plugin boundary (wrong user components), non-finite values, calls that never
return, SIGTERM, resume changes that cannot be continued, and exact continuation after SIGKILL/SIGTERM.

Components come from ``tests/fixtures/bad_components.py`` and ``tests/fixtures/plugins/``; every case goes through
the real CLI in a subprocess."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

from fault_harness import (CASES, ROOT, T, TINY, Case, Workspace, _wait_for, ibtpo, on_saved_run, out, popen,
                           simple)
from safetensors.torch import load_file

FIX = ROOT / "tests" / "fixtures"
BAD = FIX / "bad_components.py"
PLUG = FIX / "plugins"
R = lambda r: ["train", "--resume", str(r), "--allow-config-change", "max_steps=3"]  # noqa: E731


def train_case(category: str, name: str, settings: list[str], fragment: str, prelude: str = "") -> None:
    simple(category, name, lambda ws: [*T, out(ws), *settings], fragment, prelude=prelude)


# --- components: estimators, losses, samplers, rules, extensions, plugins, presets ------------------------------
for fn, fragment in [
    ("est_shape", "returned a tensor of shape (4,) of float32, finite; expected advantages"),
    ("est_none", "returned None; expected advantages"), ("est_scalar", "returned a 0-d tensor"),
    ("est_int", "of int64; expected advantages"), ("est_raises", "raised ValueError: my estimator is broken at "),
    ("est_positional", "cannot be called as the trainer calls it"), ("est_exits", "called exit(3)"),
    ("not_callable", "is an int (5), not a function"), ("no_such_name", "has no attribute 'no_such_name'"),
]:
    train_case("components", f"estimator {fn}", [f"adv_estimator={BAD}:{fn}"], fragment)
for fn, fragment in [
    ("loss_vector", "returned a tensor of shape"), ("loss_nograd", "does not require grad"),
    ("loss_bare", "expected a pair (loss: 0-d tensor, metrics: dict)"),
    ("loss_raises", "raised RuntimeError: my loss is broken at "), ("loss_one_arg", "too many positional arguments"),
    ("not_callable", "is an int (5), not a function"),
]:
    train_case("components", f"policy loss {fn}", [f"policy_loss={BAD}:{fn}"], fragment)
for fn, fragment in [("sampler_raises", "raised KeyError"), ("sampler_unrewarded", "without a reward"),
                     ("sampler_three_args", "missing a required argument: 'extra'"),
                     ("not_callable", "has grow = an int (5)")]:
    train_case("components", f"sampler {fn}", [f"sampler={BAD}:{fn}"], fragment)
RULE = [f"plugins=[{PLUG / 'bad_rule.py'}]", "sampler=bad_rule_sampler", "adv_estimator=tree_grpo", "tree_b0=2",
        "tree_l=2"]
for mode, fragment in [("garbage", "branch rule 'bad_rule' returned a str"),
                       ("offset", "returned token offset 12 in a node of"),
                       ("raises", "raised IndexError: my rule is broken at ")]:
    train_case("components", f"branch rule {mode}", RULE, fragment,
               prelude=f"import os; os.environ['IBTPO_TEST_RULE'] = {mode!r}")
for mode, fragment in [("factory", "factory returned an int (7)"),
                       ("hook", ".after_rollout raised ValueError: my extension hook is broken at "),
                       ("adv", "adjust_advantages returned a tensor of shape")]:
    train_case("components", f"trainer extension {mode}", [f"plugins=[{PLUG / 'bad_extension.py'}]"], fragment,
               prelude=f"import os; os.environ['IBTPO_TEST_EXT'] = {mode!r}")
for plugin, fragment in [("int_key.py", "name 3: a name must be a non-empty string"),
                         ("not_callable.py", "policy loss 'my_loss' is an int (42)"),
                         ("raises_on_import.py", "RuntimeError: plugin setup failed at "),
                         ("bad_preset.py", "is a dict, not an ibtpo Preset")]:
    train_case("components", f"plugin {plugin}", [f"plugins=[{PLUG / plugin}]"], fragment)
    simple("components", f"ibtpo components with plugin {plugin}", ["components", f"plugins=[{PLUG / plugin}]"],
           fragment)
train_case("components", "reward raising deep in the user's helper", [f"reward_fn={BAD}:reward_raises_deep"],
           "reward_raises_deep raised on question")

# --- non-finite values ---------------------------------------------------------------------------------------------


def _float_fields() -> list[str]:
    import sys

    sys.path.insert(0, str(ROOT / "src"))
    from ibtpo.config.schema import TrainConfig

    return [n for n, f in TrainConfig.model_fields.items() if f.annotation in (float, float | None)]


for field in _float_fields():  # every float setting: inf refused at validation
    train_case("non-finite", f"{field}=inf", [f"{field}=inf"], f"{field}: got 'inf'; allowed: a finite")
for setting in ("kv_budget_gib=1e400", "beta=.nan", "learning_rate=-.inf", "temperature=1e400"):
    train_case("non-finite", setting, [setting], f"{setting.split('=')[0]}: got")
train_case("non-finite", "estimator returns NaN", [f"adv_estimator={BAD}:est_nan"], "non-finite value(s)")
train_case("non-finite", "loss is NaN", [f"policy_loss={BAD}:loss_nan"], "1 non-finite value(s)")
train_case("non-finite", "gradient is NaN (finite loss)", [f"policy_loss={BAD}:loss_nan_grad"],
           "gradient norm is nan before the optimizer step")
simple("non-finite", "beta=1e38 (finite): trains, gradients clipped", lambda ws: [*T, out(ws), "beta=1e38", "max_steps=4"],
       expect="ok")
on_saved_run("non-finite", "resume with a NaN estimator: saved state untouched",
             lambda r: [*R(r), f"adv_estimator={BAD}:est_nan"], "step 3: advantage estimator")
on_saved_run("non-finite", "resume with a NaN gradient: saved state untouched",
             lambda r: [*R(r), f"policy_loss={BAD}:loss_nan_grad"], "step 3: gradient norm is nan")

# --- calls that never return ------------------------------------------------------------------------------------
train_case("timeouts", "reward function sleeps", [f"reward_fn={BAD}:reward_sleeps", "reward_timeout_s=2"],
           "did not return within reward_timeout_s=2 s on question")
train_case("timeouts", "estimator sleeps", [f"adv_estimator={BAD}:est_sleeps", "component_timeout_s=2"],
           "did not return within component_timeout_s=2 s")
train_case("timeouts", "policy loss sleeps", [f"policy_loss={BAD}:loss_sleeps", "component_timeout_s=2"],
           "did not return within component_timeout_s=2 s")
on_saved_run("timeouts", "resume with a sleeping reward: saved state untouched",
             lambda r: [*R(r), f"reward_fn={BAD}:reward_sleeps", "reward_timeout_s=2"], "reward_timeout_s=2")

# --- resume changes that cannot be continued ------------------------------------------------------------------
for setting, fragment in [("lora_rank=4", "lora_rank: 0 -> 4"), ("model=testbed-chain", "model: "),
                          ("iib_keep=2", "holds no state of the trainer extension"),
                          ("sampler=iib", "its optimizer state does not fit the model"),
                          ("iib_latent_dim=8", "iib_latent_dim: 16 -> 8")]:
    extra = ["algorithm=iib_lpo"] if setting == "sampler=iib" else []
    on_saved_run("resume", f"--allow-config-change {setting}", lambda r, s=setting, e=extra: [*R(r), s, *e],
                 fragment)

# --- SIGTERM ----------------------------------------------------------------------------------------------------
TERM_IN_SAVE = '''
import os, signal, torch
_save, n = torch.save, [0]
def save(obj, f, *a, **k):
    n[0] += 1
    if n[0] == {at}:
        os.kill(os.getpid(), signal.SIGTERM)
    return _save(obj, f, *a, **k)
torch.save = save
'''
TERM_IN_EVAL = '''
import os, signal, ibtpo.training.trainer as t
_ev, n = t.evaluate_sets, [0]
def ev(*a, **k):
    n[0] += 1
    if n[0] == {at}:
        os.kill(os.getpid(), signal.SIGTERM)
    return _ev(*a, **k)
t.evaluate_sets = ev
'''


def term_case(name: str, prelude: str | None, delay: float | None = None, steps: int = 3) -> None:
    """SIGTERM a run (injected, or after `delay` s): one line, exit 143, complete checkpoints kept; --resume finishes."""
    def run(ws: Workspace):
        r = ws.path / "run"
        args = [*T, f"out_dir={r}", f"max_steps={steps}", "save_every=1", "eval_every=2"]
        if prelude is not None:
            first = ibtpo(args, prelude=prelude)
        else:  # `delay` s after the first checkpoint (a fixed delay from the start may fall into the imports)
            p = popen(args)
            _wait_for(lambda: (r / "checkpoints" / "latest").exists(), 300)
            time.sleep(delay)
            p.send_signal(signal.SIGTERM)
            so, se = p.communicate()
            first = subprocess.CompletedProcess(p.args, p.returncode, so, se)
        if first.returncode == 0:
            return first, "finished before the signal"
        bad = [c.name for c in (r / "checkpoints").glob("step-*") if not (c / "manifest.json").exists()]
        if bad:
            return first, f"incomplete checkpoints left: {bad}"
        resume = any((r / "checkpoints").glob("step-*"))
        again = ibtpo(["train", "--resume", str(r)] if resume else [*args, "overwrite=true"])
        if again.returncode != 0:
            return first, f"could not continue: {again.stderr.strip().splitlines()[-1:]}"
        return first, None
    CASES.append(Case("signals", name, run, "interrupted", "interrupted (SIGTERM); the last checkpoint is kept"))


for at in (1, 2):
    term_case(f"SIGTERM inside checkpoint write #{at}", TERM_IN_SAVE.replace("{at}", str(at)))
term_case("SIGTERM inside an evaluation", TERM_IN_EVAL.replace("{at}", "2"))
for delay in (0.0, 0.7, 2.0):
    term_case(f"SIGTERM {delay:g} s after the first checkpoint", None, delay, steps=200)

# --- exact continuation after a kill --------------------------------------------------------------------------
EXACT = [*T[:-2], "max_steps=6", "save_every=2", "eval_every=3"]
_REF: dict[str, Path] = {}
_REF_LOCK = threading.Lock()


def _reference(ws: Workspace) -> Path:
    """An uninterrupted 6-step run (made once)."""
    with _REF_LOCK:
        if "run" not in _REF:
            r = ws.path.parent / "exact_reference"
            proc = ibtpo([*EXACT, f"out_dir={r}"])
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            _REF["run"] = r
        return _REF["run"]


def _stream(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(ln).items() if not k.startswith("perf/")}
            for ln in (run / "metrics.jsonl").read_text().splitlines()]


def exact_case(name: str, prelude: str | None = None, delay: float | None = None,
               sig: int = signal.SIGKILL) -> None:
    """Interrupt a 6-step run, --resume it: the metrics stream (timings aside) and the final weights must equal those
    of the uninterrupted run exactly."""
    def run(ws: Workspace):
        ref = _reference(ws)
        r = ws.path / "run"
        args = [*EXACT, f"out_dir={r}"]
        if prelude is not None:
            ibtpo(args, prelude=prelude)
        else:
            p = popen(args)
            _wait_for(lambda: (r / "checkpoints" / "latest").exists(), 300)
            time.sleep(delay)
            p.send_signal(sig)
            p.communicate()
        again = ibtpo(["train", "--resume", str(r)] if any((r / "checkpoints").glob("step-*")) else args)
        if again.returncode != 0:
            return again, f"resume failed: {again.stderr.strip().splitlines()[-1:]}"
        if _stream(r) != _stream(ref):
            return again, "metrics stream differs from the uninterrupted run"
        wa, wb = (load_file(x / "checkpoints" / "step-000006" / "model.safetensors") for x in (ref, r))
        if any(not (wa[k] == wb[k]).all() for k in wa):
            return again, "final weights differ from the uninterrupted run"
        return again, None
    CASES.append(Case("exactness", name, run, "ok"))


KILL_IN_SAVE = TERM_IN_SAVE.replace("signal.SIGTERM)", "signal.SIGKILL)")
KILL_IN_STEP = '''
import os, signal, torch
_step, n = torch.optim.AdamW.step, [0]
def step(self, *a, **k):
    n[0] += 1
    if n[0] == {at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, *a, **k)
torch.optim.AdamW.step = step
'''
exact_case("SIGKILL inside checkpoint write #2, resume = uninterrupted", KILL_IN_SAVE.replace("{at}", "2"))
exact_case("SIGKILL inside optimizer step #3, resume = uninterrupted", KILL_IN_STEP.replace("{at}", "3"))
exact_case("SIGKILL inside optimizer step #5, resume = uninterrupted", KILL_IN_STEP.replace("{at}", "5"))
exact_case("SIGTERM inside checkpoint write #2, resume = uninterrupted", TERM_IN_SAVE.replace("{at}", "2"))
exact_case("SIGTERM 1 s after the first checkpoint, resume = uninterrupted", None, 1.0, signal.SIGTERM)
exact_case("SIGKILL 1.5 s after the first checkpoint, resume = uninterrupted", None, 1.5, signal.SIGKILL)
_ = TINY
