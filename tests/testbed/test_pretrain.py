from ibtpo.testbed.model import build_tiny_model
from ibtpo.testbed.pretrain import PretrainConfig, pretrain
from ibtpo.testbed.task import SumTask


def test_warmup_lowers_loss_even_with_fewer_examples_than_a_batch(tokenizer):
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, intermediate_size=64, seed=0)
    cfg = PretrainConfig(num_examples=5, steps=40, batch_size=8, learning_rate=1e-2)
    losses = []
    stats = pretrain(model, tokenizer, SumTask(test_size=16), cfg, lambda step, loss: losses.append(loss))
    assert len(losses) == 40 and stats["examples"] == 5
    assert losses[-1] < 0.5 * losses[0]


def test_build_base_policy_warms_up_on_the_chosen_task_and_records_it(tmp_path, monkeypatch):
    """task=chain: the warm-up reads the chain stream, evaluation uses the chain cap and reward, the summary says so."""
    import json

    from ibtpo.training import testbed_policy as build
    from ibtpo.testbed.chain import ChainTask

    seen = {}

    def fake_evaluate(model, tokenizer, problems, reward_fn, **kw):
        seen.update(prompts=[p.prompt for p in problems], reward=reward_fn, cap=kw["spec"].sampling.max_new_tokens)
        return {"avg@4": 0.0, "greedy_acc": 0.0}

    monkeypatch.setattr(build, "evaluate", fake_evaluate)
    cfg = PretrainConfig(task="chain", num_examples=4, steps=2, batch_size=2, hidden_size=16, intermediate_size=16)
    summary = build.build_base_policy(cfg, tmp_path, task=ChainTask(test_size=3), progress=False)
    assert seen["prompts"] == [p.prompt for p in ChainTask(test_size=3).test_problems]
    assert seen["cap"] == ChainTask.max_tokens and seen["reward"] is build.chain_reward
    assert summary["pretrain_config"]["task"] == "chain" and summary["task"]["min_ops"] == 9
    assert json.loads((tmp_path / "pretrain_summary.json").read_text())["task"] == summary["task"]
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
