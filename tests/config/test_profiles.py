"""The real-model profile: defaults for the settings a user did not give, only when the model is not the testbed."""

import yaml

from ibtpo.config.schema import build_config
from ibtpo.config.profiles import REAL_MODEL_LR, REAL_MODEL_PROFILE, describe_profile, profile_values


def test_testbed_keeps_the_config_defaults():
    cfg = build_config(None, {})
    assert cfg._profile == {} and cfg.max_completion_length == 48 and cfg.learning_rate == 1e-4
    assert describe_profile(cfg._profile) is None


def test_a_real_model_gets_the_profile_for_what_the_user_did_not_set():
    cfg = build_config(None, {"model": "some/model", "eval_questions": 10, "max_new_tokens": 256})
    assert cfg.eval_questions == 10 and cfg.max_completion_length == 256  # given (an alias counts) wins
    assert cfg.learning_rate == REAL_MODEL_LR["full"] and cfg.lr_scheduler == "cosine"
    assert cfg.ib_probe_every == REAL_MODEL_PROFILE["ib_probe_every"]
    assert "eval_questions" not in cfg._profile and "max_completion_length" not in cfg._profile
    line = describe_profile(cfg._profile)
    assert line.startswith("real-model defaults") and "learning_rate=1e-06" in line
    lora = build_config(None, {"model": "some/model", "lora_rank": 8})
    assert lora.learning_rate == REAL_MODEL_LR["lora"]


def test_yaml_values_count_as_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "some/model", "learning_rate": 3e-6, "lr_scheduler": "constant"}))
    cfg = build_config(path, {})
    assert cfg.learning_rate == 3e-6 and cfg.lr_scheduler == "constant" and cfg.max_completion_length == 512


def test_a_run_trained_from_the_testbed_is_still_the_testbed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "testbed"}))
    assert profile_values({"model": str(run)}) == {}
    assert profile_values({"model": str(run / "checkpoints" / "step-000002")}) == {}
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "/models/real"}))
    assert profile_values({"model": str(run)})["max_completion_length"] == 512


def test_a_profile_cap_too_long_for_the_context_window_is_lowered_but_a_users_is_refused(tmp_path, tiny_model_dir):
    """The tiny model has 256 positions: the profile's 512-token cap is lowered to fit; the user's own is an error."""
    import pytest

    from ibtpo.data.datasets import DataError
    from ibtpo.training.trainer import Trainer

    cfg = build_config(None, {"model": str(tiny_model_dir), "out_dir": str(tmp_path / "a"), "tensorboard": False})
    assert cfg.max_completion_length == 512 and "max_completion_length" in cfg._profile
    trainer = Trainer(cfg)
    assert 0 < trainer.cfg.max_completion_length < 256
    assert trainer.cfg._profile["max_completion_length"] == trainer.cfg.max_completion_length
    assert trainer.sampling.max_new_tokens == trainer.cfg.max_completion_length
    with pytest.raises(DataError, match="context window"):
        Trainer(build_config(None, {"model": str(tiny_model_dir), "out_dir": str(tmp_path / "b"),
                                    "max_completion_length": 400, "tensorboard": False}))
