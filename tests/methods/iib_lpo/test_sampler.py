"""The iib sampler (methods/iib_lpo/sampler.py) on the shipped testbed policy: tree shape, latent codes, behaviour
log-probs under the embedding offset, and the CVAE's online data."""

import random

import pytest
import torch

from ibtpo.methods.iib_lpo.core import fork_candidates
from ibtpo.config.schema import TrainConfig
from ibtpo.methods.iib_lpo import sampler as latent_fork
from ibtpo.rollout.grow import grow_problem_trees
from ibtpo.methods.iib_lpo.sampler import LatentBranching, hidden_cumsums
from ibtpo.core.steps import StepSplitter
from ibtpo.core.tree import Tree
from ibtpo.testbed.task import SumTask, sum_reward
from ibtpo.methods.iib_lpo.extension import latent_row_extras
from ibtpo.core.lm import token_logprobs
from ibtpo.training.batch import flatten_paths
from ibtpo.config.components import rollout_spec, tree_shape
from ibtpo.rollout.samplers import sampler_options

B0, FORKS, Z = 2, 2, 16


pytestmark = pytest.mark.usefixtures("one_thread")



def make_latent(model, mode, seed=1):
    embed = model.get_input_embeddings().weight.detach()
    return LatentBranching(mode, embed.shape[1], float(embed.norm(dim=-1).mean()), latent_dim=Z,
                           generator=torch.Generator().manual_seed(seed))


def grow(testbed, latent=None, prefix_reuse=True, seed=0, questions=2, **over):
    model, tokenizer = testbed
    cfg = TrainConfig(algorithm="iib_lpo", tree_b0=B0, iib_forks=FORKS, **over)
    task = SumTask()
    problems = [task.train_problem(i) for i in range(questions)]
    spec = rollout_spec(cfg.model_copy(update={"prefix_reuse": prefix_reuse}), tokenizer)
    trees = grow_problem_trees(spec, model, tokenizer, problems, sum_reward, torch.Generator().manual_seed(seed),
                               random.Random(seed), extras={"latent": latent} if latent else None)
    return trees, cfg


def is_branch_start(tree, node):
    """A branch's first node: a later child of a rollout node, or a root child after the B0 initial rollouts."""
    index = node.parent.children.index(node)
    return index >= B0 if node.parent is tree.root else index > 0


def anatomy(tree):
    """(initial leaves, [(branch leaf, branch first node, initial leaf it forks from)]) of an iib tree."""
    initial, branches = [], []
    for leaf in tree.leaves():
        starts = [n for n in leaf.lineage() if is_branch_start(tree, n)]
        assert len(starts) <= 1, "a branch forked from a branch"
        if not starts:
            initial.append(leaf)
        else:
            branches.append((leaf, starts[0]))
    out = []
    for leaf, start in branches:
        owners = [x for x in initial if start.parent in x.lineage()]
        assert len(owners) == 1, "a branch does not fork from exactly one initial rollout"
        out.append((leaf, start, owners[0]))
    return initial, out


@pytest.mark.parametrize("prefix_reuse", [True, False], ids=["reuse", "re-encode"])
@pytest.mark.parametrize("mode", [None, "random", "cvae"])
def test_iib_tree_shape(testbed, mode, prefix_reuse):
    latent = None if mode is None else make_latent(testbed[0], mode)
    trees, cfg = grow(testbed, latent, prefix_reuse)
    shape, options = tree_shape(cfg), sampler_options("iib", cfg)
    assert shape.group_size == B0 * (1 + FORKS)
    for tree in trees:
        leaves = tree.leaves()
        assert len(leaves) == B0 * (1 + FORKS)
        assert all(leaf.reward in (0.0, 1.0) for leaf in leaves)
        initial, branches = anatomy(tree)
        assert len(initial) == B0 and len(branches) == B0 * FORKS
        for leaf in initial:  # every initial rollout gets exactly FORKS branches, at its candidate positions
            ids, _, ents = Tree.completion(leaf)
            cands = fork_candidates(ents, options.fork_top, cfg.max_completion_length - options.min_room)
            mine = [start for _, start, owner in branches if owner is leaf]
            assert len(mine) == FORKS
            for start in mine:
                assert start.parent is not tree.root  # the rollouts leave room: no fallback to a fresh sample
                assert start.offset in cands and 1 <= start.offset < len(ids)
        for branch_leaf, start, owner in branches:  # the branch shares the owner's first t tokens
            t = start.offset
            assert Tree.completion(branch_leaf)[0][:t] == Tree.completion(owner)[0][:t]
        # z on (and only on) every branch's first node
        starts = {id(start) for _, start, _ in branches}
        for node in tree.nodes():
            if mode is not None and id(node) in starts:
                assert isinstance(node.info["z"], torch.Tensor) and node.info["z"].shape == (Z,)
            else:
                assert "z" not in node.info
        # prefixes are generated once: exactly the tokens after each fork are new
        lengths = sum(len(Tree.completion(leaf)[0]) for leaf in leaves)
        assert tree.new_tokens == lengths - sum(start.offset for _, start, _ in branches)
        assert tree.new_tokens < lengths


