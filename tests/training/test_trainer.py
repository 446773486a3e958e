import math

import pytest
import torch

from ibtpo.algos.presets import PRESETS
from ibtpo.config.schema import build_config
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths
from ibtpo.core.tree import Tree
from ibtpo.training.trainer import Trainer

VARIANTS = [
    {},
    {"loss_agg_mode": "token-mean"},
    {"loss_agg_mode": "seq-mean-token-sum-norm"},
    {"beta": 0.01},
    {"entropy_coef": 0.01},
    {"epsilon_high": 0.28},
    {"dual_clip_c": 3.0, "ppo_epochs": 2, "mini_batch_size": 6},
    {"scale_rewards": "none", "lr_scheduler": "cosine", "warmup_steps": 1},
    {"sampler": "ib", "adv_estimator": "tree_grpo", "tree_b0": 2, "tree_l": 3, "tree_min_room": 2},
    {"sampler": "entropy", "adv_estimator": "tree_grpo", "tree_b0": 2, "tree_l": 3, "tree_min_room": 2},
    {"sampler": "random", "tree_b0": 2, "tree_l": 2, "tree_k": 2, "prefix_reuse": False},
    {"sampler": "fixed_width", "treepo_segment_length": 3, "tree_b0": 2, "tree_l": 2},
]


def parity_reward(prompts, completions, completion_ids, **_):
    """A reward that gives a random model mixed groups: 1 when the first generated token id is even."""
    return [float(ids[0] % 2 == 0) for ids in completion_ids]


def _trainer(tmp_path, model_dir, **over):
    cfg = build_config(None, {"algorithm": "grpo", "model": str(model_dir), "out_dir": str(tmp_path / "run"),
                              "questions_per_step": 3,
                              "num_generations": 4, "max_completion_length": 12, "tensorboard": False,
                              "eval_questions": 4, "eval_k": 2, "learning_rate": 1e-3, **over})
    trainer = Trainer(cfg)
    trainer.reward_fn = parity_reward
    return trainer


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_one_step_changes_every_parameter_with_finite_loss(tmp_path, tiny_model_dir, variant):
    trainer = _trainer(tmp_path, tiny_model_dir, **variant)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    metrics = trainer.train_step()
    assert 0 < metrics["eff_rate"]  # the step had a learning signal
    assert math.isfinite(metrics["actor/loss"]) and math.isfinite(metrics["actor/pg_loss"])
    unchanged = [n for n, p in trainer.policy.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert (trainer.ref is not None) == (variant.get("beta", 0) > 0)  # no reference copy when beta = 0
    if variant.get("beta"):
        assert metrics["actor/kl"] >= 0


def test_batch_layout_aligns_behaviour_logprobs(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir)
    trees = trainer.rollout()
    batch = flatten_paths(trees, trainer.tokenizer.pad_token_id)
    assert batch.size == 12 and batch.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.response_mask.sum().item() == sum(t.new_tokens for t in trees)
    with torch.no_grad():
        logp, _ = token_logprobs(trainer.policy, batch.input_ids, batch.attention_mask, trainer.cfg.temperature)
    m = batch.response_mask.bool()
    torch.testing.assert_close(logp[m], batch.old_logp[m], atol=1e-5, rtol=1e-5)
    assert batch.rewards.tolist() == [leaf.reward for t in trees for leaf in t.leaves()]


def test_token_budget_stops_run(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, max_tokens=30, max_steps=100)
    steps = 0
    while not trainer.done():
        trainer.train_step()
        steps += 1
    assert trainer.tokens >= 30 and steps < 100
    assert trainer.tokens - 30 < 3 * 4 * 12  # stopped within one step of the budget


def test_time_limit_stops_run_after_the_step_that_reached_it(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, max_train_time_s=1e-6, max_steps=100)
    assert not trainer.done()  # checked at the end of each step, never before the first
    trainer.train_step()
    assert trainer.done() and trainer.step == 1


def test_tree_rollout_metrics_and_dump(tmp_path, tiny_model_dir):
    import json

    trainer = _trainer(tmp_path, tiny_model_dir, sampler="ib", adv_estimator="tree_grpo", tree_b0=2, tree_l=4,
                       tree_min_room=2, dump_trees=1)
    metrics = trainer.train_step()
    assert metrics["rollout/trajectories_per_question"] == 2 + 3
    assert metrics["rollout/reused_prefix_tokens"] > 0 and metrics["rollout/tree_depth"] >= 1
    assert math.isfinite(metrics["ib/score_mean"]) and math.isfinite(metrics["ib/cov_conf_gain"])
    assert metrics["ib/branching_nodes"] >= 1
    data = json.loads((trainer.run_dir / "trees" / "step_000001.json").read_text())
    assert data["sampler"] == "ib" and len(data["trees"]) == 3
    tree = data["trees"][0]
    assert tree["trajectories"] == 5 and all("text" in n and "p_hat" in n for n in tree["nodes"])
    assert (trainer.run_dir / "trees" / "step_000001.txt").read_text().count("[prompt]") == 3


def test_tree_run_resumes_exactly_from_a_checkpoint(tmp_path, tiny_model_dir):
    """IBTree rollouts after a resume equal those of an uninterrupted run (rule RNG rides on the checkpointed stream)."""
    over = dict(sampler="ib", adv_estimator="tree_grpo", tree_b0=2, tree_l=3, tree_min_room=2, seed=3)
    first = _trainer(tmp_path / "b", tiny_model_dir, **over)
    first.train_step()
    first.save()
    resumed = Trainer(first.cfg, resume=True)
    resumed.reward_fn = first.reward_fn
    resumed.train_step()
    last = resumed.rollout()
    ref = _trainer(tmp_path / "c", tiny_model_dir, **over)
    ref.train_step()
    ref.train_step()
    expected = ref.rollout()
    assert [[Tree.completion(x)[0] for x in t.leaves()] for t in last] == \
           [[Tree.completion(x)[0] for x in t.leaves()] for t in expected]
    assert [[x.path for x in t.leaves()] for t in last] == [[x.path for x in t.leaves()] for t in expected]


def test_probe_gives_independent_runs_ib_metrics_without_touching_the_run_rng(tmp_path, tiny_model_dir):
    over = dict(ib_probe_questions=3, tree_b0=2, tree_l=3, tree_min_room=2)
    trainer = _trainer(tmp_path, tiny_model_dir, **over)
    state = trainer.generator.get_state()
    first, again = trainer.probe(), trainer.probe()
    assert torch.equal(trainer.generator.get_state(), state)  # probing does not shift the training stream
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("perf/")}  # noqa: E731
    assert strip(first) == strip(again)  # fixed seed: same policy, same readings
    assert first["probe/ib/score_mean"] == first["ib/score_mean"] and "probe/ib/cov_conf_gain" in first
    assert "ib/score_mean" not in trainer.train_step()  # independent steps have no branching below the root
    tree = _trainer(tmp_path / "t", tiny_model_dir, sampler="ib", **over)
    probe = tree.probe()
    assert "probe/ib/score_mean" in probe and "ib/score_mean" not in probe  # tree runs: ib/* from their own trees


