"""Resource limits of the eager engine: row chunks, the KV budget of the fork store, generators on the model's device."""

import random

import pytest
import torch

from ibtpo.backends.eager import Engine, KVStore, device_generator
from ibtpo.backends.factory import sample
from ibtpo.rollout.rules import BranchingOptions
from ibtpo.rollout.samplers import GrowContext, TreeShape, grow_trees
from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree import Tree

CAP = 20


def _prompts(tokenizer, n):
    return [tokenizer(f"Q:{3 + i}+{4 * i}+5\n\n", add_special_tokens=False)["input_ids"] for i in range(n)]


class RowCounter:
    """Wraps a model's forward to record the batch size of every call."""

    def __init__(self, model):
        self.sizes = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        self.sizes.append(x.shape[0])

    def remove(self):
        self.handle.remove()


def test_row_chunks_bound_the_batch_and_keep_greedy_outputs(tiny_model, tokenizer):
    prompts = _prompts(tokenizer, 4)
    whole = sample(tiny_model, prompts, SamplingParams(greedy=True, max_new_tokens=CAP), tokenizer.eos_token_id,
                   tokenizer.pad_token_id, n=3)
    counter = RowCounter(tiny_model)
    try:
        chunked = sample(tiny_model, prompts, SamplingParams(greedy=True, max_new_tokens=CAP, max_rows=5),
                         tokenizer.eos_token_id, tokenizer.pad_token_id, n=3)
    finally:
        counter.remove()
    assert max(counter.sizes) <= 5 and len(counter.sizes) > CAP  # 12 rows ran as 5 + 5 + 2
    assert [len(g) for g in chunked] == [3] * 4
    for g_whole, g_chunk in zip(whole, chunked):
        for a, b in zip(g_whole, g_chunk):
            assert a.token_ids == b.token_ids and a.finished == b.finished
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_row_chunks_keep_the_sampling_distribution_shape(tiny_model, tokenizer):
    """Sampled rows in chunks: every request still gets its n rows, each within the cap."""
    prompts = _prompts(tokenizer, 3)
    out = sample(tiny_model, prompts, SamplingParams(max_new_tokens=CAP, max_rows=4), tokenizer.eos_token_id,
                 tokenizer.pad_token_id, torch.Generator().manual_seed(0), n=5)
    assert [len(g) for g in out] == [5, 5, 5]
    assert all(0 < len(c.token_ids) <= CAP for g in out for c in g)


def _grow(model, tokenizer, budget, sampler="ib"):
    engine = Engine(model, SamplingParams(greedy=True, max_new_tokens=CAP, kv_budget_bytes=budget),
                    tokenizer.eos_token_id, tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    shape = TreeShape(b0=2, rounds=4, k=2, b=1)

    def reward(tree, leaves):
        for leaf in leaves:
            leaf.reward = float(sum(Tree.completion(leaf)[0]) % 2 == 0)

    ctx = GrowContext(engine, StepSplitter(tokenizer, min_step_tokens=2), shape, CAP, reward, random.Random(0),
                      options=BranchingOptions(min_room=3))
    trees = grow_trees(sampler, ctx, _prompts(tokenizer, 3), ["0", "1", "2"], [{}] * 3)
    return trees, engine


def test_kv_budget_only_trades_compute_for_memory(tiny_model, tokenizer):
    full, e_full = _grow(tiny_model, tokenizer, 0)
    tight, e_tight = _grow(tiny_model, tokenizer, 1)  # nothing fits: every fork re-encodes its prefix
    assert e_full.store.peak_bytes > 0 and e_tight.store.peak_bytes == 0 and e_tight.store.refused > 0
    for a, b in zip(full, tight):
        la, lb = a.leaves(), b.leaves()
        assert [Tree.completion(x)[0] for x in la] == [Tree.completion(x)[0] for x in lb]
        for x, y in zip(la, lb):
            assert Tree.completion(x)[1] == pytest.approx(Tree.completion(y)[1], abs=1e-5)
        assert a.meta["reused_prefix_tokens"] > b.meta.get("reused_prefix_tokens", 0)


def test_kv_store_accounts_bytes():
    store = KVStore(budget_bytes=1000)
    root = Tree(question_id="q", prompt_ids=[1, 2]).root
    kv = [(torch.zeros(1, 10, 4), torch.zeros(1, 10, 4))]  # 2 x 40 floats = 320 bytes
    store.put(root, kv)
    assert store.bytes == 320 and store.peak_bytes == 320
    child = root.add_child([5, 6], [0.0, 0.0], [0.0, 0.0])
    store.put(child, [(torch.zeros(1, 40, 4), torch.zeros(1, 40, 4))])  # 1280 bytes: over the budget
    assert store.refused == 1 and store.length(child) == 0 and store.bytes == 320
    store.clear()
    assert store.bytes == 0 and store.peak_bytes == 320


def test_device_generator_keeps_a_generator_on_its_device():
    g = torch.Generator().manual_seed(3)
    assert device_generator(g, torch.device("cpu")) is g
    assert device_generator(None, torch.device("cpu")) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_is_seeded_from_the_cpu_generator(tiny_model, tokenizer):
    model = tiny_model.to("cuda")
    try:
        runs = []
        for _ in range(2):
            g = torch.Generator().manual_seed(7)
            out = sample(model, _prompts(tokenizer, 2), SamplingParams(max_new_tokens=CAP), tokenizer.eos_token_id,
                         tokenizer.pad_token_id, g, n=3)
            runs.append([c.token_ids for grp in out for c in grp])
        assert runs[0] == runs[1]
        engine = Engine(model, SamplingParams(), 1, 0, torch.Generator().manual_seed(0))
        assert engine.generator.device.type == "cuda"
    finally:
        tiny_model.to("cpu")
