"""IB-Score of a tree node (METHOD.md section 3): how well the policy's confidence sits on informative steps.

For a non-leaf node v with children c_1..c_B (alternative next steps sharing v's prefix, drawn from the policy)::

    IB(v) = (1 + beta) / B * sum_c conf(c) * ( r(c) - (1 + 1/beta) ),     r(c) = p_hat(c) / p_hat(v)

- p_hat(x): share of correct leaves under x (a Monte Carlo estimate of p(a* | prefix)), see ``tree.compute_p_hat``;
- r(c): information gain of step c; if p_hat(v) = 0 every child has p_hat 0 and r = 1 (no information) [choice];
- conf(c) = pi(c | prefix): length-normalised exp(mean token log-prob) by default, or the raw product [choice].

Decomposition (exact for every sample, proved by expanding the sums; tested): with
``H2_hat = 1 - mean_c conf(c)`` (Tsallis-2 step entropy: E_{c~pi}[pi(c)] = sum_s pi(s)^2) and
``Cov_hat = mean_c conf(c) * (r(c) - 1)`` (covariance of confidence and gain, using E_pi[r] = 1)::

    IB(v) = (1 + beta)/beta * ( H2_hat + beta * Cov_hat - 1 ) = (1 + beta)/beta * ( J_hat - 1 )

so IB is the node's Tsallis IB objective J = H_2(S) + beta * Cov_pi(pi, r) up to a positive scale and a constant.
With conf = pi(c) (the ``product`` mode) and exact gains, each term is an unbiased estimate of its population value.
A chain node (one child, same leaves) has r = 1, so IB(v) = -(1+beta)/beta * conf(c): among unbranched nodes the
least confident next step scores highest. Call ``compute_p_hat`` on the tree before scoring.
"""

from __future__ import annotations

from statistics import mean

from ibtpo.rollout.tree import Node, Tree, compute_p_hat


def ib_from_values(conf: list[float], gains: list[float], beta: float = 5.0) -> float:
    """IB estimate from the children's confidences and gains r(c) (pure; see the module docstring)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not conf or len(conf) != len(gains):
        raise ValueError("conf and gains must be non-empty and of equal length")
    return (1.0 + beta) * mean(c * (g - (1.0 + 1.0 / beta)) for c, g in zip(conf, gains))


def cov_from_values(conf: list[float], gains: list[float]) -> float:
    """Cov_hat(conf, r) = mean_c conf(c) * (r(c) - 1) (uses E_pi[r] = 1)."""
    return mean(c * (g - 1.0) for c, g in zip(conf, gains))


def tsallis2_from_values(conf: list[float]) -> float:
    """H2_hat = 1 - mean_c conf(c): the Tsallis-2 entropy of the next-step distribution when conf(c) = pi(c)."""
    return 1.0 - mean(conf)


def info_gain(child: Node, parent: Node) -> float:
    """r(c) = p_hat(c) / p_hat(parent), with r = 1 when p_hat(parent) = 0."""
    if not parent.p_hat:
        return 1.0
    return float(child.p_hat) / float(parent.p_hat)


def _children_values(node: Node, conf_mode: str) -> tuple[list[float], list[float]]:
    if not node.children:
        raise ValueError(f"IB-Score needs a node with children; node {node.path!r} is a leaf")
    return [c.confidence(conf_mode) for c in node.children], [info_gain(c, node) for c in node.children]


def ib_score(node: Node, beta: float = 5.0, conf_mode: str = "mean") -> float:
    """IB(v) of a non-leaf node from its children (see the module docstring). A leaf raises ValueError."""
    conf, gains = _children_values(node, conf_mode)
    return ib_from_values(conf, gains, beta)


def cov_conf_gain(node: Node, conf_mode: str = "mean") -> float:
    """Cov_hat(conf, r) over a non-leaf node's children."""
    conf, gains = _children_values(node, conf_mode)
    return cov_from_values(conf, gains)


def tree_ib_stats(trees: list[Tree], beta: float = 5.0, conf_mode: str = "mean") -> dict[str, float]:
    """Means over all branching nodes (>= 2 children) of the batch: IB-Score, Cov(conf, r), Tsallis-2 step entropy.

    Metric names follow CONVENTIONS.md (``ib/score_mean``, ``ib/cov_conf_gain``); a batch without branching nodes
    (e.g. independent sampling of one trajectory per question) reports NaN rather than a made-up 0.
    """
    scores, covs, ents = [], [], []
    for tree in trees:
        compute_p_hat(tree.root)
        for node in tree.root.iter_nodes():
            if len(node.children) >= 2:
                conf, gains = _children_values(node, conf_mode)
                scores.append(ib_from_values(conf, gains, beta))
                covs.append(cov_from_values(conf, gains))
                ents.append(tsallis2_from_values(conf))
    nan = float("nan")
    return {
        "ib/score_mean": mean(scores) if scores else nan,
        "ib/cov_conf_gain": mean(covs) if covs else nan,
        "ib/step_entropy": mean(ents) if ents else nan,
        "ib/branching_nodes": len(scores) / max(1, len(trees)),
    }
