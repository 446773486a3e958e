"""Per-path attention of packed rows (training/tree_attention.py): the same log-probs and gradients as the dense tree
mask and as flattened rows, no attention across trees, the wrapped sdpa function unchanged for every other call."""

import random

import pytest
import torch

from ibtpo.core.tree import Tree, compute_p_hat
from ibtpo.testbed.model import build_tiny_model
from ibtpo.training.batch import flatten_paths, padded_logprobs
from ibtpo.training.packed import NO_SPLIT, pack_paths, plan_parts, row_budget
from ibtpo.training.packed_forward import attention_kind, packed_logprobs
from ibtpo.training.tree_attention import block_plan, bucket_blocks, install

CPU = torch.device("cpu")


def _random_tree(rng: random.Random, name: str, vocab: int) -> Tree:
    """A prompt of 2-6 tokens, then 2-3 levels of 1-3 children of 1-5 tokens each (sibling forks at every level)."""
    tree = Tree(name, [rng.randrange(3, vocab) for _ in range(rng.randint(2, 6))])
    frontier = [tree.root]
    for depth in range(rng.randint(2, 3)):
        nxt = []
        for node in frontier:
            for _ in range(rng.randint(1, 3)):
                n = rng.randint(1, 5)
                nxt.append(node.add_child([rng.randrange(3, vocab) for _ in range(n)], [-0.5] * n, [0.0] * n))
        frontier = nxt
    for leaf in frontier:
        leaf.reward = float(rng.random() < 0.5)
    compute_p_hat(tree.root)
    return tree


@pytest.fixture(scope="module")
def model_and_batch(tokenizer):
    torch.manual_seed(0)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    rng = random.Random(0)
    trees = [_random_tree(rng, f"q{i}", len(tokenizer)) for i in range(4)]
    return model, flatten_paths(trees, tokenizer.pad_token_id), tokenizer


def test_buckets_partition_blocks_within_the_padding_bound():
    lengths = [50, 7, 49, 3, 48, 30, 29, 1, 50]
    groups = bucket_blocks(lengths, slack=1.25)
    assert sorted(b for g in groups for b in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[b] for b in g) ** 2 <= 1.25 * sum(lengths[b] ** 2 for b in g)
    assert len(groups) < len(lengths)  # similar lengths share a bucket


def test_every_position_takes_its_output_from_one_block(model_and_batch):
    _, batch, _ = model_and_batch
    packed = pack_paths(batch, torch.arange(batch.size), 40)  # several rows, with padding
    plan = block_plan(packed.blocks, packed.input_ids.numel())
    total = sum(b.numel() for b in plan.buckets)
    owned = plan.out_index[plan.out_index < total]
    assert owned.numel() == packed.tokens and owned.unique().numel() == packed.tokens  # each real token once
    assert int((plan.out_index == total).sum()) == packed.input_ids.numel() - packed.tokens  # padding: the zero row


def test_one_row_packs_without_padding_and_splits_only_for_the_budget(model_and_batch):
    _, batch, _ = model_and_batch
    rows = torch.arange(batch.size)
    assert row_budget(batch, 0, 0, one_row=True)[0] == NO_SPLIT
    width = int(batch.attention_mask.sum(-1).max())
    assert row_budget(batch, 0, 3, one_row=True) == (3 * width, 3 * width)
    packed = pack_paths(batch, rows, NO_SPLIT, one_row=True)
    assert packed.shape[0] == 1 and packed.shape[1] == packed.tokens
    parts = plan_parts(batch, rows, 3 * width, 3 * width, one_row=True)
    assert sorted(torch.cat(parts).tolist()) == rows.tolist() and len(parts) > 1
    for part in parts:
        assert pack_paths(batch, part, 3 * width, one_row=True).tokens <= 3 * width


@pytest.mark.parametrize("row_tokens", [0, 25])
def test_blocks_equal_dense_mask_and_flattened_with_gradients(model_and_batch, row_tokens):
    model, batch, _ = model_and_batch
    assert attention_kind(model) == "blocks"
    rows = torch.arange(batch.size)
    m = batch.response_mask.bool()
    results = {}
    for name, kind, single in (("dense", "bool", False), ("blocks", "blocks", True), ("blocks_rows", "blocks", False)):
        budget = row_budget(batch, row_tokens, 0, single)[0]
        model.zero_grad()
        logp, ent = packed_logprobs(model, pack_paths(batch, rows, budget, one_row=single), 1.0, CPU, kind=kind)
        (logp[m].sum() + 0.1 * ent[m].sum()).backward()
        results[name] = (logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    flat = padded_logprobs(model, batch.input_ids, batch.attention_mask, rows, 1.0, CPU)
    for name in ("blocks", "blocks_rows"):
        for a, b in zip(results["dense"][:2], results[name][:2]):
            torch.testing.assert_close(b[m], a[m], atol=2e-5, rtol=1e-5)
        for key, grad in results["dense"][2].items():
            torch.testing.assert_close(results[name][2][key], grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(results["blocks"][0][m], flat[0].detach()[m], atol=2e-5, rtol=1e-5)


def test_no_attention_across_trees_in_one_row(model_and_batch, tokenizer):
    model = model_and_batch[0]
    rng = random.Random(1)
    mine = _random_tree(rng, "mine", len(tokenizer))
    others = [[_random_tree(rng, f"o{k}{i}", len(tokenizer)) for i in range(2)] for k in range(2)]
    got = []
    for k, (a, b) in enumerate(others):  # the same tree between two different neighbours
        one = flatten_paths([a, mine, b], tokenizer.pad_token_id)
        with torch.no_grad():
            logp = packed_logprobs(model, pack_paths(one, torch.arange(one.size), NO_SPLIT, one_row=True), 1.0,
                                   CPU)[0]
        assert pack_paths(one, torch.arange(one.size), NO_SPLIT, one_row=True).shape[0] == 1  # all in one row
        rows = torch.tensor([any(leaf is x for x in mine.leaves()) for leaf in one.leaves])
        got.append((logp[rows], one.response_mask[rows].bool()))
    (x, mx), (y, my) = got  # batch widths differ: compare the response tokens, in order
    torch.testing.assert_close(y[my], x[mx], atol=1e-6, rtol=0)


def test_wrapped_sdpa_is_unchanged_for_other_calls(model_and_batch):
    model, batch, _ = model_and_batch
    with torch.no_grad():
        before = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        install()
        after = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(before, after)


def test_a_model_whose_attention_ignores_the_blocks_is_refused(model_and_batch, tokenizer):
    _, batch, _ = model_and_batch
    eager = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=0)
    eager.config._attn_implementation = "eager"
    packed = pack_paths(batch, torch.arange(batch.size), NO_SPLIT, one_row=True)
    with pytest.raises(ValueError, match="path blocks"):
        packed_logprobs(eager, packed, 1.0, CPU, kind="blocks")
