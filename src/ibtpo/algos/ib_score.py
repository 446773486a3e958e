"""IB-Score of a tree node (METHOD.md section 3): how well the policy's confidence sits on informative steps.

For a non-leaf node v with children c_1..c_B (alternative next steps sharing v's prefix)::

    IB(v) = (1 + beta) / B * sum_c conf(c) * ( r(c) - (1 + 1/beta) ),     r(c) = p_hat(c) / p_hat(v)

- p_hat(x): share of correct leaves under x (a Monte Carlo estimate of p(a* | prefix)), see ``tree.compute_p_hat``;
- r(c): information gain of step c; if p_hat(v) = 0 every child has p_hat 0 and r = 1 (no information) [choice];
- conf(c) = pi(c | prefix): length-normalised exp(mean token log-prob) by default, or the raw product [choice].

A chain node (one child, same leaves) has r = 1, so IB(v) = -(1+beta)/beta * conf(c): among unbranched nodes the
least confident next step scores highest. Call ``compute_p_hat`` on the tree before scoring.
"""

from __future__ import annotations

from ibtpo.rollout.tree import Node


def info_gain(child: Node, parent: Node) -> float:
    """r(c) = p_hat(c) / p_hat(parent), with r = 1 when p_hat(parent) = 0."""
    if not parent.p_hat:
        return 1.0
    return float(child.p_hat) / float(parent.p_hat)


def ib_score(node: Node, beta: float = 5.0, conf_mode: str = "mean") -> float:
    """IB(v) of a non-leaf node from its children (see the module docstring). A leaf raises ValueError."""
    if not node.children:
        raise ValueError(f"IB-Score needs a node with children; node {node.path!r} is a leaf")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    total = sum(c.confidence(conf_mode) * (info_gain(c, node) - (1.0 + 1.0 / beta)) for c in node.children)
    return (1.0 + beta) / len(node.children) * total