def test_run_probes_on_its_cadence_and_reports_overhead(tmp_path, tiny_model_dir):
    from ibtpo.training.metrics import read_metrics
    from ibtpo.training.run import train

    cfg = build_config(None, {"algorithm": "grpo", "model": str(tiny_model_dir), "out_dir": str(tmp_path / "run"),
                              "questions_per_step": 2,
                              "num_generations": 2, "max_completion_length": 10, "tensorboard": False,
                              "plots": True, "progress": False, "eval_questions": 2, "eval_k": 1, "max_steps": 3,
                              "ib_probe_every": 2, "ib_probe_questions": 2, "tree_b0": 2, "tree_l": 2,
                              "tree_min_room": 2})
    summary = train(cfg)
    probed = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "probe/reward_mean" in r]
    assert probed == [0, 2, 3]
    assert summary["ib_probe"]["probes"] == 3 and 0 < summary["ib_probe"]["share_of_step_time"]
    assert (tmp_path / "run" / "plots" / "ib.png").exists()


@pytest.mark.parametrize("algorithm", PRESETS.names())
def test_every_preset_trains_one_step(tmp_path, tiny_model_dir, algorithm):
    preset = PRESETS[algorithm].fields
    keep = {"iib_keep": 4} if preset.get("iib_keep") else {}  # the shrunken tree has G = 6 < the preset's 8
    trainer = _trainer(tmp_path, tiny_model_dir, algorithm=algorithm, tree_b0=2, tree_l=3, tree_min_room=2,
                       treepo_segment_length=3, **keep)
    assert all(getattr(trainer.cfg, k) == v for k, v in preset.items() if not k.startswith("tree_") and k not in keep)
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    metrics = trainer.train_step()
    assert math.isfinite(metrics["actor/loss"]) and metrics["eff_rate"] > 0
    unchanged = [n for n, p in trainer.policy.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"{algorithm}: parameters not updated: {unchanged}"


def test_cosine_schedule_follows_the_token_budget(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, lr_scheduler="cosine", max_tokens=200, max_steps=100_000,
                       warmup_steps=0)  # a non-testbed model would get the real-model profile's warm-up
    trainer.train_step()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # nothing generated before step 1
    used = trainer.tokens
    trainer.train_step()
    expected = 1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, used / 200)))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_recomputed_old_logprobs_make_the_first_update_exactly_on_policy(tmp_path, tiny_model_dir):
    """With old_logp=recompute the ratio is exactly 1 on a single on-policy update, so KL-Cov's |log ratio| penalty
    has zero gradient there (verl's behaviour): the update equals the one with the penalty off. With the sampler's
    log-probs (last-bit mismatches) the penalty does push."""
    def step(**over):
        trainer = _trainer(tmp_path, tiny_model_dir, algorithm="kl_cov", kl_cov_ratio=0.2, overwrite=True, **over)
        metrics = trainer.train_step()
        return metrics, [p.detach().clone() for p in trainer.policy.parameters()]

    m_on, with_penalty = step(old_logp="recompute", kl_cov_coef=1.0)
    _, without = step(old_logp="recompute", kl_cov_coef=0.0)
    assert m_on["actor/ppo_kl"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(with_penalty, without))
    _, sampler_penalty = step(old_logp="sampler", kl_cov_coef=1.0)
    _, sampler_plain = step(old_logp="sampler", kl_cov_coef=0.0)
    assert not all(torch.equal(a, b) for a, b in zip(sampler_penalty, sampler_plain))


