"""The packed training layout (training/packed.py): the same loss and gradients as flattened rows, a tree mask that
isolates sibling branches, path positions, the shared-token weights, and the trainer passes that use it."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from ibtpo.algos.losses import REGULARIZERS, get_policy_loss
from ibtpo.config.components import loss_config
from ibtpo.config.schema import ConfigError, build_config
from ibtpo.training.batch import flatten_paths, padded_logprobs
from ibtpo.training.packed import (pack_paths, paths_through, plan_parts, row_budget, scale_gradient, segments,
                                   shared_token_weights)
from ibtpo.training.packed_forward import (choose_layout, dense_tree_mask, packed_logprobs, tree_mask,
                                           tree_mask_mod)
from ibtpo.training.trainer import Trainer
from ibtpo.core.tree import Tree, compute_p_hat

CPU = torch.device("cpu")
TREE = dict(sampler="entropy", tree_b0=2, tree_l=4, tree_k=1, tree_b=2, tree_min_room=2)


def parity_reward(prompts, completions, completion_ids, **_):
    """1 when the first generated token id is even: mixed groups from a random model."""
    return [float(ids[0] % 2 == 0) for ids in completion_ids]


def _trainer(tmp_path, model_dir, **over):
    cfg = build_config(None, {"algorithm": "grpo", "model": str(model_dir), "out_dir": str(tmp_path / "run"),
                              "questions_per_step": 3, "num_generations": 4, "max_completion_length": 12,
                              "tensorboard": False, "eval_questions": 4, "eval_k": 2, "learning_rate": 1e-3,
                              "threads": 1, **over})
    trainer = Trainer(cfg)
    trainer.reward_fn = parity_reward
    return trainer


def _hand_tree(prompt=(5, 6, 7)) -> Tree:
    """prompt -> a(2 tokens) -> {b(2) -> {d(1), e(2)}, c(3)}: leaves d, e, c."""
    tree = Tree("q", list(prompt))
    a = tree.root.add_child([10, 11], [-0.1, -0.2], [0.0, 0.0])
    b = a.add_child([12, 13], [-0.3, -0.4], [0.0, 0.0])
    c = a.add_child([14, 15, 16], [-0.5, -0.6, -0.7], [0.0, 0.0, 0.0])
    b.add_child([17], [-0.8], [0.0]).reward = 1.0
    b.add_child([18, 19], [-0.9, -1.0], [0.0, 0.0]).reward = 0.0
    c.reward = 1.0
    compute_p_hat(tree.root)
    return tree


# -- layout -----------------------------------------------------------------------------------------------------------
def test_hand_tree_layout_positions_and_mask():
    batch = flatten_paths([_hand_tree()], pad_id=0)
    packed = pack_paths(batch, torch.arange(batch.size), row_tokens=64)
    # prompt + a + b + d + e + c once, depth first
    assert packed.input_ids.tolist() == [[5, 6, 7, 10, 11, 12, 13, 17, 18, 19, 14, 15, 16]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 7, 8, 5, 6, 7]]
    assert packed.tokens == 13
    visible = dense_tree_mask(packed.visible_end)[0, 0]
    # e's second token (col 9) sees prompt, a, b, e's first token, not d (col 7) nor c
    assert visible[9].nonzero().squeeze(-1).tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    # c's last token (col 12) sees prompt, a and c only
    assert visible[12].nonzero().squeeze(-1).tolist() == [0, 1, 2, 3, 4, 10, 11, 12]
    # each visible set is exactly the token's own path prefix
    for i in range(batch.size):
        n = int(batch.attention_mask[i].sum())
        cols = packed.entry_pos[packed.path_entry[i, batch.response_mask[i].bool()]]
        path_cols = torch.cat([cols[:1].new_tensor([0, 1]), cols])  # prompt columns 0, 1 predict nothing
        assert packed.input_ids[0, path_cols].tolist() == batch.input_ids[i, :n - 1].tolist()
        last = int(path_cols[-1])
        assert visible[last].nonzero().squeeze(-1).tolist() == sorted(path_cols.tolist())


def test_entries_predict_each_paths_own_next_token():
    """A node's last token predicts a different first token for each child: one entry per (position, target)."""
    batch = flatten_paths([_hand_tree(), _hand_tree((8, 9))], pad_id=0)
    packed = pack_paths(batch, torch.arange(batch.size), row_tokens=64)
    m = batch.response_mask.bool()
    idx = packed.path_entry[m]
    assert (idx >= 0).all() and (packed.path_entry[~m] == -1).all()
    assert torch.equal(packed.entry_target[idx], batch.input_ids[:, 1:][m])  # the predicted token
    assert torch.equal(packed.input_ids.flatten()[packed.entry_pos[idx]], batch.input_ids[:, :-1][m])  # its input
    # response tokens of the flattened rows: 3 x (path lengths); entries: unique (position, target) pairs
    assert m.sum() == 2 * (5 + 6 + 5) and packed.entry_pos.numel() == 2 * 10  # 3 forks: a->b|c, b->d|e (x2 trees)
    assert packed.shape == (1, 25)  # both small trees in one row


