"""A synthetic step process with known answers, to validate the IB-Score estimator without a language model.

States are tuples of actions (steps) taken so far, up to ``depth`` steps. At every state the next-step distribution
pi(. | state) is a seeded Dirichlet draw over ``actions`` steps; every complete trajectory succeeds with a seeded
probability. So at every state the success probability q(state) = sum_a pi(a | state) q(state + a) is known exactly,
and the population IB objective of METHOD.md section 3 has a closed form at every state v::

    IB*(v)  = (1 + beta) * ( sum_a pi(a)^2 q(a)/q(v) - (1 + 1/beta) * sum_a pi(a)^2 )
    Cov*(v) = Cov_{a~pi}(pi(a), r(a)) = sum_a pi(a)^2 (q(a)/q(v) - 1)         (E_pi[r] = 1)
    H2*(v)  = 1 - sum_a pi(a)^2                                               (Tsallis-2 entropy of the next step)

``sample_tree`` grows what IBTree would see at v: B children drawn from pi, each with m rollouts to the end and 0/1
rewards; node log-probs are log pi, so conf in ``product`` mode is exactly pi(c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ibtpo.core.tree import Tree
from ibtpo.core.tree_stats import IB_DEFAULTS

State = tuple[int, ...]


@dataclass(frozen=True)
class StepProcess:
    """A seeded finite-horizon step process (see the module docstring)."""

    depth: int = 3
    """Steps in a complete trajectory."""
    actions: int = 4
    """Possible next steps at every state."""
    alpha: float = 0.7
    """Dirichlet concentration of the next-step distributions (small = peaked policies)."""
    seed: int = 0
    """Seed of the distributions and success probabilities."""
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def _rng(self, state: State, tag: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, tag, len(state), *state])

    def policy(self, state: State) -> np.ndarray:
        """pi(. | state): probabilities of the next steps."""
        key = ("pi", state)
        if key not in self._cache:
            self._cache[key] = self._rng(state, 1).dirichlet([self.alpha] * self.actions)
        return self._cache[key]

    def success(self, state: State) -> float:
        """q(state): exact probability that a trajectory continuing from `state` succeeds."""
        if state in self._cache:
            return self._cache[state]
        if len(state) == self.depth:
            q = float(self._rng(state, 2).beta(0.5, 0.5))
        else:
            pi = self.policy(state)
            q = float(sum(pi[a] * self.success(state + (a,)) for a in range(self.actions)))
        self._cache[state] = q
        return q

    def exact(self, state: State, beta: float = IB_DEFAULTS.beta) -> dict[str, float]:
        """Population IB*, Cov* and H2* at a non-terminal state."""
        pi = self.policy(state)
        qv = self.success(state)
        gains = np.array([self.success(state + (a,)) / qv if qv > 0 else 1.0 for a in range(self.actions)])
        sq = pi ** 2
        return {
            "ib": float((1 + beta) * (np.sum(sq * gains) - (1 + 1 / beta) * np.sum(sq))),
            "cov": float(np.sum(sq * (gains - 1))),
            "h2": float(1 - np.sum(sq)),
        }

    def sample_children(self, state: State, b: int, rng: np.random.Generator) -> tuple[list[float], list[float]]:
        """B children drawn from pi with their exact confidences pi(c) and exact gains q(c)/q(v)."""
        pi = self.policy(state)
        qv = self.success(state)
        picks = rng.choice(self.actions, size=b, p=pi)
        return [float(pi[a]) for a in picks], [self.success(state + (int(a),)) / qv if qv > 0 else 1.0 for a in picks]

    def sample_tree(self, state: State, b: int, m: int, rng: np.random.Generator) -> Tree:
        """A tree rooted at `state`: B children from pi, each continued by m independent rollouts with 0/1 rewards."""
        tree = Tree(question_id=str(state), prompt_ids=list(state))
        pi = self.policy(state)
        for a in rng.choice(self.actions, size=b, p=pi):
            child = tree.root.add_child([int(a)], [math.log(pi[a])], [0.0])
            if len(state) + 1 == self.depth:  # the child ends the trajectory: it is the leaf
                child.reward = float(rng.random() < self.success(state + (int(a),)))
                continue
            for _ in range(m):
                node, s = child, state + (int(a),)
                while len(s) < self.depth:
                    p = self.policy(s)
                    nxt = int(rng.choice(self.actions, p=p))
                    node = node.add_child([nxt], [math.log(p[nxt])], [0.0])
                    s = s + (nxt,)
                node.reward = float(rng.random() < self.success(s))
        return tree
