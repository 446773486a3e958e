"""IIB-LPO through the trainer on the shipped testbed policy: one step of each preset, checkpoint round trip, config."""

import math

import pydantic
import pytest
import torch

from ibtpo.config.schema import ConfigError, TrainConfig, build_config
from ibtpo.training.trainer import Trainer

CVAE_KEYS = {"cvae/loss", "cvae/recon", "cvae/kl", "cvae/pairs"}


@pytest.fixture(autouse=True)
def one_thread():
    """Restore the process's thread count (the trainer sets cfg.threads = 1 here: fastest for the testbed policy, and
    immune to a busy machine)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _latent(trainer):
    """The run's latent codes (IIB-LPO's trainer extension), or None."""
    ext = next((e for e in trainer.extensions if hasattr(e, "latent")), None)
    return None if ext is None else ext.latent


def make_trainer(tmp_path, algorithm, **over):
    cfg = build_config(None, {"algorithm": algorithm, "model": "testbed", "out_dir": str(tmp_path / "run"),
                              "questions_per_step": 2, "tensorboard": False, "threads": 1, "eval_questions": 2,
                              "eval_k": 1, "ib_probe_every": 0, "seed": 0, **over})
    return Trainer(cfg)


def test_iib_lpo_step(tmp_path):
    trainer = make_trainer(tmp_path, "iib_lpo")
    assert trainer.cfg.sampler == "iib" and trainer.cfg.iib_keep == 8 and trainer.shape.group_size == 12
    assert _latent(trainer) is not None and _latent(trainer).mode == "cvae"
    assert trainer.cfg.weight_decay == 0  # so a change of W below comes from its gradient
    w_before = _latent(trainer).injector.proj.weight.detach().clone()
    policy_before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    metrics = trainer.train_step()
    assert all(math.isfinite(v) for v in metrics.values()), {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert metrics["iib/kept"] == 8.0
    assert metrics["rollout/trajectories_per_question"] == 12
    assert CVAE_KEYS <= set(metrics) and metrics["cvae/pairs"] > 0
    assert _latent(trainer).pending == []
    # W is trained by the RL loss: it has a gradient and moved
    grad = _latent(trainer).injector.proj.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    assert not torch.equal(_latent(trainer).injector.proj.weight, w_before)
    assert not all(torch.equal(p, policy_before[n]) for n, p in trainer.policy.named_parameters())


def test_iib_lpo_no_latent_step(tmp_path):
    trainer = make_trainer(tmp_path, "iib_lpo_no_latent")
    assert trainer.cfg.sampler == "iib" and _latent(trainer) is None
    n_params = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    assert sum(p.numel() for p in trainer.params) == n_params  # nothing but the policy is optimised
    metrics = trainer.train_step()
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["iib/kept"] == 8.0
    assert not CVAE_KEYS & set(metrics)


def test_iib_lpo_no_filter_step(tmp_path):
    trainer = make_trainer(tmp_path, "iib_lpo_no_filter")
    assert _latent(trainer) is not None and trainer.cfg.iib_keep == 0 and trainer.cfg.iib_self_reward == 0
    trees = []
    rollout = trainer.rollout
    trainer.rollout = lambda: trees.extend(rollout()) or trees  # keep the step's trees to inspect them
    metrics = trainer.train_step()
    assert all(math.isfinite(v) for v in metrics.values())
    assert not any(k.startswith("iib/") for k in metrics)
    assert CVAE_KEYS <= set(metrics)
    leaves = [leaf for tree in trees for leaf in tree.leaves()]
    assert len(leaves) == 2 * 12
    assert not any("dropped" in leaf.info or "ib_score" in leaf.info for leaf in leaves)  # nothing scored or dropped


def test_checkpoint_round_trip_restores_the_latent_state(tmp_path):
    trainer = make_trainer(tmp_path, "iib_lpo")
    w_init = _latent(trainer).injector.proj.weight.detach().clone()
    trainer.train_step()
    trainer.save()
    resumed = Trainer(trainer.cfg, resume=True)
    assert resumed.step == 1 and _latent(resumed) is not None
    w = _latent(resumed).injector.proj.weight
    assert torch.equal(w, _latent(trainer).injector.proj.weight) and not torch.equal(w, w_init)
    for a, b in zip(_latent(resumed).cvae.parameters(), _latent(trainer).cvae.parameters()):
        assert torch.equal(a, b)
    saved, loaded = _latent(trainer).cvae_opt.state_dict(), _latent(resumed).cvae_opt.state_dict()
    assert saved["state"].keys() == loaded["state"].keys() and len(saved["state"]) > 0
    for k in saved["state"]:
        assert torch.equal(saved["state"][k]["exp_avg"], loaded["state"][k]["exp_avg"])
    # the injector is in the RL optimizer, whose moments are restored with it
    restored = resumed.optimizer.state[_latent(resumed).injector.proj.weight]["exp_avg"]
    assert torch.equal(restored, trainer.optimizer.state[_latent(trainer).injector.proj.weight]["exp_avg"])


def test_iib_keep_one_is_rejected():
    with pytest.raises(pydantic.ValidationError, match="iib_keep"):
        TrainConfig(iib_keep=1)
    with pytest.raises(ConfigError, match="iib_keep"):
        build_config(None, {"algorithm": "iib_lpo", "iib_keep": 1})
    assert TrainConfig(iib_keep=0).iib_keep == 0 and TrainConfig(iib_keep=2).iib_keep == 2
    assert build_config(None, {"algorithm": "iib_lpo"}).iib_keep == 8


def test_self_reward_is_added_after_the_group_normalisation(tmp_path):
    """A question whose kept trajectories all have the same outcome gets only the small self-reward bonus
    (|A| <= w * sqrt(n - 1)), not a unit-scale advantage from normalising the bonus by its own std."""
    from ibtpo.methods.iib_lpo.core import group_zscore

    trainer = make_trainer(tmp_path, "iib_lpo", questions_per_step=8, iib_self_reward=0.1)
    seen = {}

    def capture(batch, advantages):
        seen["batch"], seen["adv"] = batch, advantages
        return {}

    trainer.update = capture
    trainer.train_step()
    batch, adv = seen["batch"], seen["adv"]
    first = adv.gather(1, batch.response_mask.argmax(1, keepdim=True)).squeeze(1)  # sequence-level here (grpo)
    scores = torch.tensor([leaf.info["ib_score"] for leaf in batch.leaves])
    bonus = 0.1 * group_zscore(scores, batch.group_ids)
    constant = [g for g in batch.group_ids.unique() if batch.rewards[batch.group_ids == g].std() == 0]
    assert constant, "the seed should give at least one all-correct or all-wrong group"
    for g in constant:
        rows = batch.group_ids == g
        torch.testing.assert_close(first[rows], bonus[rows])
        assert float(first[rows].abs().max()) <= 0.1 * math.sqrt(int(rows.sum()) - 1) + 1e-6
    mixed = [g for g in batch.group_ids.unique() if g not in constant]
    for g in mixed:  # elsewhere: the GRPO advantage of the outcome plus the same bonus
        rows = batch.group_ids == g
        r = batch.rewards[rows]
        torch.testing.assert_close(first[rows], (r - r.mean()) / (r.std() + 1e-4) + bonus[rows], atol=1e-4, rtol=0)
