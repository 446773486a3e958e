"""`ibtpo components`: every registered component with its options and the run-config fields they come from."""

from ibtpo.config.catalog import catalog


def test_samplers_list_their_shape_fields_and_their_own_options():
    rows = {(r["kind"], r["name"]): r["options"] for r in catalog()}
    assert rows[("sampler", "independent")] == "G from num_generations"
    assert rows[("sampler", "fixed_width")] == ("G from tree_b0, tree_l, tree_k, tree_b; segment_length<-treepo_"
                                                "segment_length, width<-treepo_width, max_depth<-treepo_max_depth")
    assert rows[("sampler", "iib")] == "G from tree_b0, iib_forks; min_room<-tree_min_room, fork_top<-iib_fork_top"
    assert rows[("sampler", "ib")].endswith("min_room<-tree_min_room, root_candidate<-tree_root_candidate, "
                                            "ib.beta<-ib_beta, ib.conf_mode<-ib_conf, ib.zero_phat<-ib_zero_phat")
    assert rows[("advantage estimator", "ib_tpo")] == ("lam<-ib_tpo_lambda, ib.beta<-ib_beta, ib.conf_mode<-ib_conf, "
                                                       "ib.zero_phat<-ib_zero_phat, leaf_weight<-adv_leaf_weight")