def test_segments_split_large_trees_along_leaves_and_plan_respects_budget():
    batch = flatten_paths([_hand_tree(), _hand_tree((8, 9))], pad_id=0)
    rows = torch.arange(batch.size)
    segs = segments(batch, rows, row_tokens=10)
    # tree 1: prompt+a+b+d+e = 10 tokens, then c in a new segment with prompt+a again; tree 2 likewise
    assert [len(s.ids) for s in segs] == [10, 8, 9, 7]
    assert [[j for j, *_ in s.rows] for s in segs] == [[0, 1], [2], [3, 4], [5]]
    packed = pack_paths(batch, rows, row_tokens=10)
    m = batch.response_mask.bool()
    assert torch.equal(packed.entry_target[packed.path_entry[m]], batch.input_ids[:, 1:][m])
    parts = plan_parts(batch, rows, row_tokens=10, micro_tokens=20)
    assert sorted(torch.cat(parts).tolist()) == list(range(6))
    for part in parts:
        r, w = pack_paths(batch, part, row_tokens=10).shape
        assert r * w <= 20
    assert len(plan_parts(batch, rows, row_tokens=64, micro_tokens=0)) == 1


def test_row_budget_defaults():
    batch = flatten_paths([_hand_tree()], pad_id=0)  # longest path 3 + 6 = 9 tokens
    assert row_budget(batch, 0, 0) == (36, 0)
    assert row_budget(batch, 0, 2) == (18, 18)
    assert row_budget(batch, 5, 0) == (9, 0)  # at least one whole path


def test_flex_mask_rule_matches_dense_mask():
    batch = flatten_paths([_hand_tree(), _hand_tree((8, 9))], pad_id=0)
    vis = pack_paths(batch, torch.arange(batch.size), row_tokens=12).visible_end
    dense = dense_tree_mask(vis)
    mod = tree_mask_mod(vis)
    r, w = vis.shape
    b, q, k = torch.meshgrid(torch.arange(r), torch.arange(w), torch.arange(w), indexing="ij")
    assert torch.equal(mod(b, None, q, k), dense[:, 0])
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    try:
        block = tree_mask(vis, "block", torch.float32)
    except Exception as exc:  # BlockMask construction needs a compiler on some builds
        pytest.skip(f"create_block_mask unavailable on this CPU build: {exc}")
    assert isinstance(block, flex.BlockMask)
    additive = tree_mask(vis, "additive", torch.float32)
    assert torch.equal(additive == 0, dense)


# -- weights ----------------------------------------------------------------------------------------------------------
def test_shared_token_weights_are_exact():
    batch = flatten_paths([_hand_tree()], pad_id=0)
    # rows: d (a, b, d), e (a, b, e), c (a, c); columns from 2 (the prompt's last token predicts a's first)
    n = paths_through(batch)
    assert n[0, 2:7].tolist() == [3, 3, 2, 2, 1] and n[1, 2:8].tolist() == [3, 3, 2, 2, 1, 1]
    assert n[2, 2:7].tolist() == [3, 3, 1, 1, 1] and n[:, :2].sum() == 0
    assert shared_token_weights(batch, "per_path") is None
    torch.testing.assert_close(shared_token_weights(batch, "per_node")[0, 2:7], torch.tensor([1/3, 1/3, .5, .5, 1]))
    torch.testing.assert_close(shared_token_weights(batch, "sqrt_leaves")[1, 2:8],
                               torch.tensor([3, 3, 2, 2, 1, 1]).float().rsqrt())
    # a token's weights summed over the paths through it: 1 (per_node), sqrt(n) (sqrt_leaves)
    w = shared_token_weights(batch, "per_node")
    assert math.isclose(float(w[0, 2] + w[1, 2] + w[2, 2]), 1.0, rel_tol=1e-6)
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = scale_gradient(x * 2, torch.tensor([0.25, 3.0]))
    assert torch.equal(y, x.detach() * 2)
    y.sum().backward()
    assert x.grad.tolist() == [0.5, 6.0]


