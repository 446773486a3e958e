"""Micro-batching gives the gradient of one pass; chunked log-probs equal the full forward; the logp gap and TIS."""

import itertools
from dataclasses import replace

import pytest
import torch

from ibtpo.algos.losses import (LOSS_AGG_MODES, POLICY_LOSSES, REGULARIZERS, TOKEN_SELECTORS, LossConfig,
                                agg_denominator, agg_loss)
from ibtpo.testbed.model import build_tiny_model
from ibtpo.core.lm import decoder_and_head
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import logprobs_in_chunks
from ibtpo.training.update import LogpGap, MiniBatch, accumulate_gradients, truncated_is_weights

ROWS, WIDTH = 6, 14


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=3)


def _batch(vocab: int, seed: int = 0):
    """Right-padded ids with rows of different lengths (one row with no response token) and per-token tensors."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (ROWS, WIDTH), generator=g)
    lengths = torch.tensor([14, 9, 12, 5, 14, 7])
    attn = (torch.arange(WIDTH)[None, :] < lengths[:, None]).long()
    resp = torch.zeros(ROWS, WIDTH - 1)
    for i, n in enumerate(lengths.tolist()):
        resp[i, 3:n - 1] = 1.0
    resp[3] = 0.0  # a fully masked row: counted by no aggregation
    old = -torch.rand(ROWS, WIDTH - 1, generator=g) * 3
    adv = torch.randn(ROWS, generator=g)[:, None].expand(-1, WIDTH - 1) * resp
    ref = -torch.rand(ROWS, WIDTH - 1, generator=g) * 3
    return ids, attn, resp, old, adv.contiguous(), ref


def _grads(model, ids, attn, mb: MiniBatch, loss_name, regs, cfg, micro):
    model.zero_grad(set_to_none=True)

    def forward(rows):
        return token_logprobs(model, ids[rows], attn[rows], 1.0)

    torch.manual_seed(123)  # clip_cov draws from the global RNG
    metrics = accumulate_gradients(forward, mb, POLICY_LOSSES.get(loss_name), [REGULARIZERS.get(r) for r in regs],
                                   cfg, micro, TOKEN_SELECTORS.get(loss_name))
    return {n: p.grad.clone() for n, p in model.named_parameters()}, metrics


CASES = list(itertools.product(LOSS_AGG_MODES, ["ppo_clip", "clip_cov", "kl_cov"], [(), ("kl", "entropy", "ibro")]))


@pytest.mark.parametrize("mode,loss_name,regs", CASES, ids=lambda c: str(c))
def test_micro_batches_give_the_gradient_of_one_pass(model, tokenizer, mode, loss_name, regs):
    ids, attn, resp, old, adv, ref = _batch(len(tokenizer))
    # clip_cov's band is set wide so that some tokens are really dropped; kl_cov selects 10% of the tokens
    cfg = LossConfig(loss_agg_mode=mode, norm_length=16, kl_coef=0.1, entropy_coef=0.05, ibro_coef=0.05,
                     clip_cov_ratio=0.2, clip_cov_lb=-1e9, clip_cov_ub=1e9, kl_cov_ratio=0.1, epsilon=0.1)
    mb = MiniBatch(mask=resp, old_logp=old, advantages=adv, pg_advantages=adv, ref_logp=ref)
    full, full_m = _grads(model, ids, attn, mb, loss_name, regs, cfg, 0)
    assert any(g.abs().sum() > 0 for g in full.values())
    for micro in (1, 2, ROWS):
        split, split_m = _grads(model, ids, attn, mb, loss_name, regs, cfg, micro)
        for name, g in full.items():
            torch.testing.assert_close(split[name], g, rtol=1e-4, atol=1e-6, msg=f"{name} micro={micro}")
        for key, value in full_m.items():
            assert split_m[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, micro)


def test_agg_denominator_ignores_fully_masked_rows():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    vals = torch.ones(3, 3)
    assert float(agg_denominator(mask, "token-mean")) == 3
    assert float(agg_denominator(mask, "seq-mean-token-mean")) == 2
    assert float(agg_denominator(mask, "seq-mean-token-sum-norm", 4)) == 8
    # the masked row does not dilute the sum-norm mode any more (it did: 3 / (3 * 4))
    assert float(agg_loss(vals, mask, "seq-mean-token-sum-norm", 4)) == pytest.approx(3 / 8)
    # with a whole mini-batch's denominator, the parts add up to the whole
    denominator = agg_denominator(mask, "seq-mean-token-mean")
    parts = [agg_loss(vals[i:i + 1], mask[i:i + 1], "seq-mean-token-mean", 1, denominator) for i in range(3)]
    assert float(sum(parts)) == pytest.approx(float(agg_loss(vals, mask, "seq-mean-token-mean")))


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_chunked_logprobs_equal_the_full_forward(model, tokenizer, chunk):
    assert decoder_and_head(model) is not None  # the chunked path is the one exercised
    ids, attn, *_ = _batch(len(tokenizer), seed=1)
    ref_lp, ref_ent = token_logprobs(model, ids, attn, 0.7, chunk_tokens=10**9)  # one full forward
    lp, ent = token_logprobs(model, ids, attn, 0.7, chunk_tokens=chunk)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)


def test_chunked_logprobs_have_the_same_gradient(model, tokenizer):
    ids, attn, resp, *_ = _batch(len(tokenizer), seed=2)
    grads = []
    for chunk in (10**9, 5):
        model.zero_grad(set_to_none=True)
        lp, ent = token_logprobs(model, ids, attn, 1.0, chunk_tokens=chunk)
        ((lp * resp).sum() + 0.1 * (ent * resp).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


def test_chunked_logprobs_with_lora(tiny_model_dir, tokenizer):
    from ibtpo.training.models import add_lora, load_policy
    policy, _ = load_policy(str(tiny_model_dir), "float32")
    policy = add_lora(policy, 4, 8.0, 0.0, "all-linear")
    ids, attn, *_ = _batch(len(tokenizer), seed=3)
    full = token_logprobs(policy, ids, attn, 1.0, chunk_tokens=10**9)[0]
    chunked = token_logprobs(policy, ids, attn, 1.0, chunk_tokens=3)[0]
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_logprobs_in_chunks_match_one_pass(model, tokenizer):
    ids, attn, *_ = _batch(len(tokenizer), seed=4)
    whole = token_logprobs(model, ids, attn, 1.0)[0].detach()
    valid = attn[:, 1:].bool()
    for rows in (0, 1, 4):
        got = logprobs_in_chunks(model, ids, attn, 1.0, rows, torch.device("cpu"))
        assert got.shape == whole.shape
        torch.testing.assert_close(got[valid], whole[valid], rtol=1e-5, atol=1e-5)


def test_logp_gap_and_truncated_is():
    behaviour = torch.tensor([[-1.0, -2.0, -3.0]])
    trained = torch.tensor([[-1.1, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    gap = LogpGap()
    assert gap.metrics() == {}
    gap.add(behaviour, trained, mask)
    m = gap.metrics()
    assert m["rollout/logp_diff_mean"] == pytest.approx(0.55)
    assert m["rollout/logp_diff_max"] == pytest.approx(1.0)
    w, wm = truncated_is_weights(trained, behaviour, mask, cap=2.0)
    assert w[0, 0] == pytest.approx(torch.tensor(-0.1).exp().item())
    assert w[0, 1] == pytest.approx(2.0)  # e^1 capped
    assert w[0, 2] == 1.0  # off the response
    assert wm["rollout/tis_clipped_frac"] == pytest.approx(0.5)


def test_loss_config_replace_keeps_other_fields():
    cfg = LossConfig(epsilon=0.3)
    assert replace(cfg, agg_denominator=5.0).epsilon == 0.3
