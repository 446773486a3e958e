"""IIB-LPO's trainer hooks: latent branches (sampler + injection in the forward), the online CVAE, the IB filter and
the self-reward. Everything IIB-LPO adds to a training step is here; the generic trainer only calls the hooks."""

from __future__ import annotations

import torch

from ibtpo.methods.iib_lpo.core import group_zscore
from ibtpo.methods.iib_lpo.ib_filter import apply_ib_filter
from ibtpo.methods.iib_lpo.sampler import LatentBranching
from ibtpo.algos.extensions import TrainerExtension, register_extension
from ibtpo.core.tree import Node


def latent_row_extras(rows: list[tuple[int, list[Node]]]) -> dict[str, torch.Tensor]:
    """Per training row (prompt length, leaf lineage): ``latent_z`` (N, Z), the code of the row's branch (zeros
    without one), and ``latent_start`` (N,), the first input column that gets its offset (the branch's last prefix
    token); {} when no row has a code."""
    found = []
    for prompt_len, lineage in rows:
        branch = next((n for n in lineage if "z" in n.info), None)
        found.append(None if branch is None else (torch.as_tensor(branch.info["z"], dtype=torch.float),
                                                  prompt_len + branch.offset - 1))
    if all(f is None for f in found):
        return {}
    dim = next(f for f in found if f is not None)[0].shape[-1]
    z = torch.stack([torch.zeros(dim) if f is None else f[0] for f in found])
    start = torch.tensor([0 if f is None else f[1] for f in found], dtype=torch.long)
    return {"latent_z": z, "latent_start": start}


class IIBLPOExtension(TrainerExtension):
    """Latent codes when ``sampler=iib`` and ``iib_latent`` is not none; the IB filter when ``iib_keep`` > 0; the
    self-reward when ``iib_self_reward`` > 0."""

    state_key = "latent"

    def __init__(self, trainer):
        cfg = trainer.cfg
        self.cfg, self.policy, self.tokenizer = cfg, trainer.policy, trainer.tokenizer
        self.extract = trainer.rewards.extract
        self.latent = None
        if cfg.sampler == "iib" and cfg.iib_latent != "none":
            embed = self.policy.get_input_embeddings().weight
            self.latent = LatentBranching(cfg.iib_latent, embed.shape[1], float(embed.detach().norm(dim=-1).mean()),
                                          cfg.iib_latent_dim, cfg.iib_inject_scale, cfg.iib_cvae_hidden,
                                          cfg.iib_cvae_lr, cfg.iib_cvae_steps, generator=trainer.generator,
                                          device=trainer.device)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The injection W is trained by the RL loss."""
        return [] if self.latent is None else list(self.latent.injector.parameters())

    def grow_extras(self) -> dict:
        return {} if self.latent is None else {"latent": self.latent}

    def after_rollout(self, trees) -> dict[str, float]:
        """Fit the CVAE on the step's correct continuations, then score and filter the trajectories."""
        cfg = self.cfg
        metrics = self.latent.fit() if self.latent is not None else {}
        if cfg.iib_keep or cfg.iib_self_reward:
            metrics.update(apply_ib_filter(self.policy, self.tokenizer, trees, self.extract, cfg.iib_beta,
                                           cfg.temperature, cfg.iib_keep))
        return metrics

    def rows_per_question(self, group_size: int) -> int:
        return min(group_size, self.cfg.iib_keep or group_size)

    def row_extras(self, rows: list[tuple[int, list[Node]]]) -> dict[str, torch.Tensor]:
        return latent_row_extras(rows)

    def adjust_advantages(self, batch, advantages: torch.Tensor) -> torch.Tensor:
        """IB self-reward, added after the group normalisation of the outcome."""
        if not self.cfg.iib_self_reward:
            return advantages
        scores = torch.tensor([leaf.info["ib_score"] for leaf in batch.leaves])
        bonus = self.cfg.iib_self_reward * group_zscore(scores, batch.group_ids)
        return advantages + bonus[:, None] * batch.response_mask

    def forward_kwargs(self, batch, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Each row's latent offset W z from its branch's first column (the policy's forwards, not the reference's)."""
        if self.latent is None or "latent_z" not in batch.extras:
            return {}
        return {"embed_offset": self.latent.injector(batch.extras["latent_z"][rows].to(device)),
                "offset_start": batch.extras["latent_start"][rows].to(device)}

    def packed_blocker(self) -> str:
        """Latent codes offset a branch's input embeddings from its last prefix token on, a token its siblings share
        with other codes: that token has one input per path, so the run needs flattened rows."""
        if self.latent is None:
            return ""
        return "IIB-LPO's latent codes give a shared prefix token a different input embedding on each branch"

    def state_dict(self) -> dict:
        return {} if self.latent is None else self.latent.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.latent is not None:
            self.latent.load_state_dict(state)


@register_extension("iib_lpo")
def iib_lpo_extension(trainer) -> IIBLPOExtension | None:
    cfg = trainer.cfg
    uses = (cfg.sampler == "iib" and cfg.iib_latent != "none") or cfg.iib_keep or cfg.iib_self_reward
    return IIBLPOExtension(trainer) if uses else None
