"""The update's memory plan: micro-batches sized from update_memory_gib, checkpointing where it pays, one-line
failures, and a planned run equal step for step to the same run in one pass."""

import math

import pytest

from ibtpo.config.schema import ConfigError, build_config
from ibtpo.core.tiny_models import save_tiny_model
from ibtpo.training.memory import GIB, MemoryPlanError, ModelShape, activation_bytes, plan_memory

SMOL = ModelShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_dim=192, vocab=49152)  # SmolLM2-135M


def _plan(**kw):
    args = dict(shape=SMOL, elem=4, n_params=135_000_000, n_trainable=4_900_000, reference=False, seq_len=228,
                rows=32, rollout_rows=32, budget_gib=2.0)
    return plan_memory(**{**args, **kw})


def test_the_micro_batch_fits_the_budget_and_checkpointing_comes_on_when_few_rows_fit():
    plain = activation_bytes(SMOL, 228, 4, False)
    assert 0.3 * GIB < plain < 0.6 * GIB  # ~0.45 GiB per 228-token row without checkpointing
    plan = _plan()
    assert plan.gradient_checkpointing  # 2 GiB holds < 4 such rows: recompute instead
    assert plan.micro_batch_size == 32  # then the whole mini-batch fits
    big = _plan(budget_gib=20.0)  # room for many rows: no recompute
    assert not big.gradient_checkpointing and big.micro_batch_size == 32
    some = _plan(budget_gib=3.0, checkpointing=False)
    used = some.micro_batch_size * some.activations_gib_per_row + some.logits_gib
    assert 1 <= some.micro_batch_size < 32 and used <= 3.0
    assert (some.micro_batch_size + 1) * some.activations_gib_per_row + some.logits_gib > 3.0
    assert "micro_batch_size=" in some.describe() and "gradient checkpointing off" in some.describe()


def test_the_users_settings_are_kept():
    plan = _plan(micro_batch_size=5, checkpointing=False, logits_chunk_tokens=100)
    assert (plan.micro_batch_size, plan.gradient_checkpointing, plan.logits_chunk_tokens) == (5, False, 100)
    assert math.isclose(plan.logits_gib, 100 * 4 * 4 * 49152 / GIB)


def test_a_run_that_cannot_fit_fails_with_one_line():
    with pytest.raises(MemoryPlanError, match=r"update_memory_gib=0.05: one sequence of 4128 tokens") as err:
        _plan(budget_gib=0.05, seq_len=4128)
    assert "\n" not in str(err.value)
    with pytest.raises(MemoryPlanError, match="the device has 1.0 GiB"):
        _plan(device_total=GIB)


def _cfg(model, out, **kw):
    base = dict(model=str(model), task="arith", test_size=4, algorithm="grpo", questions_per_step=2,
                num_generations=4, max_completion_length=16, max_steps=1, eval_questions=2, eval_k=1,
                out_dir=str(out), tensorboard=False, plots=False, progress=False, threads=1, beta=0.01)
    return build_config(overrides={**base, **kw})


def test_a_planned_run_uses_micro_batches_and_trains_the_same_step(tmp_path, one_thread):
    from ibtpo.training.trainer import Trainer

    model = save_tiny_model("qwen3", tmp_path / "m")
    whole = Trainer(_cfg(model, tmp_path / "a", update_memory_gib=0))
    assert whole.memory_plan is None and whole.cfg.micro_batch_size == 0
    probe = Trainer(_cfg(model, tmp_path / "p", update_memory_gib=1.0, gradient_checkpointing=False,
                         logits_chunk_tokens=8)).memory_plan
    assert probe.micro_batch_size == 8  # the whole mini-batch fits 1 GiB
    budget = probe.logits_gib + 2.5 * probe.activations_gib_per_row  # two rows fit
    planned = Trainer(_cfg(model, tmp_path / "b", update_memory_gib=budget, gradient_checkpointing=False,
                           logits_chunk_tokens=8))
    plan = planned.memory_plan
    assert plan.micro_batch_size == 2 and planned.cfg.micro_batch_size == plan.micro_batch_size
    assert planned.cfg.gradient_checkpointing == plan.gradient_checkpointing
    a, b = whole.train_step(), planned.train_step()
    assert a["reward/mean"] == b["reward/mean"] and a["train/tokens"] == b["train/tokens"]
    for key in ("actor/loss", "actor/pg_loss", "actor/kl", "actor/grad_norm", "actor/entropy"):
        assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), key
    for p, q in zip(whole.params, planned.params):
        assert (p - q).abs().max() < 1e-5


def test_a_budget_too_small_stops_the_run_before_any_work(tmp_path):
    from ibtpo.training.trainer import Trainer

    model = save_tiny_model("qwen3", tmp_path / "m")
    with pytest.raises(ConfigError, match="update_memory_gib=1e-08: one sequence of"):
        Trainer(_cfg(model, tmp_path / "c", update_memory_gib=1e-8))


def test_checkpointing_chosen_by_the_plan_trains_the_same_step(tmp_path, one_thread):
    from ibtpo.training.trainer import Trainer

    model = save_tiny_model("qwen3", tmp_path / "m")
    probe = Trainer(_cfg(model, tmp_path / "p", update_memory_gib=1.0, gradient_checkpointing=False,
                         logits_chunk_tokens=8)).memory_plan
    budget = probe.logits_gib + 2.5 * probe.activations_gib_per_row  # 2 rows without recompute: < MIN_ROWS
    planned = Trainer(_cfg(model, tmp_path / "b", update_memory_gib=budget, logits_chunk_tokens=8))
    assert planned.memory_plan.gradient_checkpointing and planned.cfg.gradient_checkpointing
    assert planned.policy.is_activation_checkpointing
    whole = Trainer(_cfg(model, tmp_path / "a", update_memory_gib=0))
    a, b = whole.train_step(), planned.train_step()
    for key in ("actor/loss", "actor/grad_norm"):
        assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), key
