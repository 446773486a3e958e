"""The static backend on CPU against the eager engine (the reference): decode forward, expand, every sampler."""

import random
from types import SimpleNamespace

import pytest
import torch

from ibtpo.backends.contract import RolloutBackend
from ibtpo.backends.factory import make_backend, resolve_backend_name
from ibtpo.backends.contract import Request
from ibtpo.backends.eager import Engine
from ibtpo.rollout.samplers import GrowContext, TreeShape, grow_trees, sampler_options
from ibtpo.core.sampling import SamplingParams
from ibtpo.backends.static import StaticBackend
from ibtpo.backends.static_forward import StaticDecoder, supports
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree import Tree
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is as fast and immune to load

CAP = 24
GREEDY = SamplingParams(max_new_tokens=CAP, greedy=True)


def prompts(tokenizer, k=3):
    return [tokenizer(f"Q:{3 + i}+{4 * i}+5{'9' * i}\n\n", add_special_tokens=False)["input_ids"] for i in range(k)]


def static(model, tokenizer, params=GREEDY, **kw):
    """A static backend with few slots and small buckets, so that refills, moves and bucket changes all happen."""
    kw = {"max_rows": 4, "check_every": 3, "ctx_step": 8, **kw}
    return StaticBackend(model, params, tokenizer.eos_token_id, tokenizer.pad_token_id, **kw)


def eager(model, tokenizer, params=GREEDY, reuse=True):
    return Engine(model, params, tokenizer.eos_token_id, tokenizer.pad_token_id, prefix_reuse=reuse)


def test_both_backends_satisfy_the_boundary(tiny_model, tokenizer):
    assert isinstance(static(tiny_model, tokenizer), RolloutBackend)
    assert isinstance(eager(tiny_model, tokenizer), RolloutBackend)


def test_decode_step_matches_a_full_forward(tiny_model, tokenizer):
    """Rows of different lengths in slots: the step's logits equal the transformers forward of each whole sequence,
    and each row's new key/value lands at its own column."""
    seqs = [s + [7] * i for i, s in enumerate(prompts(tokenizer))]
    dec = StaticDecoder(tiny_model)
    keys, values = dec.alloc(len(seqs) + 1, 40)
    with torch.no_grad():
        for slot, s in enumerate(seqs):  # prefix minus its last token, one row at a time (no padding involved)
            out = tiny_model(input_ids=torch.tensor([s[:-1]]), use_cache=True)
            for i, layer in enumerate(out.past_key_values.layers):
                keys[i, slot, :, :len(s) - 1] = layer.keys[0]
                values[i, slot, :, :len(s) - 1] = layer.values[0]
        tokens = torch.tensor([s[-1] for s in seqs] + [0])
        pos = torch.tensor([len(s) - 1 for s in seqs] + [0])
        logits = dec(keys, values, tokens, pos, torch.zeros(len(tokens), dec.hidden), ctx=32)
        for slot, s in enumerate(seqs):
            full = tiny_model(input_ids=torch.tensor([s]), use_cache=True)
            assert torch.allclose(logits[slot], full.logits[0, -1], atol=1e-5)
            for i, layer in enumerate(full.past_key_values.layers):
                assert torch.allclose(keys[i, slot, :, :len(s)], layer.keys[0], atol=1e-5)
                assert torch.allclose(values[i, slot, :, :len(s)], layer.values[0], atol=1e-5)
                assert not keys[i, slot, :, len(s):].any()  # nothing written past the row's own column


def test_float32_scores_path_reshapes_correctly(tiny_model, tokenizer, monkeypatch):
    """The half-precision path (scores from ``bmm(out_dtype=float32)``, CUDA only) gives the same logits; on CPU the
    out_dtype is emulated, which checks the reshapes of the key slots around it."""
    dec = StaticDecoder(tiny_model)
    keys, values = dec.alloc(3, 16)
    keys.normal_(generator=torch.Generator().manual_seed(0))
    values.normal_(generator=torch.Generator().manual_seed(1))
    args = (torch.tensor([5, 6, 7]), torch.tensor([3, 9, 0]), torch.zeros(3, dec.hidden))
    with torch.no_grad():
        plain = dec(keys.clone(), values.clone(), *args, ctx=12)
        bmm = torch.bmm
        monkeypatch.setattr(torch, "bmm", lambda a, b, out_dtype=None: bmm(a, b).to(out_dtype or a.dtype))
        dec.fp32_scores = True
        fp32 = dec(keys.clone(), values.clone(), *args, ctx=12)
    assert torch.allclose(plain, fp32, atol=1e-6)