# -- the model sees what it saw when it sampled -----------------------------------------------------------------------
@pytest.fixture
def tree_run(tmp_path, tiny_model_dir, one_thread):
    trainer = _trainer(tmp_path, tiny_model_dir, **TREE)
    trees = trainer.rollout()
    return trainer, trees, flatten_paths(trees, trainer.tokenizer.pad_token_id)


@pytest.mark.parametrize("row_tokens", [0, 40])
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_packed_logprobs_equal_flattened(tree_run, row_tokens, kind):
    trainer, trees, batch = tree_run
    assert batch.attention_mask.sum() > sum(len(t.prompt_ids) + t.new_tokens for t in trees)  # prefixes are shared
    rows = torch.arange(batch.size)
    row_tokens = row_budget(batch, row_tokens, 0)[0]
    packed = pack_paths(batch, rows, row_tokens)
    with torch.no_grad():
        ref = padded_logprobs(trainer.policy, batch.input_ids, batch.attention_mask, rows, 1.0, CPU)
        got = packed_logprobs(trainer.policy, packed, 1.0, CPU, kind=kind)
    m = batch.response_mask.bool()
    for a, b in zip(ref, got):
        torch.testing.assert_close(b[m], a[m], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[0][m], batch.old_logp[m], atol=2e-5, rtol=1e-5)  # the sampler's log-probs
    assert packed.tokens < int(batch.attention_mask.sum())


