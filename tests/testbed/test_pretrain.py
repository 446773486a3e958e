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
