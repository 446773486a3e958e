"""The public API: the version, the docs' example (run as written), user components registered from Python and
named from the command line as module:name or through plugins, without editing the package."""

import json
import re
import textwrap
from pathlib import Path

import pytest

import ibtpo
from ibtpo.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
TINY = ["max_steps=1", "questions_per_step=4", "num_generations=4", "eval_questions=8", "eval_k=1",
        "ib_probe_every=0", "tensorboard=false", "plots=false", "progress=false", "threads=1"]


@pytest.fixture(autouse=True)
def fresh_registries(monkeypatch):
    """What a test registers is gone after it (registries are process-wide)."""
    from ibtpo.rewards import functions as reward_fns
    from ibtpo.algos.advantages import ADV_ESTIMATORS

    ADV_ESTIMATORS.names()  # the built-ins first
    reward_fns.known_rewards()
    monkeypatch.setattr(ADV_ESTIMATORS, "_items", dict(ADV_ESTIMATORS._items))
    monkeypatch.setattr(ADV_ESTIMATORS, "_options", dict(ADV_ESTIMATORS._options))
    monkeypatch.setattr(reward_fns, "REWARD_FUNCTIONS", dict(reward_fns.REWARD_FUNCTIONS))


def test_version_and_lazy_exports():
    assert re.fullmatch(r"\d+\.\d+\.\d+", ibtpo.__version__)
    assert {"train", "evaluate", "score", "configure", "register_estimator", "register_reward"} <= set(dir(ibtpo))
    assert ibtpo.TreeShape(b0=4, rounds=9).group_size == 12
    with pytest.raises(AttributeError):
        ibtpo.no_such_thing  # noqa: B018


def test_docs_example_runs_a_user_estimator_and_reward_end_to_end(tmp_path):
    code = re.search(r"## Your own estimator.*?```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    namespace = {"OUT_DIR": str(tmp_path / "run")}
    exec(compile(code, str(DOCS), "exec"), namespace)
    from ibtpo.algos.advantages import ADV_ESTIMATORS
    from ibtpo.rewards import functions as reward_fns

    assert ADV_ESTIMATORS.get("centred_only") is namespace["centred_only"]
    assert reward_fns.REWARD_FUNCTIONS["any_digit"] is namespace["any_digit"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert len(steps) == 2
    # the testbed policy writes digits in nearly every completion: the user's reward, not the sum check, was used
    assert all(r["reward/mean"] > 0.9 for r in steps)
    cfg = ibtpo.configure(out_dir=str(tmp_path / "run"), adv_estimator="centred_only", reward_fn="any_digit")
    assert cfg.adv_estimator == "centred_only"
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "adv_estimator: centred_only" in saved and "reward_fn: any_digit" in saved


PLUGIN = '''
import torch
from ibtpo.algos.advantages import register_adv_est

CALLS = []

def doubled_grpo(*, rewards, response_mask, group_ids, **_):
    CALLS.append(int(rewards.numel()))
    centred = rewards.float() - rewards.float().mean()
    return 2.0 * centred[:, None] * response_mask.float()

def always_half(prompts, completions, completion_ids=None, **columns):
    return [0.5 for _ in completions]

@register_adv_est("plugin_zero")
def plugin_zero(*, response_mask, **_):
    return torch.zeros_like(response_mask.float())
'''


def test_cli_module_name_components_and_plugins(tmp_path, capsys):
    plugin = tmp_path / "my_parts.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    out = tmp_path / "cli_run"
    rc = main(["train", f"out_dir={out}", "algorithm=grpo", f"adv_estimator={plugin}:doubled_grpo",
               f"reward_fn={plugin}:always_half", *TINY])
    assert rc == 0
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "reward/mean" in line]
    assert rec and rec[0]["reward/mean"] == 0.5  # the user's reward
    from ibtpo.algos.advantages import ADV_ESTIMATORS

    estimator = ADV_ESTIMATORS.get(f"{plugin}:doubled_grpo")
    assert estimator.__module__.startswith("ibtpo_user_my_parts")
    assert estimator.__globals__["CALLS"] == [16]  # called once, on the step's 4 x 4 trajectories

    out2 = tmp_path / "plugin_run"
    rc = main(["train", f"out_dir={out2}", "algorithm=grpo", f"plugins=[{plugin}]", "adv_estimator=plugin_zero",
               *TINY])
    assert rc == 0
    rec = [json.loads(line) for line in (out2 / "metrics.jsonl").read_text().splitlines() if "reward/mean" in line]
    assert rec[0]["critic/advantages/mean"] == 0.0  # the plugin's estimator ran


@pytest.mark.parametrize("field, value, expect", [
    ("adv_estimator", "nope", "adv_estimator: unknown advantage estimator 'nope'; known: "),
    ("sampler", "nope", "sampler: unknown sampler 'nope'; known: entropy, fixed_width, ib, iib, independent, random"),
    ("policy_loss", "no_module_here:fn", "policy_loss: policy loss 'no_module_here:fn': cannot import no_module_here"),
    ("algorithm", "nope", "algorithm: unknown algorithm 'nope'"),
    ("plugins", "[no/such/file.py]", "plugins: plugin 'no/such/file.py:__name__': file no/such/file.py not found"),
])
def test_bad_component_names_fail_in_one_line(tmp_path, capsys, field, value, expect):
    rc = main(["train", f"out_dir={tmp_path / 'r'}", f"{field}={value}", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expect in err[0], err


def test_components_lists_builtins_and_plugins(tmp_path, capsys):
    plugin = tmp_path / "more_parts.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    assert main(["components", f"plugins=[{plugin}]"]) == 0
    out = capsys.readouterr().out
    for name in ("ib_tpo", "iib_lpo", "fixed_width", "ppo_clip", "kl_cov", "treerl", "plugin_zero", "math"):
        assert name in out, name
    assert "lam<-ib_tpo_lambda" in out  # the typed options of an estimator, with their config fields


def test_rollout_spec_exports_grow_trees_from_a_config(tokenizer, tiny_model):
    """ibtpo.rollout_spec + ibtpo.grow_trees: the documented way to grow trees from Python."""
    import random

    import torch

    from ibtpo.testbed.task import SumTask, sum_reward

    cfg = ibtpo.configure(sampler="ib", tree_b0=2, tree_l=2, tree_min_room=2, max_completion_length=8)
    spec = ibtpo.rollout_spec(cfg, tokenizer)
    assert isinstance(spec, ibtpo.RolloutSpec) and spec.options.ib == ibtpo.IBOptions()
    problems = list(SumTask(test_size=2).test_problems)
    trees = ibtpo.grow_trees(spec, tiny_model, tokenizer, problems, sum_reward, torch.Generator().manual_seed(0),
                             random.Random(0))
    assert [len(t.leaves()) for t in trees] == [spec.shape.group_size] * 2 == [3, 3]