@pytest.mark.parametrize("prefix_reuse", [True, False], ids=["reuse", "re-encode"])
def test_no_room_forks_from_the_root_with_a_latent(testbed, prefix_reuse):
    """Rollouts with no position that leaves min_room tokens: every fork is a fresh sample from the root, still
    with its own z (offset from the prompt's last token on), and behaviour log-probs still agree."""
    model, tokenizer = testbed
    latent = make_latent(model, "cvae")
    trees, cfg = grow(testbed, latent, prefix_reuse, max_completion_length=8, tree_min_room=8)
    for tree in trees:
        assert len(tree.root.children) == B0 * (1 + FORKS)
        assert all(len(node.children) <= 1 for node in tree.nodes())  # each a chain from the root, no forks
        for i, child in enumerate(tree.root.children):
            assert ("z" in child.info) == (i >= B0)
        assert tree.new_tokens == sum(len(Tree.completion(leaf)[0]) for leaf in tree.leaves())  # nothing shared
    assert latent.pending == []  # capped at 8 tokens, no rollout is correct: no CVAE data
    batch = flatten_paths(trees, tokenizer.pad_token_id, latent_row_extras)
    branched = batch.extras["latent_z"].abs().sum(-1) > 0
    assert int(branched.sum()) == len(trees) * B0 * FORKS
    assert all(int(batch.extras["latent_start"][i]) == len(trees[int(batch.group_ids[i])].prompt_ids) - 1
               for i in torch.nonzero(branched).flatten().tolist())
    mask = batch.response_mask.bool()
    with torch.no_grad():
        with_z, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, cfg.temperature,
                                   embed_offset=latent.injector(batch.extras["latent_z"]), offset_start=batch.extras["latent_start"])
    torch.testing.assert_close(with_z[mask], batch.old_logp[mask], atol=1e-4, rtol=1e-4)


def test_distinct_fork_positions_in_one_node_stay_distinct(testbed, monkeypatch):
    monkeypatch.setattr(latent_fork, "draw_fork_positions", lambda cands, k, rng: [1, 2])
    trees, cfg = grow(testbed, None, questions=1)
    splitter = StepSplitter(testbed[1], cfg.step_delimiter, cfg.min_step_tokens)
    for tree in trees:
        initial, branches = anatomy(tree)
        for leaf in initial:
            assert splitter.boundaries(Tree.completion(leaf)[0])[0] > 2  # both cuts fall in the first step node
            assert sorted(start.offset for _, start, owner in branches if owner is leaf) == [1, 2]


@pytest.mark.parametrize("prefix_reuse", [True, False], ids=["reuse", "re-encode"])
def test_behaviour_logprobs_include_the_latent_offset(testbed, prefix_reuse):
    model, tokenizer = testbed
    latent = make_latent(model, "cvae")
    trees, cfg = grow(testbed, latent, prefix_reuse)
    batch = flatten_paths(trees, tokenizer.pad_token_id, latent_row_extras)
    assert batch.extras["latent_z"].shape == (batch.size, Z) and batch.extras["latent_start"].shape == (batch.size,)
    for i, leaf in enumerate(batch.leaves):  # z and offset start of each row, from its branch's first node
        tree = trees[int(batch.group_ids[i])]
        start = next((n for n in leaf.lineage() if "z" in n.info), None)
        if start is None:
            assert not batch.extras["latent_z"][i].any() and int(batch.extras["latent_start"][i]) == 0
        else:
            assert torch.equal(batch.extras["latent_z"][i], start.info["z"])
            assert int(batch.extras["latent_start"][i]) == len(tree.prompt_ids) + start.offset - 1
    branched = batch.extras["latent_z"].abs().sum(-1) > 0
    assert int(branched.sum()) == len(trees) * B0 * FORKS
    mask = batch.response_mask.bool()
    with torch.no_grad():
        offset = latent.injector(batch.extras["latent_z"])
        with_z, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, cfg.temperature,
                                   embed_offset=offset, offset_start=batch.extras["latent_start"])
        plain, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, cfg.temperature)
    torch.testing.assert_close(with_z[mask], batch.old_logp[mask], atol=1e-4, rtol=1e-4)
    # without the offset the branches' tokens disagree (the initial rollouts', with no offset, still agree)
    branch_mask = mask & branched[:, None]
    assert float((plain - batch.old_logp)[branch_mask].abs().max()) > 1e-2
    initial_mask = mask & ~branched[:, None]
    torch.testing.assert_close(plain[initial_mask], batch.old_logp[initial_mask], atol=1e-4, rtol=1e-4)
    # the shared prefix of a branch (before its fork) is not shifted by the offset
    for i in torch.nonzero(branched).flatten().tolist():
        before = torch.zeros_like(mask[i])
        before[: int(batch.extras["latent_start"][i])] = True
        torch.testing.assert_close(with_z[i][mask[i] & before], plain[i][mask[i] & before])