def expand_both(model, tokenizer, make_requests, params=GREEDY, **kw):
    outs = []
    for backend in (eager(model, tokenizer, params), static(model, tokenizer, params, **kw)):
        outs.append(backend.expand(make_requests()))
    return outs


def assert_same_groups(a, b, tol=1e-5):
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert [[c.finished for c in g] for g in a] == [[c.finished for c in g] for g in b]
    for ga, gb in zip(a, b):
        for ca, cb in zip(ga, gb):
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=tol)
            assert ca.entropies == pytest.approx(cb.entropies, abs=tol)


def test_greedy_expand_equals_eager_with_refills(tiny_model, tokenizer):
    """More rows than slots, mixed limits and group sizes, an empty request: same rows as the eager engine."""
    ps = prompts(tokenizer)

    def requests():
        trees = [Tree(question_id=str(i), prompt_ids=p) for i, p in enumerate(ps)]
        return [Request(trees[0], trees[0].root, 3, CAP), Request(trees[1], trees[1].root, 0, CAP),
                Request(trees[1], trees[1].root, 2, 5), Request(trees[2], trees[2].root, 4, 1)]

    backend = static(tiny_model, tokenizer)
    a = eager(tiny_model, tokenizer).expand(requests())
    b = backend.expand(requests())
    assert [len(g) for g in b] == [3, 0, 2, 4]
    assert_same_groups(a, b)
    assert backend.slots == 4 and backend.stats["prefill_rows"] == 3  # each prompt prefilled once, 9 rows in 4 slots


def test_forks_from_stored_caches_equal_eager(tiny_model, tokenizer):
    """Continuing a node from the stored segments (no prefill) gives the eager engine's rows and log-probs."""
    p = prompts(tokenizer, 1)[0]
    runs = []
    for backend in (eager(tiny_model, tokenizer), static(tiny_model, tokenizer)):
        t = Tree(question_id="x", prompt_ids=p)
        (group,) = backend.expand([Request(t, t.root, 1, CAP)])
        c = group[0]
        node = t.root.add_child(c.token_ids[:5], c.logprobs[:5], c.entropies[:5])
        backend.adopt(node, c, 0, 5)
        tail = node.split(2)
        backend.split(node, tail, 2)
        runs.append(backend.expand([Request(t, node, 2, 6), Request(t, tail, 1, 6), Request(t, t.root, 1, 3)]))
        if isinstance(backend, StaticBackend):
            assert backend.stats["prefill_rows"] == 1  # only the first call's prompt: the forks copied caches
    assert_same_groups(*runs)


def test_latent_offsets_equal_eager(tiny_model, tokenizer):
    p = prompts(tokenizer, 2)
    off = torch.randn((2, tiny_model.config.hidden_size), generator=torch.Generator().manual_seed(0))

    def requests():
        trees = [Tree(question_id=str(i), prompt_ids=q) for i, q in enumerate(p)]
        return [Request(trees[0], trees[0].root, 1, CAP, embed_offset=off[:1]),
                Request(trees[1], trees[1].root, 1, CAP, embed_offset=off[1:])]

    a, b = expand_both(tiny_model, tokenizer, requests)
    assert_same_groups(a, b)
    (group,) = static(tiny_model, tokenizer).expand(requests()[:1])
    assert group[0].kv is None  # rows with an offset keep no cache


SAMPLERS = ["independent", "ib", "entropy", "random", "fixed_width", "iib"]


def grow(backend, tokenizer, sampler, seed=0):
    ps = prompts(tokenizer)
    shape = TreeShape(b0=3, rounds=4, k=2, b=2)
    settings = SimpleNamespace(tree_min_room=3, treepo_segment_length=5, treepo_width=2, treepo_max_depth=3,
                               iib_fork_top=0.2)

    def parity(tree, leaves):
        for leaf in leaves:
            leaf.reward = float(sum(Tree.completion(leaf)[0]) % 2 == 0)

    ctx = GrowContext(backend, StepSplitter(tokenizer, min_step_tokens=2), shape, CAP, parity, random.Random(seed),
                      options=sampler_options(sampler, settings))
    return grow_trees(sampler, ctx, ps, [str(i) for i in range(len(ps))], [{}] * len(ps))


