"""The one-process world (training.world): every operation is the plain one-process computation; the world of N
ranks answers the rank-dependent questions (seeds, blocks) without any collective; samplers declare what they cannot
run with on several ranks."""

import pytest
import torch

from ibtpo.api import configure
from ibtpo.config.schema import TrainConfig
from ibtpo.training.distributed import DataParallel, DistError, check_data_parallel, join_world
from ibtpo.training.world import RANK_SEED_STRIDE, LocalWorld


def test_one_process_minibatches_are_one_permutation_in_runs():
    world = LocalWorld()
    got = list(world.minibatches(10, 4, torch.Generator().manual_seed(3)))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    assert [c.tolist() for c in got] == [c.tolist() for c in order.split(4)]
    # one mini-batch holding every row: rows in order, no draw from the generator
    gen = torch.Generator().manual_seed(3)
    assert [c.tolist() for c in world.minibatches(5, 0, gen)] == [list(range(5))]
    assert [c.tolist() for c in world.minibatches(5, 8, gen)] == [list(range(5))]
    assert torch.equal(torch.randperm(7, generator=gen), torch.randperm(7, generator=torch.Generator().manual_seed(3)))


def test_one_process_operations_are_identities():
    world = LocalWorld()
    metrics = {"actor/loss": 0.5, "reward/mean": 0.25}
    assert world.combine(metrics, 3.0) is metrics and world.rollout_metrics(metrics, []) is metrics
    assert world.sampling_seed(17) == 17 and world.grow_block(5) == slice(0, 5)
    assert world.gather_grown(["a", "b"]) == ["a", "b"] and world.count_grown(12) == 12
    batch, adv = object(), torch.ones(2, 3)
    assert world.train_rows(batch, adv, 2) == (batch, adv)
    assert world.accumulate_args(torch.ones(2, 3), "token-mean", 8, 0, True) == {}
    assert world.logits_chunk(64) == 64 and world.frozen_lockstep is None and not world.wrapped
    model = torch.nn.Linear(2, 2)
    assert world.wrap(model, torch.device("cpu")) is model and world.shard_frozen(model) is model
    values, mask = torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert world.masked_mean(values, mask) == pytest.approx((1 + 5 + 7) / 3)
    calls = []
    world.on_writer(calls.append, "written")
    assert calls == ["written"] and world.writer


def test_one_process_clip_is_torchs():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    a(torch.randn(5, 4)).pow(2).sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        q.grad = p.grad.clone()
    norm = LocalWorld().clip_grad_norm(list(a.parameters()), 0.1)
    assert norm == float(torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.1))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_one_process_evaluate_names_sets():
    out, records = LocalWorld().evaluate(lambda cfg, sets, rec: {name: {"acc": len(p)} for name, p in sets.items()},
                                         None, {"a": [1, 2], "b": [3]}, None)
    assert out == {"val/a/acc": 2, "val/b/acc": 1} and records is None


def test_join_world_in_one_process_is_the_local_world(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert type(join_world(TrainConfig(), torch.device("cpu"))) is LocalWorld


@pytest.mark.parametrize("exact", [True, False])
def test_rank_seeds_and_blocks(exact):
    ranks = [DataParallel(rank=r, world=3, kind="ddp", exact=exact) for r in range(3)]
    seeds = [w.sampling_seed(11) for w in ranks]
    blocks = [w.grow_block(7) for w in ranks]
    if exact:  # every rank grows every tree with the run's draws
        assert seeds == [11, 11, 11] and blocks == [slice(0, 7)] * 3
    else:  # rank 0 keeps the run's draws; the blocks cover the batch in rank order
        assert seeds == [11 + RANK_SEED_STRIDE * r for r in range(3)]
        assert [i for b in blocks for i in range(7)[b]] == list(range(7))
    assert ranks[0].writer and not ranks[1].writer and ranks[0].wrapped
    assert ranks[0].logits_chunk(64) > 2**40  # the LM head runs inside the wrapper's forward


def test_sampler_declares_its_data_parallel_needs():
    cfg = configure(algorithm="iib_lpo", questions_per_step=4)
    assert cfg.sampler == "iib" and cfg.iib_latent != "none"
    with pytest.raises(DistError, match="sampler=iib fits its CVAE on the whole step's trees: set dp_exact=true"):
        check_data_parallel(cfg, 2)
    latent = cfg.model_copy(update={"dp_exact": True, "data_parallel": "fsdp2"})
    with pytest.raises(DistError, match="sampler=iib with latents trains a module outside the policy"):
        check_data_parallel(latent, 2)
    check_data_parallel(cfg.model_copy(update={"dp_exact": True, "data_parallel": "ddp"}), 2)  # runs
    check_data_parallel(configure(questions_per_step=4), 2)  # ib_tpo: no sampler need
