import subprocess
import sys

import pytest

from ibtpo.config.schema import ConfigError, TrainConfig, build_config, parse_overrides, save_config


def test_every_field_has_a_doc():
    for name, info in TrainConfig.model_fields.items():
        assert info.description and len(info.description.splitlines()) == 1, name


def test_overrides_forms_and_aliases():
    ov = parse_overrides(["learning_rate=2e-4", "--seed", "3", "--beta=0.01", "rollout.n=4", "epsilon_high=null"])
    cfg = build_config(None, ov)
    assert cfg.learning_rate == pytest.approx(2e-4)
    assert cfg.seed == 3 and cfg.beta == pytest.approx(0.01) and cfg.num_generations == 4
    assert cfg.epsilon_high is None


def test_yaml_then_command_line_and_roundtrip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 5\nkl_loss_coef: 0.001\nmax_steps: 7\n")
    cfg = build_config(path, {"max_steps": 9})
    assert (cfg.seed, cfg.beta, cfg.max_steps) == (5, 0.001, 9)
    save_config(cfg, tmp_path / "resolved.yaml")
    assert build_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("overrides,fragment", [
    ({"lerning_rate": 1}, "unknown config key 'lerning_rate' (did you mean 'learning_rate'?)"),
    ({"seed": "abc"}, "seed: got 'abc'; allowed: int >= 0"),
    ({"epsilon": 3}, "epsilon: got 3; allowed: float >= 0.0 <= 1.0"),
    ({"loss_agg_mode": "x"}, "loss_agg_mode: got 'x'; allowed: one of token-mean, seq-mean-token-mean"),
    ({"task_min_terms": 5, "task_max_terms": 3}, "task_min_terms (5) must be <= task_max_terms (3)"),
])
def test_bad_values_give_one_line_naming_the_field(overrides, fragment):
    with pytest.raises(ConfigError) as exc:
        build_config(None, overrides)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 1\n\ntemprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: unknown config key 'temprature'"):
        build_config(path)
    path.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        build_config(path)


@pytest.mark.parametrize("args,fragment", [
    (["train", "top_p=2"], "top_p: got 2"),
    (["train", "nonsense"], "config file nonsense"),
    (["train", "--seed"], "option --seed needs a value"),
    (["eval", "model=/no/such/dir"], "model path not found: /no/such/dir"),
    (["train", "--resume", "/no/such/run"], "--resume /no/such/run: no config.yaml"),
    (["eval", "model=/"], "cannot load a causal LM from /: no config.json there"),
    (["pretrain", "steps=-1"], "steps: got -1; input should be greater than or equal to 1"),
    (["pretrain", "stepz=3"], "unknown pretrain key 'stepz'"),
])
def test_cli_bad_input_exit_2_one_line_no_traceback(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "ibtpo.cli", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("content,fragment", [
    (b"seed: 1\nmax_steps: \xff\n", r"c\.yaml:2: not UTF-8 text \(byte 0xff at offset 19\)"),
    (b"seed: 1\nmax_steps: 2\nseed: 3\n", r"c\.yaml:3: key 'seed' given twice \(first at line 1\)"),
    (b"lora_target_modules:\n  - q_proj\nx:\n  a: 1\n  a: 2\n", r"c\.yaml:5: key 'a' given twice"),
    (b"lr: 0.1\nlearning_rate: 0.2\n", r"c\.yaml:2: 'learning_rate' sets learning_rate, which 'lr' already set"),
    (b"- 1\n", r"must be a mapping"),
])
def test_yaml_file_problems_name_file_and_line(tmp_path, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=fragment) as exc:
        build_config(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("overrides,fragment", [
    ({"iib_keep": 9}, "iib_keep (9) must be <= the group size G=8 of sampler=independent (num_generations)"),
    ({"sampler": "iib", "tree_b0": 2, "iib_forks": 1, "iib_keep": 5}, "G=4 of sampler=iib (tree_b0, iib_forks)"),
    ({"sampler": "ib", "tree_b0": 1, "tree_l": 1}, "group size G=1 (tree_b0, tree_l, tree_k, tree_b)"),
    ({"num_generations": 1}, "group size G=1 (num_generations)"),
    ({"sampler": "ib", "max_completion_length": 8, "tree_min_room": 9}, "tree_min_room (9) must be <= max_completion_length (8)"),
    ({"sampler": "ib", "max_completion_length": 8, "tree_min_room": 8, "tree_root_candidate": False}, "(< with tree_root_candidate=false)"),
    ({"sampler": "iib", "max_completion_length": 4}, "tree_min_room (8) must be < max_completion_length (4)"),
    ({"sampler": "fixed_width", "treepo_segment_length": 60}, "treepo_segment_length (60) must be <= max_completion_length"),
    ({"questions_per_step": 2, "num_generations": 4, "mini_batch_size": 9}, "mini_batch_size (9) must be <= the rollout batch questions_per_step x G = 2 x 4 = 8"),
    ({"clip_cov_lb": 5, "clip_cov_ub": 5}, "clip_cov_lb (5.0) must be < clip_cov_ub (5.0)"),
    ({"epsilon": 0, "epsilon_high": 0}, "epsilon and epsilon_high are both 0"),
    ({"epsilon": 1, "dual_clip_c": 3}, "dual_clip_c (3.0) needs epsilon < 1"),
    ({"device": "gpu0"}, "device: got 'gpu0'; allowed: auto, cpu, cuda, cuda:N, mps"),
])
def test_contradictory_settings_are_refused_naming_the_fields(overrides, fragment):
    from ibtpo.config.schema import check_training

    with pytest.raises(ConfigError) as exc:
        check_training(build_config(None, {"algorithm": "grpo", **overrides}))
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("overrides", [{"sampler": "ib", "tree_l": 1, "max_completion_length": 4},
                                       {"sampler": "ib", "max_completion_length": 8, "tree_min_room": 8},
                                       {"iib_keep": 8}, {"mini_batch_size": 128}, {"device": "cuda:1"},
                                       {"epsilon": 0.2, "epsilon_high": 0.1}])
def test_consistent_edge_settings_are_accepted(overrides):
    from ibtpo.config.schema import check_training

    check_training(build_config(None, {"algorithm": "grpo", **overrides}))


def test_eval_settings_are_not_held_to_the_tree_sampler():
    """`ibtpo eval max_completion_length=4` with the default (tree) algorithm: eval grows no trees."""
    build_config(None, {"max_completion_length": 4})


def test_device_that_does_not_exist_is_one_line():
    import torch

    from ibtpo.training.models import ModelLoadError, resolve_device

    missing = f"cuda:{torch.cuda.device_count() + 3}"
    with pytest.raises(ModelLoadError, match=rf"device='{missing}'") as exc:
        resolve_device(missing)
    assert "\n" not in str(exc.value)


def test_chain_task_brings_its_policy_and_length_cap_unless_set():
    sum_cfg = build_config(None, {})
    assert (sum_cfg.task, sum_cfg.model, sum_cfg.max_completion_length) == ("sum", "testbed", 48)
    chain = build_config(None, {"task": "chain"})
    assert (chain.model, chain.max_completion_length) == ("testbed-chain", 128)
    mine = build_config(None, {"task": "chain", "max_new_tokens": 100, "model": "testbed"})
    assert (mine.model, mine.max_completion_length) == ("testbed", 100)
    with pytest.raises(ConfigError, match="chain_min_ops"):
        build_config(None, {"task": "chain", "chain_min_ops": 12, "chain_max_ops": 11})
    with pytest.raises(ConfigError, match="chain_max_operand"):
        build_config(None, {"chain_max_operand": 60})