def leaves_of(trees):
    """Per tree, its trajectories as (tokens, reward, log-probs), sorted: greedy rows from one prefix are identical,
    so a rule may pick either of two identical siblings (their scores differ by float noise only); what grew is the
    same."""
    return [sorted((Tree.completion(x)[0], x.reward, Tree.completion(x)[1]) for x in t.leaves()) for t in trees]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_grows_the_same_trees_greedy(tiny_model, tokenizer, sampler):
    """Greedy decoding: the static backend grows the eager engine's trees (trajectories, rewards, node counts)."""
    ref = grow(eager(tiny_model, tokenizer), tokenizer, sampler)
    backend = static(tiny_model, tokenizer)
    got = grow(backend, tokenizer, sampler)
    assert [len(t.nodes()) for t in ref] == [len(t.nodes()) for t in got]
    for la, lb in zip(leaves_of(ref), leaves_of(got)):
        assert [x[:2] for x in la] == [x[:2] for x in lb]
        for (_, _, lpa), (_, _, lpb) in zip(la, lb):
            assert lpa == pytest.approx(lpb, abs=1e-5)
    assert len(backend.store) == 0  # released after the growth


@pytest.mark.parametrize("sampler", ["ib", "entropy", "fixed_width"])
def test_sampled_trees_have_the_policys_logprobs(tiny_model, tokenizer, sampler):
    """Sampling (top-k, T = 1): every recorded behaviour log-prob equals a training forward of the whole path.

    The random stream is not the eager engine's (rows draw per slot), so trees are compared through this invariant
    and the draw distribution is checked separately."""
    params = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=CAP)
    backend = static(tiny_model, tokenizer, params, generator=torch.Generator().manual_seed(0))
    trees = grow(backend, tokenizer, sampler)
    batch = flatten_paths(trees, tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(tiny_model, batch.input_ids, batch.attention_mask)
    mask = batch.response_mask.bool()
    assert torch.allclose(logp[mask], batch.old_logp[mask], atol=1e-5)


def test_live_rows_move_to_low_slots(tiny_model, tokenizer):
    """Three short rows end first; the long row in the highest slot moves to slot 0 (a batch of 1), same outputs."""
    ps = prompts(tokenizer, 2)

    def requests():
        trees = [Tree(question_id=str(i), prompt_ids=p) for i, p in enumerate(ps)]
        return [Request(trees[0], trees[0].root, 3, 2), Request(trees[1], trees[1].root, 1, CAP)]

    backend = static(tiny_model, tokenizer)
    got = backend.expand(requests())
    assert backend.stats["moves"] == 1
    assert_same_groups(eager(tiny_model, tokenizer).expand(requests()), got)


def test_draws_follow_the_filtered_distribution(tiny_model, tokenizer):
    """2,000 one-token rows at T = 0.7, top-p 0.9: token frequencies match the nucleus-renormalised probabilities."""
    from ibtpo.core.sampling import filter_logits

    p = prompts(tokenizer, 1)[0]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=1)
    backend = static(tiny_model, tokenizer, params, max_rows=512, generator=torch.Generator().manual_seed(1))
    t = Tree(question_id="x", prompt_ids=p)
    n = 2000
    (group,) = backend.expand([Request(t, t.root, n, 1)])
    with torch.no_grad():
        logits = tiny_model(input_ids=torch.tensor([p])).logits[0, -1] / 0.7
    want = filter_logits(logits[None], 0, 0.9).softmax(-1)[0]
    counts = torch.bincount(torch.tensor([c.token_ids[0] for c in group]), minlength=want.shape[0]).float()
    assert counts[want == 0].sum() == 0  # nothing outside the nucleus
    sd = (want * (1 - want) / n).sqrt()
    assert ((counts / n - want).abs() <= 4.5 * sd + 1e-3).all()
    lp = logits.log_softmax(-1)
    assert all(c.logprobs[0] == pytest.approx(float(lp[c.token_ids[0]]), abs=1e-5) for c in group[:50])


