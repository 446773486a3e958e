"""Tree samplers on a tiny random model: invariants, exact token accounting, cache-reuse equivalence."""

import random
from types import SimpleNamespace

import pytest
import torch

from ibtpo.backends.eager import Engine
from ibtpo.rollout.samplers import GrowContext, TreeShape, grow_trees, sampler_options
from ibtpo.core.sampling import SamplingParams
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree import Tree
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths

SAMPLERS = ["independent", "ib", "entropy", "random", "fixed_width"]
CAP = 24
SETTINGS = SimpleNamespace(tree_min_room=3, treepo_segment_length=5, treepo_width=2, treepo_max_depth=3)
"""The run-config fields the samplers' own options are read from (``sampler_options``)."""


def parity_reward(tree, leaves):
    for leaf in leaves:
        leaf.reward = float(sum(Tree.completion(leaf)[0]) % 2 == 0)


class CountingEngine(Engine):
    """Records every request and every generated row."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls, self.generated, self.sequences = [], 0, {}

    def expand(self, requests):
        call = [(len(r.tree.prompt_ids) + r.node.end, r.n) for r in requests if r.n > 0 and r.limit > 0]
        prefixes = [Tree.completion(r.node)[0] if r.node.parent is not None else [] for r in requests]
        out = super().expand(requests)
        if call:
            self.calls.append(call)
        self.generated += sum(len(c.token_ids) for group in out for c in group)
        for r, prefix, group in zip(requests, prefixes, out):
            for c in group:  # what was generated, as a whole completion: the prefix then the new tokens
                self.sequences.setdefault(r.tree.question_id, []).append((prefix + c.token_ids, c.finished))
        return out


def grow(model, tokenizer, sampler, reuse=True, seed=0, shape=None, questions=3):
    prompts = [tokenizer(f"Q:{3 + i}+{4 * i}+5\n\n", add_special_tokens=False)["input_ids"] for i in range(questions)]
    engine = CountingEngine(model, SamplingParams(temperature=1.0, max_new_tokens=CAP), tokenizer.eos_token_id,
                            tokenizer.pad_token_id, torch.Generator().manual_seed(seed), prefix_reuse=reuse)
    shape = shape or TreeShape(b0=3, rounds=4, k=2, b=2)
    ctx = GrowContext(engine, StepSplitter(tokenizer, min_step_tokens=2), shape, CAP, parity_reward,
                      random.Random(seed), options=sampler_options(sampler, SETTINGS))
    trees = grow_trees(sampler, ctx, prompts, [str(i) for i in range(questions)], [{}] * questions)
    return trees, engine, shape


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_tree_invariants(tiny_model, tokenizer, sampler):
    trees, engine, shape = grow(tiny_model, tokenizer, sampler)
    eos = tokenizer.eos_token_id
    for t in trees:
        leaves = t.leaves()
        if sampler == "independent":
            assert len(leaves) == shape.b0
        elif sampler == "fixed_width":
            assert 1 <= len(leaves) <= shape.group_size
        else:
            assert len(leaves) == shape.group_size
        assert t.root.n_leaves == len(leaves)
        assert t.root.p_hat == pytest.approx(sum(leaf.reward for leaf in leaves) / len(leaves))
        for node in t.nodes():
            assert node.token_ids and len(node.token_ids) == len(node.logprobs) == len(node.entropies)
            assert node.n_leaves == sum(1 for x in leaves if node in x.lineage())
        for leaf in leaves:
            ids, lps, _ = Tree.completion(leaf)
            assert leaf.reward in (0.0, 1.0) and len(ids) <= CAP
            assert eos not in ids[:-1]
            assert leaf.finished == (ids[-1] == eos)
            assert leaf.finished or len(ids) == CAP
    assert not engine.store._kv  # caches are freed after the rollout
    for t in trees:  # every trajectory is exactly a generated sequence, and every ended sequence is a trajectory
        paths = sorted(Tree.completion(leaf)[0] for leaf in t.leaves())
        ended = sorted(seq for seq, fin in engine.sequences[t.question_id] if fin or len(seq) == CAP)
        assert paths == ended


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_exact_token_accounting(tiny_model, tokenizer, sampler):
    trees, engine, _ = grow(tiny_model, tokenizer, sampler)
    assert sum(t.new_tokens for t in trees) == engine.generated  # every generated token is in exactly one node
    encoded = sum(t.meta["encoded_prefix_tokens"] for t in trees)
    reused = sum(t.meta["reused_prefix_tokens"] for t in trees)
    first, later = engine.calls[0], [row for call in engine.calls[1:] for row in call]
    # first call: each prompt encoded once, its cache shared by its n rows
    assert all(length == len(t.prompt_ids) for (length, _), t in zip(first, trees))
    # later calls (forks, with reuse): a row re-feeds only the last token of its prefix and reuses the rest
    assert encoded == sum(length for length, _ in first) + sum(n for _, n in later)
    assert reused == sum((n - 1) * length for length, n in first) + sum(n * (length - 1) for length, n in later)
    stats = [t.stats() for t in trees]
    assert [s["new_tokens"] for s in stats] == [t.new_tokens for t in trees]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_reused_cache_matches_re_encoding(tiny_model, tokenizer, sampler):
    """Behaviour log-probs recorded while continuing from cached prefixes equal a full forward of each path, and
    growing with reuse gives the same trees as growing with re-encoded prefixes (same seed)."""
    trees, _, _ = grow(tiny_model, tokenizer, sampler, reuse=True)
    batch = flatten_paths(trees, tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask)
    mask = batch.response_mask.bool()
    assert torch.allclose(logp[mask], batch.old_logp[mask], atol=1e-5)
    again, _, _ = grow(tiny_model, tokenizer, sampler, reuse=False)
    assert [[Tree.completion(x)[0] for x in t.leaves()] for t in trees] == \
           [[Tree.completion(x)[0] for x in t.leaves()] for t in again]
    reused = [[Tree.completion(x)[1] for x in t.leaves()] for t in trees]
    encoded = [[Tree.completion(x)[1] for x in t.leaves()] for t in again]
    for a, b in zip(sum(reused, []), sum(encoded, [])):
        assert a == pytest.approx(b, abs=1e-5)


def test_fork_logits_from_cache_equal_re_encoding(tiny_model, tokenizer):
    """Directly: the next-token logits at a fork point, from a stored prefix cache and from re-encoding."""
    from ibtpo.backends.contract import Request
    from ibtpo.backends.eager import KVStore

    prompt = tokenizer("Q:3+4+5\n\n", add_special_tokens=False)["input_ids"]
    eng = Engine(tiny_model, SamplingParams(max_new_tokens=CAP, greedy=True), tokenizer.eos_token_id,
                 tokenizer.pad_token_id, torch.Generator().manual_seed(0), prefix_reuse=True)
    t = Tree(question_id="x", prompt_ids=prompt)
    (conts,) = eng.expand([Request(t, t.root, 1, CAP)])
    c = conts[0]
    if len(c.token_ids) < 3:
        pytest.skip("the random model ended too soon")
    node = t.root.add_child(c.token_ids[:2], c.logprobs[:2], c.entropies[:2])
    eng.store.put(node, KVStore().cut(c.kv, 0, 2))
    prefix = eng.store.prefix(t, node)
    assert prefix[0][0].shape[-2] == len(t.prompt_ids) + 1  # prompt + 2 tokens, minus the re-fed last one
    (from_cache,) = eng.expand([Request(t, node, 1, 1)])
    plain = Engine(tiny_model, SamplingParams(max_new_tokens=CAP, greedy=True), tokenizer.eos_token_id,
                   tokenizer.pad_token_id, prefix_reuse=False)
    (from_scratch,) = plain.expand([Request(t, node, 1, 1)])
    assert from_cache[0].token_ids == from_scratch[0].token_ids == [c.token_ids[2]]
    assert from_cache[0].logprobs[0] == pytest.approx(from_scratch[0].logprobs[0], abs=1e-5)
    assert from_cache[0].entropies[0] == pytest.approx(from_scratch[0].entropies[0], abs=1e-5)


def test_a_context_without_options_gets_the_samplers_registered_defaults(monkeypatch):
    """grow_trees hands the sampler the defaults of its options class when the context carries none."""
    from dataclasses import dataclass

    from ibtpo.rollout.samplers import SAMPLERS, register_sampler

    @dataclass(frozen=True)
    class Opts:
        width: int = 3

    seen = []

    def grow_one(ctx, trees):
        seen.append(ctx.options)
        for t in trees:
            t.root.add_child([1], [0.0], [0.0]).reward = 1.0

    monkeypatch.setattr(SAMPLERS, "_items", dict(SAMPLERS._items))
    monkeypatch.setattr(SAMPLERS, "_options", dict(SAMPLERS._options))
    register_sampler("opts_probe", grow_one, options=Opts)
    engine = SimpleNamespace(prefix_reuse=False, keep_kv=False, release=lambda: None)
    ctx = GrowContext(engine, None, TreeShape(b0=1, rounds=1), CAP, parity_reward, random.Random(0))
    grow_trees("opts_probe", ctx, [[1]], ["q"], [{}])
    grow_trees("opts_probe", GrowContext(engine, None, ctx.shape, CAP, parity_reward, random.Random(0),
                                         options=Opts(width=5)), [[1]], ["q"], [{}])
    assert seen == [Opts(), Opts(width=5)] and ctx.options is None  # the caller's context is left as it was