def test_hidden_cumsums_ignore_padding(testbed):
    model, tokenizer = testbed
    seqs = [tokenizer("Q:3+4+5\n\n3+4=7", add_special_tokens=False)["input_ids"],
            tokenizer("Q:12+9\n\n", add_special_tokens=False)["input_ids"]]
    cums = hidden_cumsums(model, seqs, tokenizer.pad_token_id)
    assert [c.shape for c in cums] == [(len(s), model.config.hidden_size) for s in seqs]
    for s, c in zip(seqs, cums):
        with torch.no_grad():
            h = model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(c, h.cumsum(0), atol=1e-4, rtol=1e-4)


def test_latent_branching_modes():
    with pytest.raises(ValueError, match="latent mode"):
        LatentBranching("none", 8, 1.0)
    rand = LatentBranching("random", 8, 1.0, latent_dim=3, generator=torch.Generator().manual_seed(0))
    assert rand.cvae is None and rand.cvae_opt is None
    rand.generator.manual_seed(5)  # (building the injector drew from it)
    z = rand.sample(torch.zeros((4, 8)))
    torch.testing.assert_close(z, torch.randn((4, 3), generator=torch.Generator().manual_seed(5)))
    rand.remember(torch.zeros(8), torch.zeros(8))
    assert rand.pending == [] and rand.fit() == {}
    assert set(rand.state_dict()) == {"injector"}
    off = rand.offsets(z)
    assert off.shape == (4, 8) and off.dtype == torch.float32
    torch.testing.assert_close(off, rand.injector(z).detach())


def test_cvae_pairs_fit_and_state_round_trip(testbed):
    model, _ = testbed
    latent = make_latent(model, "cvae")
    trees, _ = grow(testbed, latent)
    correct = sum(1 for tree in trees for leaf in anatomy(tree)[0] if leaf.reward > 0)
    assert correct > 0, "the testbed policy solved none of the initial rollouts; pick other questions"
    assert len(latent.pending) == FORKS * correct  # one (prefix, continuation) pair per fork of a correct rollout
    hidden = model.config.hidden_size
    assert all(c.shape == (hidden,) and x.shape == (hidden,) for c, x in latent.pending)
    before = [p.detach().clone() for p in latent.cvae.parameters()]
    metrics = latent.fit()
    assert set(metrics) == {"cvae/loss", "cvae/recon", "cvae/kl", "cvae/pairs"}
    assert metrics["cvae/pairs"] == FORKS * correct
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert latent.pending == []
    assert not all(torch.equal(a, b) for a, b in zip(before, latent.cvae.parameters()))
    assert latent.fit() == {}  # nothing new collected

    fresh = make_latent(model, "cvae", seed=99)
    cond = torch.randn((5, hidden), generator=torch.Generator().manual_seed(3))
    latent.generator.manual_seed(7)
    fresh.generator.manual_seed(7)
    assert not torch.equal(latent.sample(cond), fresh.sample(cond))
    fresh.load_state_dict(latent.state_dict())
    latent.generator.manual_seed(7)
    fresh.generator.manual_seed(7)
    torch.testing.assert_close(latent.sample(cond), fresh.sample(cond), atol=0, rtol=0)
    assert torch.equal(fresh.injector.proj.weight, latent.injector.proj.weight)
    assert fresh.cvae_opt.state_dict()["state"].keys() == latent.cvae_opt.state_dict()["state"].keys()
    assert len(fresh.cvae_opt.state_dict()["state"]) > 0