@pytest.mark.parametrize("variant", [{"policy_loss": "ppo_clip", "beta": 0.01},
                                     {"policy_loss": "clip_cov", "clip_cov_lb": -1e9, "clip_cov_ub": 1e9,
                                      "clip_cov_ratio": 0.1, "loss_agg_mode": "token-mean"},
                                     {"policy_loss": "kl_cov", "loss_agg_mode": "seq-mean-token-sum-norm"}],
                         ids=lambda v: v["policy_loss"])
def test_micro_batches_leave_the_training_step_unchanged(tmp_path, tiny_model_dir, variant):
    """One whole step (rollout, reference, update in 2 mini-batches) with and without micro-batches of 1 and 3 rows."""
    weights, metrics = [], []
    for i, micro in enumerate((0, 1, 3)):
        trainer = _trainer(tmp_path / str(i), tiny_model_dir, mini_batch_size=6, micro_batch_size=micro,
                           old_logp="recompute", **variant)
        metrics.append(trainer.train_step())
        weights.append({n: p.detach().clone() for n, p in trainer.policy.named_parameters()})
    for other, m in zip(weights[1:], metrics[1:]):
        for name, w in weights[0].items():
            torch.testing.assert_close(other[name], w, rtol=1e-4, atol=1e-6)
        for key in ("actor/loss", "actor/pg_loss", "actor/pg_clipfrac", "actor/kl", "rollout/logp_diff_mean"):
            assert m[key] == pytest.approx(metrics[0][key], rel=1e-3, abs=1e-6), key


def test_old_logp_auto_recomputes_off_cpu_float32(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir)
    assert trainer.cfg.old_logp == "auto" and not trainer.recompute_old_logp()  # CPU, float32: the sampler's
    m = trainer.train_step()
    assert m["rollout/logp_diff_max"] < 1e-4  # measured on the first mini-batch's forward
    trainer.cfg.tis_cap = 2.0
    assert trainer.recompute_old_logp()  # truncated IS needs the training forward's old log-probs
    m = trainer.train_step()
    assert m["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_step_on_cuda_in_bfloat16(tmp_path, tiny_model_dir):
    trainer = _trainer(tmp_path, tiny_model_dir, device="cuda", dtype="bfloat16", sampler="ib",
                       adv_estimator="ib_tpo", tree_b0=2, tree_l=3, tree_min_room=2, beta=0.01, micro_batch_size=2)
    assert trainer.recompute_old_logp()
    m = trainer.train_step()
    assert math.isfinite(m["actor/loss"]) and "rollout/logp_diff_mean" in m
    assert all(math.isfinite(v) for v in trainer.evaluate().values())
