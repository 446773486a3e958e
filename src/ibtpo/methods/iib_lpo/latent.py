"""IIB-LPO's latent strategy code: a conditional VAE over the policy's own representations and the injection of z.

- :class:`ConditionalVAE` (Sohn et al. 2015) with x = mean-pooled last-layer hidden states of a continuation and
  c = those of its prefix (prompt + completion up to the fork): encoder q(z | x, c), learned prior p(z | c), decoder
  p(x | z, c) with a unit-variance Gaussian (summed squared error). Branches draw z from the prior. Features are
  layer-normalised (no affine) first, so the CVAE sees scale-free inputs whatever the model.
- :class:`LatentInjector`: z -> W z, added to the policy's input embeddings from the fork on (engine and training
  forward alike, so behaviour and training log-probs agree). W starts random with ||W z|| about ``scale`` times the
  mean token-embedding norm, and is trained by the RL loss with the policy.

Ours, not the paper's: the authors' code embeds gold rationales with DeBERTa, trains its VAE offline and adds a
random, never-trained projection of z to hidden states of the last layers (docs/research/iib_lpo_code_reading.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last dim: (..., Z) -> (...)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


class ConditionalVAE(nn.Module):
    """CVAE over pooled hidden states: (B, F) features and conditions, (B, Z) latents."""

    def __init__(self, feature_dim: int, latent_dim: int, hidden: int = 128):
        super().__init__()
        self.feature_dim, self.latent_dim = feature_dim, latent_dim
        self.encoder = _mlp(2 * feature_dim, hidden, 2 * latent_dim)
        self.prior = _mlp(feature_dim, hidden, 2 * latent_dim)
        self.decoder = _mlp(latent_dim + feature_dim, hidden, feature_dim)

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h.float(), (self.feature_dim,))

    def prior_params(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of p(z | c), each (B, Z); logvar clamped to [-8, 4]."""
        mu, logvar = self.prior(self.normalize(cond)).chunk(2, -1)
        return mu, logvar.clamp(-8, 4)

    @torch.no_grad()
    def sample_prior(self, cond: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ p(z | c): (B, F) conditions -> (B, Z)."""
        mu, logvar = self.prior_params(cond)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        return mu + eps * (0.5 * logvar).exp()

    def loss(self, x: torch.Tensor, cond: torch.Tensor, kl_weight: float = 1.0,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per example (mean over the batch): squared error of x's reconstruction + kl_weight * KL(q||p).

        x, cond: (B, F). Returns (loss, metrics).
        """
        x, c = self.normalize(x), self.normalize(cond)
        mu_q, logvar_q = self.encoder(torch.cat([x, c], -1)).chunk(2, -1)
        logvar_q = logvar_q.clamp(-8, 4)
        mu_p, logvar_p = self.prior_params(cond)
        z = mu_q + torch.randn(mu_q.shape, generator=generator, device=mu_q.device) * (0.5 * logvar_q).exp()
        recon = ((self.decoder(torch.cat([z, c], -1)) - x) ** 2).sum(-1).mean()
        kl = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).mean()
        loss = recon + kl_weight * kl
        return loss, {"cvae/loss": float(loss.detach()), "cvae/recon": float(recon.detach()),
                      "cvae/kl": float(kl.detach())}


class LatentInjector(nn.Module):
    """z (B, Z) -> embedding offset W z (B, H)."""

    def __init__(self, latent_dim: int, hidden_size: int, scale: float, embed_norm: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.proj = nn.Linear(latent_dim, hidden_size, bias=False)
        std = scale * embed_norm / math.sqrt(latent_dim * hidden_size)  # E||W z||^2 = H Z std^2 for z ~ N(0, I)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=generator) * std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z.to(self.proj.weight.dtype))