def test_sibling_branch_tokens_do_not_reach_a_branch(tree_run):
    trainer, trees, batch = tree_run
    forks = [(t, n) for t in trees for n in t.root.iter_nodes() if len(n.children) > 1]
    tree, fork = max(forks, key=lambda f: f[1].depth)  # the deepest fork: its branches share a prefix past the prompt
    one = flatten_paths([tree], trainer.tokenizer.pad_token_id)
    rows = torch.arange(one.size)
    with torch.no_grad():
        before = packed_logprobs(trainer.policy, pack_paths(one, rows, 4096), 1.0, CPU)[0]
    sibling = fork.children[1]
    keep = [i for i, leaf in enumerate(one.leaves) if sibling not in leaf.lineage()]
    for node in sibling.iter_nodes():  # rewrite the sibling branch's tokens
        node.token_ids = [(t + 7) % 90 + 3 for t in node.token_ids]
    changed = flatten_paths([tree], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        after = packed_logprobs(trainer.policy, pack_paths(changed, rows, 4096), 1.0, CPU)[0]
    assert not torch.equal(changed.input_ids, one.input_ids)
    m = one.response_mask[keep].bool()
    torch.testing.assert_close(after[keep][m], before[keep][m], atol=1e-6, rtol=0)
    lost = [i for i in range(one.size) if i not in keep]
    assert not torch.allclose(after[lost], before[lost])  # the rewritten paths themselves did change


# -- the update: same loss and gradients ------------------------------------------------------------------------------
COMBOS = [
    dict(loss_agg_mode="token-mean"),
    dict(loss_agg_mode="seq-mean-token-mean"),
    dict(loss_agg_mode="seq-mean-token-sum-norm"),
    dict(policy_loss="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-100.0, clip_cov_ub=100.0),
    dict(policy_loss="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-100.0, clip_cov_ub=100.0, micro_batch_size=5,
         loss_agg_mode="token-mean"),
    dict(policy_loss="kl_cov", kl_cov_ratio=0.2, micro_batch_size=3),
    dict(entropy_coef=0.05, ibro_coef=0.05, micro_batch_size=4),
    dict(mini_batch_size=7, ppo_epochs=2, micro_batch_size=3, loss_agg_mode="seq-mean-token-sum-norm"),
    dict(dual_clip_c=3.0, epsilon_high=0.28, old_logp="recompute"),
    dict(shared_token_weight="per_node", micro_batch_size=4),
    dict(shared_token_weight="sqrt_leaves", loss_agg_mode="token-mean"),
]


def _update_delta(trainer, batch, advantages, layout, over):
    """Parameter change of one ``Trainer.update`` under plain SGD (lr 1, no clipping): minus the summed gradients."""
    base = trainer.__dict__.setdefault("base_cfg", trainer.cfg)
    trainer.cfg = base.model_copy(update={"max_grad_norm": 1e9, **over})
    trainer.layout = layout
    trainer.loss_fn, trainer.loss_cfg = get_policy_loss(trainer.cfg.policy_loss), loss_config(trainer.cfg)
    trainer.regularizers = [REGULARIZERS.get(n) for n, c in (("kl", trainer.cfg.beta), ("entropy",
                            trainer.cfg.entropy_coef), ("ibro", trainer.cfg.ibro_coef)) if c > 0]
    start = copy.deepcopy(trainer.policy.state_dict())
    gen, cpu = trainer.generator.get_state(), torch.get_rng_state()
    trainer.optimizer = torch.optim.SGD(trainer.params, lr=1.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
    metrics = trainer.update(batch, advantages)
    delta = {k: v - start[k] for k, v in trainer.policy.state_dict().items()}
    trainer.policy.load_state_dict(start)
    trainer.generator.set_state(gen)
    torch.set_rng_state(cpu)
    return delta, metrics


@pytest.fixture(scope="module")
def update_case(tmp_path_factory, tiny_model_dir):
    """A tree run with a KL reference, its batch, perturbed old log-probs (ratios != 1: clipping and KL-Cov act)
    and tree_grpo advantages (each path its own leaf's: a shared token has different advantages per path)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("packed_update")
    trainer = _trainer(tmp, tiny_model_dir, beta=0.05, adv_estimator="tree_grpo", **TREE)
    trainer.reward_fn = lambda prompts, completions, completion_ids, **_: [float(ids[-1] % 2) for ids in
                                                                           completion_ids]  # differs within a branch
    batch = flatten_paths(trainer.rollout(), trainer.tokenizer.pad_token_id)
    g = torch.Generator().manual_seed(0)
    batch.old_logp = batch.old_logp + 0.3 * torch.randn(batch.old_logp.shape, generator=g) * batch.response_mask
    adv = trainer.adv_fn(rewards=batch.rewards, response_mask=batch.response_mask, group_ids=batch.group_ids,
                         node_index=batch.node_index, nodes=batch.nodes, ancestor_index=batch.ancestor_index)
    return trainer, batch, adv


@pytest.mark.parametrize("over", COMBOS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_update_gradients_and_loss_equal_flattened(update_case, over):
    trainer, batch, adv = update_case
    shared = [i for i in range(batch.size) for j in range(batch.size) if i != j
              and batch.group_ids[i] == batch.group_ids[j] and batch.leaves[i].lineage()[0] is
              batch.leaves[j].lineage()[0] and batch.rewards[i] != batch.rewards[j]]
    assert shared  # paths sharing a first step disagree in reward: their shared tokens get several advantages
    flat, mf = _update_delta(trainer, batch, adv, "flattened", over)
    packed, mp = _update_delta(trainer, batch, adv, "packed", over)
    assert max(float(d.abs().max()) for d in flat.values()) > 1e-4  # there is a gradient to compare
    for name in flat:
        torch.testing.assert_close(packed[name], flat[name], atol=2e-6, rtol=2e-4, msg=name)
    for key in ("actor/loss", "actor/pg_loss", "actor/kl", "actor/pg_clipfrac", "actor/entropy_bonus",
                "actor/ibro_term", "actor/clip_cov_frac", "actor/kl_cov_frac", "actor/grad_norm"):
        if key in mf:
            assert math.isclose(mp[key], mf[key], rel_tol=2e-4, abs_tol=1e-6), (key, mp[key], mf[key])
    if over.get("policy_loss") == "clip_cov":
        assert mf["actor/clip_cov_frac"] > 0
    if over.get("policy_loss") == "kl_cov":
        assert mf["actor/kl_cov_frac"] > 0


def test_shared_token_weight_changes_the_gradient_as_stated(update_case):
    """per_node in either layout = the per-path loss with each token's terms times 1/(paths through it)."""
    trainer, batch, adv = update_case
    base, _ = _update_delta(trainer, batch, adv, "flattened", {})
    per_node, _ = _update_delta(trainer, batch, adv, "flattened", {"shared_token_weight": "per_node"})
    assert any(not torch.allclose(base[k], per_node[k]) for k in base)


# -- the run ----------------------------------------------------------------------------------------------------------
def test_packed_run_resumes_exactly(tmp_path, tiny_model_dir, one_thread):
    over = dict(train_layout="packed", beta=0.01, seed=3, **TREE)
    first = _trainer(tmp_path / "b", tiny_model_dir, **over)
    assert first.layout == "packed"
    first.train_step()
    first.save()
    resumed = Trainer(first.cfg, resume=True)
    resumed.reward_fn = first.reward_fn
    got = resumed.train_step()
    ref = _trainer(tmp_path / "c", tiny_model_dir, **over)
    ref.train_step()
    want = ref.train_step()
    for key in ("actor/loss", "actor/pg_loss", "actor/kl", "actor/grad_norm", "reward/mean"):
        assert got[key] == want[key], key
    for (n, p), q in zip(resumed.policy.named_parameters(), ref.policy.parameters()):
        assert torch.equal(p, q), n


def test_packed_and_flattened_runs_agree_over_steps(tmp_path, tiny_model_dir, one_thread):
    """Three steps of GRPO (a tree whose root is the prompt) and of a tree run, in either layout."""
    for over in ({}, TREE):
        runs = [_trainer(tmp_path / lay / str(len(over)), tiny_model_dir, train_layout=lay, beta=0.01, **over)
                for lay in ("flattened", "packed")]
        for _ in range(3):
            a, b = (r.train_step() for r in runs)
            assert a["reward/mean"] == b["reward/mean"]  # same rollouts
            assert math.isclose(a["actor/loss"], b["actor/loss"], rel_tol=1e-3, abs_tol=1e-6)


def test_lora_trains_packed(tmp_path, tiny_model_dir, one_thread):
    runs = [_trainer(tmp_path / lay, tiny_model_dir, train_layout=lay, lora_rank=4, beta=0.01, **TREE)
            for lay in ("flattened", "packed")]
    a, b = (r.train_step() for r in runs)
    assert math.isclose(a["actor/loss"], b["actor/loss"], rel_tol=1e-4, abs_tol=1e-7)
    assert math.isclose(a["actor/kl"], b["actor/kl"], rel_tol=1e-4, abs_tol=1e-7)


def test_layout_choice_and_fallbacks(tmp_path, tiny_model_dir):
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    layout, note = choose_layout("auto", flash, [])
    assert layout == "flattened" and "'flash_attention_2' takes no tree mask" in note
    with pytest.raises(ValueError, match="train_layout=packed: attention implementation 'flash_attention_2'"):
        choose_layout("packed", flash, [])
    sdpa = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    assert choose_layout("auto", sdpa, []) == ("packed", "")
    assert choose_layout("flattened", sdpa, []) == ("flattened", "")
    # IIB-LPO's latent codes: auto falls back with its reason, packed stops
    iib = dict(algorithm="iib_lpo", tree_b0=2, iib_keep=4)
    trainer = _trainer(tmp_path / "auto", tiny_model_dir, train_layout="auto", **iib)
    assert trainer.layout == "flattened" and "IIB-LPO's latent codes" in trainer.layout_note
    with pytest.raises(ConfigError, match="train_layout=packed: IIB-LPO's latent codes"):
        _trainer(tmp_path / "packed", tiny_model_dir, train_layout="packed", **iib)


def test_packed_when_impossible_is_one_line_exit_2(tmp_path, tiny_model_dir, capsys):
    from ibtpo.cli import main

    code = main(["train", f"model={tiny_model_dir}", f"out_dir={tmp_path / 'run'}", "algorithm=iib_lpo", "tree_b0=2",
                 "iib_keep=4", "train_layout=packed", "questions_per_step=2", "max_completion_length=12",
                 "tensorboard=false", "progress=false", "threads=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "train_layout=packed: IIB-LPO's latent codes" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # FlexAttention compiles its kernels on first use (~30 s on 2 cores)
def test_flex_attention_block_mask_gives_the_flattened_logprobs(tiny_model_dir):
    """The FlexAttention path (BlockMask from the tree rule) on CPU; on CUDA the same mask, other kernels."""
    from transformers import AutoModelForCausalLM

    try:
        flex = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="flex_attention").eval()
    except (ImportError, ValueError) as exc:
        pytest.skip(f"flex_attention unavailable: {exc}")
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = flatten_paths([_hand_tree(), _hand_tree((8, 9))], pad_id=0)
    rows = torch.arange(batch.size)
    with torch.no_grad():
        got = packed_logprobs(flex, pack_paths(batch, rows, 64), 1.0, CPU)[0]
        ref = padded_logprobs(sdpa, batch.input_ids, batch.attention_mask, rows, 1.0, CPU)[0]
    m = batch.response_mask.bool()
    torch.testing.assert_close(got[m], ref[m], atol=2e-5, rtol=1e-5)