def test_top_k_one_is_greedy(tiny_model, tokenizer):
    ps = prompts(tokenizer)

    def requests():
        trees = [Tree(question_id=str(i), prompt_ids=p) for i, p in enumerate(ps)]
        return [Request(t, t.root, 2, CAP) for t in trees]

    a = static(tiny_model, tokenizer).expand(requests())
    b = static(tiny_model, tokenizer, SamplingParams(top_k=1, max_new_tokens=CAP),
               generator=torch.Generator().manual_seed(3)).expand(requests())
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]


def test_budget_and_backend_choice(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="slots_gib"):
        t = Tree(question_id="x", prompt_ids=prompts(tokenizer, 1)[0])
        static(tiny_model, tokenizer, slots_gib=1e-9).expand([Request(t, t.root, 1, CAP)])
    assert resolve_backend_name("auto", tiny_model) == "eager"  # CPU
    assert resolve_backend_name("static", tiny_model) == "static"
    assert isinstance(make_backend("static", tiny_model, GREEDY, 1, 0), StaticBackend)
    with pytest.raises(ValueError, match="rollout backend"):
        resolve_backend_name("fast", tiny_model)
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50, n_positions=32))
    assert "gpt2" in supports(gpt2) and resolve_backend_name("auto", gpt2) == "eager"
    with pytest.raises(ValueError, match="static rollout backend"):
        make_backend("static", gpt2, GREEDY, 1, 0)


def test_sample_entry_point_matches_eager(tiny_model, tokenizer):
    from ibtpo.backends.factory import sample

    ps = prompts(tokenizer)
    a = sample(tiny_model, ps, GREEDY, tokenizer.eos_token_id, tokenizer.pad_token_id, n=2, backend="eager")
    b = sample(tiny_model, ps, GREEDY, tokenizer.eos_token_id, tokenizer.pad_token_id, n=2, backend="static")
    assert_same_groups(a, b)


def test_static_backend_is_reused_per_model_and_released(tiny_model, tokenizer):
    from ibtpo.backends.factory import release_static

    a = make_backend("static", tiny_model, GREEDY, tokenizer.eos_token_id, tokenizer.pad_token_id)
    t = Tree(question_id="x", prompt_ids=prompts(tokenizer, 1)[0])
    a.expand([Request(t, t.root, 2, 4)])
    params = SamplingParams(max_new_tokens=8, temperature=0.5)
    b = make_backend("static", tiny_model, params, tokenizer.eos_token_id, tokenizer.pad_token_id, prefix_reuse=False)
    assert b is a and b.params is params and not b.keep_kv and b.keys is not None  # buffers kept
    assert release_static(tiny_model) and a.keys is None and not release_static(tiny_model)
    assert make_backend("static", tiny_model, GREEDY, tokenizer.eos_token_id, tokenizer.pad_token_id) is not a


def test_resource_limits_of_the_sampling_params(tiny_model, tokenizer):
    """params.max_rows caps the slots; params.kv_budget_bytes bounds the node caches (refused forks prefill): the
    greedy trees stay the eager engine's."""
    params = SamplingParams(max_new_tokens=CAP, greedy=True, max_rows=3, kv_budget_bytes=20_000)
    backend = static(tiny_model, tokenizer, params, max_rows=0)
    got = grow(backend, tokenizer, "ib")
    ref = grow(eager(tiny_model, tokenizer), tokenizer, "ib")
    assert backend.slots == 3
    assert backend.store.refused > 0 and backend.store.peak_bytes <= 20_000
    assert backend.stats["prefill_rows"] > 3  # some forks re-encoded their prefix
    assert [[x[:2] for x in t] for t in leaves_of(ref)] == [[x[:2] for x in t] for t in leaves_of(got)]


def test_a_failed_graph_capture_falls_back_to_plain_decoding(tiny_model, tokenizer):
    """Asking for graphs where capture cannot work (CPU) costs speed only: a warning, then the same rows."""
    ps = prompts(tokenizer)

    def requests():
        trees = [Tree(question_id=str(i), prompt_ids=p) for i, p in enumerate(ps)]
        return [Request(t, t.root, 2, CAP) for t in trees]

    backend = static(tiny_model, tokenizer, use_graphs=True)
    with pytest.warns(UserWarning, match="graph capture failed"):
        got = backend.expand(requests())
    assert not backend.use_graphs and "graph_error" in backend.stats
    assert_same_groups(eager(tiny_model, tokenizer).expand(requests()), got)
