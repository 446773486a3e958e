import torch

from ibtpo.backends.factory import sample
from ibtpo.core.sampling import SamplingParams, filter_logits, left_pad
from ibtpo.core.lm import token_logprobs


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]  # keep >= 1


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def _prompts(tok):
    return [tok("Q:3+4+5\n\n", add_special_tokens=False)["input_ids"], tok("Q:12+1\n\n", add_special_tokens=False)["input_ids"]]


def test_sample_shapes_caps_and_eos(tiny_model, tokenizer):
    params = SamplingParams(temperature=1.0, max_new_tokens=7)
    groups = sample(tiny_model, _prompts(tokenizer), params, tokenizer.eos_token_id, tokenizer.pad_token_id,
                    torch.Generator().manual_seed(0), n=3)
    assert len(groups) == 2 and all(len(g) == 3 for g in groups)
    for g in (x for grp in groups for x in grp):
        assert 1 <= len(g.token_ids) <= 7
        assert len(g.logprobs) == len(g.entropies) == len(g.token_ids)
        assert g.finished == (g.token_ids[-1] == tokenizer.eos_token_id)
        assert tokenizer.eos_token_id not in g.token_ids[:-1]
        assert not g.finished or len(g.token_ids) <= 7
        if not g.finished:
            assert len(g.token_ids) == 7
        assert all(lp <= 0 for lp in g.logprobs) and all(e >= 0 for e in g.entropies)


def test_sampling_is_seeded(tiny_model, tokenizer):
    p = SamplingParams(max_new_tokens=6)
    a = sample(tiny_model, _prompts(tokenizer), p, 1, 0, torch.Generator().manual_seed(3), n=2)
    b = sample(tiny_model, _prompts(tokenizer), p, 1, 0, torch.Generator().manual_seed(3), n=2)
    assert [[g.token_ids for g in grp] for grp in a] == [[g.token_ids for g in grp] for grp in b]


def test_behaviour_logprobs_match_training_recompute(tiny_model, tokenizer):
    """The log-probs recorded while sampling (cached, left-padded) equal a fresh right-padded forward."""
    prompts = _prompts(tokenizer)
    groups = sample(tiny_model, prompts, SamplingParams(temperature=0.7, max_new_tokens=8), tokenizer.eos_token_id,
                    tokenizer.pad_token_id, torch.Generator().manual_seed(1), n=2)
    for prompt, grp in zip(prompts, groups):
        for g in grp:
            ids = torch.tensor([prompt + g.token_ids])
            logp, ent = token_logprobs(tiny_model, ids, torch.ones_like(ids), temperature=0.7)
            start = len(prompt) - 1
            torch.testing.assert_close(logp[0, start:], torch.tensor(g.logprobs), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ent[0, start:], torch.tensor(g.entropies), atol=1e-5, rtol=1e-5)


def test_greedy_with_shared_prompt_cache_equals_separate_runs(tiny_model, tokenizer):
    """Branching one prompt's cache into n rows gives the same continuation as encoding it separately."""
    prompts = _prompts(tokenizer)
    p = SamplingParams(greedy=True, max_new_tokens=8)
    shared = sample(tiny_model, prompts, p, tokenizer.eos_token_id, tokenizer.pad_token_id, n=3)
    for prompt, grp in zip(prompts, shared):
        alone = sample(tiny_model, [prompt], p, tokenizer.eos_token_id, tokenizer.pad_token_id, n=1)[0][0]
        assert all(g.token_ids == alone.token_ids for g in grp)
