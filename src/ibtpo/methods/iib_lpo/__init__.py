"""IIB-LPO (arXiv 2601.05870; METHOD.md section 8), reconstructed: see docs/methods/iib_lpo.md for which choices are
ours. It plugs into the generic code through the registries and the trainer hooks only:

- ``core.py``: pure pieces (fork candidates, the IB trajectory score, top-N filter, group z-score);
- ``latent.py``: the CVAE over the policy's hidden states and the latent injection W z;
- ``sampler.py``: sampler ``iib`` (entropy-triggered forks, one level deep, each branch with its latent code);
- ``ib_filter.py``: scoring every trajectory with the policy, I(r; a) - beta I(q; r);
- ``extension.py``: the trainer hooks (latent offsets in the forward, CVAE fits, filter, self-reward, checkpoints);
- presets ``iib_lpo``, ``iib_lpo_no_latent``, ``iib_lpo_no_filter`` (below).
"""

from ibtpo.algos.presets import Preset, register_preset
from ibtpo.methods.iib_lpo import extension, sampler  # noqa: F401  (registration)

_IIB = {"sampler": "iib", "adv_estimator": "grpo", "policy_loss": "ppo_clip", "tree_b0": 4, "iib_forks": 2,
        "ibro_coef": 0.005}  # 4 rollouts + 2 latent branches each: G = 12, as IB-TPO's; IBRO as in the authors' code

register_preset("iib_lpo", Preset(
    {**_IIB, "iib_latent": "cvae", "iib_keep": 8, "iib_self_reward": 0.1},
    "IIB-LPO: entropy-triggered forks with a CVAE latent code, IB filter (top 8 of 12) + self-reward, IBRO 0.005",
    "IIB-LPO, arXiv 2601.05870 (reconstructed: docs/methods/iib_lpo.md)"))
register_preset("iib_lpo_no_latent", Preset(
    {**_IIB, "iib_latent": "none", "iib_keep": 8, "iib_self_reward": 0.1},
    "IIB-LPO without the latent code: plain entropy-triggered forks, IB filter, IBRO",
    "ablation of IIB-LPO, arXiv 2601.05870"))
register_preset("iib_lpo_no_filter", Preset(
    {**_IIB, "iib_latent": "cvae", "iib_keep": 0, "iib_self_reward": 0.0},
    "IIB-LPO without the IB filter and self-reward: all 12 trajectories, outcome reward",
    "ablation of IIB-LPO, arXiv 2601.05870"))
