"""The methods of the family, one module each; importing this package registers every built-in component.

=================  ===============================================================================================
``grpo``           GRPO and its regularised variants (clip-higher, entropy, Clip-Cov, KL-Cov, IBRO), ``tree_grpo``
``ib_tpo``         IB-TPO: the IB-Score, the IBTree rule, the A_GL + lambda A_IB step advantage, ``ibtree_grpo``
``treerl``         TreeRL: entropy-guided token forks, global + local value advantage
``treepo``         TreePO: fixed-width segment trees, sub-group advantage
``random_tree``    random-branching ablation
``iib_lpo``        IIB-LPO (a reconstruction): latent forks, IB filter, self-reward, as trainer hooks
=================  ===============================================================================================

A method module registers what it brings (estimator, branch rule, sampler, preset, trainer extension) in the open
registries (``ibtpo.core.registry``), exactly as a user's module would.
"""

from ibtpo.methods import grpo, ib_tpo, iib_lpo, random_tree, treepo, treerl  # noqa: F401  (registration)
