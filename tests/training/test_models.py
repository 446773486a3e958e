"""Real-model path on tiny random Qwen3 / Llama / GPT-2 models with a chat tokenizer, offline: loading, chat
templates, tree rollouts from cached prefixes, one GRPO and one IB-TPO step with and without LoRA, the LoRA
reference, adapter checkpoints, gradient checkpointing and load errors."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ibtpo.config.schema import build_config
from ibtpo.data.tasks import build_source
from ibtpo.training.models import ModelLoadError, is_lora, load_policy
from ibtpo.core.tree import Tree
from ibtpo.core.tiny_models import ARCHITECTURES, save_tiny_model
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths
from ibtpo.training.trainer import Trainer
from tests.rollout.test_samplers import grow

FIXTURES = Path(__file__).parents[1] / "fixtures" / "math"


def parity_reward(prompts, completions, completion_ids, **_):
    """Mixed rewards for a random model (1 when the first generated token id is even): a learning signal."""
    return [float(ids[0] % 2 == 0) for ids in completion_ids]


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {arch: save_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


def _cfg(tmp_path, model_dir, **over):
    return build_config(None, {"algorithm": "grpo", "model": str(model_dir), "out_dir": str(tmp_path / "run"),
                               "dataset": str(FIXTURES / "dapo.jsonl"),
                               "eval_datasets": [str(FIXTURES / "math500.jsonl")],
                               "reward_fn": "tests.training.test_models:parity_reward", "questions_per_step": 3,
                               "num_generations": 4, "max_completion_length": 10, "tensorboard": False,
                               "eval_questions": 2, "eval_k": 2, "learning_rate": 1e-2, "tree_b0": 2, "tree_l": 3,
                               "tree_min_room": 2, "ib_probe_every": 0, **over})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chat_prompts_render_through_the_template(tmp_path, arch_dirs, arch):
    trainer = Trainer(_cfg(tmp_path, arch_dirs[arch]))
    first = trainer.source.train_problem(0)
    assert first.prompt.startswith("<|im_start|>") and first.prompt.endswith("<|im_start|>assistant\n")
    assert trainer.source.name == "math500" and len(trainer.source.test_sets["math500"]) == 5
    # plain-string prompts go through the chat template of a chat tokenizer too, unless chat_template=never
    assert trainer.source.test_sets["math500"][0].prompt.startswith("<|im_start|>user\nSimplify")
    off = build_source(_cfg(tmp_path, arch_dirs[arch], chat_template="never", dataset=None), trainer.tokenizer)
    assert off.test_sets["math500"][0].prompt.startswith("Simplify")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("sampler", ["entropy", "fixed_width"])
def test_tree_rollouts_from_cached_prefixes_match_re_encoding(arch_dirs, arch, sampler):
    model, tok = load_policy(str(arch_dirs[arch]))
    model.eval()
    with_reuse, _, _ = grow(model, tok, sampler, reuse=True)
    without, _, _ = grow(model, tok, sampler, reuse=False)
    # same seed: the same trajectories, token for token, and the same behaviour log-probs
    assert [[Tree.completion(x)[0] for x in t.leaves()] for t in with_reuse] == \
           [[Tree.completion(x)[0] for x in t.leaves()] for t in without]
    for t, u in zip(with_reuse, without):
        for x, y in zip(t.leaves(), u.leaves()):
            assert Tree.completion(x)[1] == pytest.approx(Tree.completion(y)[1], abs=1e-4)
    assert any(len(t.leaves()) > 1 and t.root.children and t.root.children[0].children for t in with_reuse), \
        "no fork below the root: the cached-prefix path was not exercised"
    batch = flatten_paths(with_reuse, tok.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask)
    mask = batch.response_mask.bool()
    assert torch.allclose(logp[mask], batch.old_logp[mask], atol=1e-4)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("algorithm", ["grpo", "ib_tpo"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_training_step_per_architecture(tmp_path, arch_dirs, arch, algorithm, lora):
    trainer = Trainer(_cfg(tmp_path, arch_dirs[arch], algorithm=algorithm, lora_rank=4 if lora else 0))
    assert is_lora(trainer.policy) == lora
    named = dict(trainer.policy.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in named.items()}
    # LoRA's B starts at zero, so A first moves on the second step
    metrics = [trainer.train_step() for _ in range(2 if lora else 1)]
    assert all(m["eff_rate"] > 0 and math.isfinite(m["actor/loss"]) for m in metrics)
    changed = {n for n, p in named.items() if not torch.equal(p.detach(), before[n])}
    assert changed == trainable
    if lora:
        assert trainable and all("lora_" in n for n in trainable)


def test_lora_reference_is_the_base_model_without_a_copy(tmp_path, arch_dirs):
    trainer = Trainer(_cfg(tmp_path, arch_dirs["qwen3"], lora_rank=4, beta=0.01))
    assert trainer.ref is None  # no second model in memory
    for _ in range(2):
        trainer.train_step()
    batch = flatten_paths(trainer.rollout(), trainer.tokenizer.pad_token_id)
    base, _ = load_policy(str(arch_dirs["qwen3"]))
    with torch.no_grad():
        ref = trainer.reference_logprobs(batch)
        expected, _ = token_logprobs(base, batch.input_ids, batch.attention_mask)
        policy, _ = token_logprobs(trainer.policy, batch.input_ids, batch.attention_mask)
    mask = batch.response_mask.bool()
    assert torch.allclose(ref[mask], expected[mask], atol=1e-5)
    assert not torch.allclose(policy[mask], expected[mask], atol=1e-3)  # the adapters did move the policy


def test_lora_checkpoint_holds_adapters_and_reloads(tmp_path, arch_dirs):
    from ibtpo.training.run import train

    cfg = _cfg(tmp_path, arch_dirs["llama"], lora_rank=4, max_steps=2, max_tokens=0, plots=False, progress=False)
    train(cfg)
    ckpt = Path(cfg.out_dir) / "checkpoints" / "step-000002"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    model, tok = load_policy(str(ckpt))
    trainer = Trainer(cfg, resume=True)  # resumes with the saved adapters
    ids = torch.tensor([tok("Compute 2+2.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = trainer.policy(input_ids=ids).logits
    assert is_lora(model) and torch.allclose(a, b, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(arch_dirs):
    grads = []
    for gc in (False, True):
        model, tok = load_policy(str(arch_dirs["qwen3"]), gradient_checkpointing=gc)
        model.train()
        ids = torch.tensor([tok("What is 12 + 30? The answer is 42.", add_special_tokens=False)["input_ids"]])
        logp, _ = token_logprobs(model, ids, torch.ones_like(ids))
        logp.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_model_load_errors_name_the_path(tmp_path, arch_dirs):
    with pytest.raises(ModelLoadError, match=r"someone/not-a-cached-model: .*local Hugging Face cache"):
        load_policy("someone/not-a-cached-model")
    with pytest.raises(ModelLoadError, match="model path not found: ./nowhere/model"):
        load_policy("./nowhere/model")
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="names no base model"):
        load_policy(str(tmp_path / "adapters"))
    with pytest.raises(ModelLoadError, match=r"lora_target_modules=\['nope'\]"):
        Trainer(_cfg(tmp_path, arch_dirs["gpt2"], lora_rank=2, lora_target_modules=["nope"]))


def test_bfloat16_policy_with_lora_and_checkpointing_trains(tmp_path, arch_dirs):
    trainer = Trainer(_cfg(tmp_path, arch_dirs["qwen3"], dtype="bfloat16", lora_rank=4, gradient_checkpointing=True))
    assert next(trainer.policy.parameters()).dtype == torch.bfloat16
    metrics = trainer.train_step()
    assert metrics["eff_rate"] > 0 and math.isfinite(metrics["actor/loss"]) and metrics["actor/grad_norm"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path, arch_dirs):
    with pytest.raises(ModelLoadError, match="device='cuda': this machine has no CUDA device"):
        Trainer(_cfg(tmp_path, arch_dirs["qwen3"], device="cuda"))


def test_hub_id_loads_from_the_local_cache_offline(tmp_path, arch_dirs):
    """model=ORG/NAME resolves through the Hugging Face cache layout (refs/main -> snapshots/REV) with the hub off."""
    repo = tmp_path / "hub" / "models--tiny--qwen3"
    shutil.copytree(arch_dirs["qwen3"], repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "ibtpo.cli", "eval", "model=tiny/qwen3",
                           f"eval_datasets=[{FIXTURES / 'aime.jsonl'}]", "eval_k=1", "eval_questions=2",
                           "max_completion_length=4", "--json", str(out)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert json.loads(out.read_text())["datasets"]["aime"]["questions"] == 2


def test_lora_checkpoint_finds_its_base_after_a_move(tmp_path, arch_dirs):
    """Adapters record their base relative to themselves: moving the run with its base model keeps them loadable;
    moving the base alone gives one line naming where it was looked for."""
    from ibtpo.training.models import BASE_REFERENCE, add_lora, write_base_reference

    project = tmp_path / "project"
    shutil.copytree(arch_dirs[ARCHITECTURES[0]], project / "base")
    model, tok = load_policy(str(project / "base"))
    model = add_lora(model, 4, 8.0, 0.0, "all-linear")
    ckpt = project / "run" / "checkpoints" / "step-000001"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    write_base_reference(ckpt, model)
    assert json.loads((ckpt / BASE_REFERENCE).read_text())["relative"] == "../../../base"
    moved = tmp_path / "elsewhere"
    shutil.move(str(project), str(moved))
    loaded, _ = load_policy(str(moved / "run" / "checkpoints" / "step-000001"))
    assert is_lora(loaded)
    shutil.move(str(moved / "base"), str(tmp_path / "base_alone"))
    with pytest.raises(ModelLoadError, match="base model is not found at .*project/base.* nor .*base"):
        load_policy(str(moved / "run" / "checkpoints" / "step-000001"))


def test_lora_load_prints_no_future_warning(tmp_path, arch_dirs):
    import warnings

    from ibtpo.training.models import add_lora

    model, tok = load_policy(str(arch_dirs[ARCHITECTURES[0]]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = add_lora(model, 4, 8.0, 0.0, "all-linear")
        model.save_pretrained(tmp_path / "ad")
        load_policy(str(tmp_path / "ad"))
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]
