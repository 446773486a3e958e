"""A run config -> its parts: each sampler's tree shape, the estimator with its typed options, the loss options."""

import pytest

from ibtpo.config.components import advantage_estimator, loss_config, tree_shape
from ibtpo.config.schema import build_config, group_size
from ibtpo.rollout.samplers import sampler_options


@pytest.mark.parametrize("algorithm, g", [("grpo", 8), ("ib_tpo", 12), ("treerl", 12), ("treepo", 12),
                                          ("random_tree", 12), ("iib_lpo", 12)])
def test_group_sizes(algorithm, g):
    cfg = build_config(overrides={"algorithm": algorithm})
    assert tree_shape(cfg).group_size == group_size(cfg) == g


def test_shapes_follow_the_config():
    cfg = build_config(overrides={"algorithm": "ib_tpo", "tree_b0": 2, "tree_l": 3, "tree_k": 2, "tree_b": 2,
                                  "ib_beta": 2.0, "tree_root_candidate": False})
    shape, options = tree_shape(cfg), sampler_options("ib", cfg)
    assert (shape.b0, shape.rounds, shape.k, shape.b, options.ib.beta, options.root_candidate) == (2, 3, 2, 2, 2.0, False)
    assert shape.group_size == 2 + 2 * 2 * 2
    assert tree_shape(cfg, "independent").group_size == cfg.num_generations
    iib = tree_shape(build_config(overrides={"algorithm": "iib_lpo", "iib_forks": 3}))
    assert (iib.b0, iib.rounds, iib.group_size) == (4, 4, 16)


def test_estimator_options_come_from_the_config():
    import torch

    from ibtpo.training.batch import flatten_paths
    from ibtpo.core.tree import Tree

    t = Tree(question_id="q", prompt_ids=[1, 2])
    s = t.root.add_child([3, 4], [-0.1, -0.2], [0, 0])
    for r in (1.0, 0.0, 1.0):
        s.add_child([5], [-0.5], [0]).reward = r
    from ibtpo.core.tree import compute_p_hat
    compute_p_hat(t.root)
    batch = flatten_paths([t], pad_id=0)
    kw = dict(rewards=batch.rewards, response_mask=batch.response_mask, group_ids=batch.group_ids,
              node_index=batch.node_index, nodes=batch.nodes, ancestor_index=batch.ancestor_index)
    base = advantage_estimator(build_config(overrides={"adv_estimator": "ib_tpo", "ib_tpo_lambda": 0.0}))(**kw)
    more = advantage_estimator(build_config(overrides={"adv_estimator": "ib_tpo", "ib_tpo_lambda": 1.0}))(**kw)
    assert not torch.allclose(base, more)  # lambda reaches the estimator through its options


def test_loss_options_map_config_names():
    cfg = build_config(overrides={"beta": 0.01, "max_completion_length": 33, "epsilon_high": 0.28})
    lc = loss_config(cfg)
    assert (lc.kl_coef, lc.norm_length, lc.epsilon_high, lc.epsilon) == (0.01, 33, 0.28, cfg.epsilon)


def test_each_sampler_reads_its_own_options_from_the_config():
    from ibtpo.core.tree_stats import IBOptions
    from ibtpo.methods.iib_lpo.sampler import IIBSamplerOptions
    from ibtpo.methods.treepo import FixedWidthOptions
    from ibtpo.rollout.rules import BranchingOptions

    cfg = build_config(overrides={"tree_min_room": 3, "tree_root_candidate": False, "ib_beta": 2.0,
                                  "ib_zero_phat": "skip", "treepo_segment_length": 5, "iib_fork_top": 0.2})
    ib = IBOptions(beta=2.0, conf_mode="mean", zero_phat="skip")
    for name in ("ib", "entropy", "random"):
        assert sampler_options(name, cfg) == BranchingOptions(min_room=3, root_candidate=False, ib=ib)
    assert sampler_options("fixed_width", cfg) == FixedWidthOptions(segment_length=5, width=2, max_depth=6)
    assert sampler_options("iib", cfg) == IIBSamplerOptions(min_room=3, fork_top=0.2)
    assert sampler_options("independent", cfg) is None
    from ibtpo.algos.advantages import ADV_ESTIMATORS
    from ibtpo.core.registry import options_from

    assert options_from(ADV_ESTIMATORS.options("ib_tpo"), cfg).ib == ib  # the estimator's IB options: the same


def test_rollout_specs_follow_the_config(tokenizer):
    from ibtpo.config.components import eval_spec, ib_options, rollout_spec

    cfg = build_config(overrides={"algorithm": "treepo", "temperature": 0.9, "max_completion_length": 20,
                                  "prefix_reuse": False, "rollout_backend": "eager", "rollout_slots_gib": 1.5,
                                  "eval_k": 3, "eval_temperature": 0.6, "eval_top_p": 0.9, "step_delimiter": "\n",
                                  "ib_conf": "product"})
    spec = rollout_spec(cfg, tokenizer)
    assert (spec.sampler, spec.shape, spec.options) == ("fixed_width", tree_shape(cfg), sampler_options("fixed_width",
                                                                                                        cfg))
    assert (spec.sampling.temperature, spec.sampling.max_new_tokens, spec.prefix_reuse, spec.backend,
            spec.slots_gib, spec.splitter.delimiter) == (0.9, 20, False, "eager", 1.5, "\n")
    probe = rollout_spec(cfg, tokenizer, "ib")
    assert (probe.sampler, probe.shape, probe.options.ib) == ("ib", tree_shape(cfg, "ib"), ib_options(cfg))
    assert ib_options(cfg).conf_mode == "product"
    ev = eval_spec(cfg)
    assert (ev.sampler, ev.shape.group_size, ev.sampling.temperature, ev.sampling.top_p, ev.sampling.top_k,
            ev.sampling.max_new_tokens, ev.backend, ev.slots_gib) == ("independent", 3, 0.6, 0.9, 0, 20, "eager", 1.5)
