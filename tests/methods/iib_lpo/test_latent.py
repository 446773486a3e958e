"""IIB-LPO's latent pieces (algos/latent.py): Gaussian KL, the conditional VAE, the injection W z."""

import math

import pytest
import torch

from ibtpo.methods.iib_lpo.latent import ConditionalVAE, LatentInjector, gaussian_kl


pytestmark = pytest.mark.usefixtures("one_thread")


def test_gaussian_kl_zero_for_identical_gaussians():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn((5, 7), generator=g), torch.randn((5, 7), generator=g)
    kl = gaussian_kl(mu, logvar, mu.clone(), logvar.clone())
    assert kl.shape == (5,)
    torch.testing.assert_close(kl, torch.zeros(5), atol=1e-6, rtol=0)


def test_gaussian_kl_matches_closed_form_1d():
    # KL(N(1, 0.5^2) || N(-1, 2^2)) = log(2 / 0.5) + (0.25 + 4) / (2 * 4) - 1/2
    mu_q, sd_q, mu_p, sd_p = 1.0, 0.5, -1.0, 2.0
    expected = math.log(sd_p / sd_q) + (sd_q ** 2 + (mu_q - mu_p) ** 2) / (2 * sd_p ** 2) - 0.5
    kl = gaussian_kl(torch.tensor([[mu_q]]), torch.tensor([[2 * math.log(sd_q)]]),
                     torch.tensor([[mu_p]]), torch.tensor([[2 * math.log(sd_p)]]))
    assert kl.shape == (1,)
    assert float(kl) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.4175444, rel=1e-6)  # log 4 + 4.25 / 8 - 0.5


def test_gaussian_kl_sums_over_the_last_dim_and_is_asymmetric():
    a = (torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
    b = (torch.tensor([0.0, 0.0]), torch.tensor([math.log(4.0), 0.0]))
    # dim 0: KL(N(0,1) || N(0,4)) = log 2 + 1/8 - 1/2; dim 1: KL(N(1,1) || N(0,1)) = 1/2
    assert float(gaussian_kl(*a, *b)) == pytest.approx(math.log(2) + 1 / 8 - 1 / 2 + 1 / 2, rel=1e-6)
    # reverse: dim 0: KL(N(0,4) || N(0,1)) = -log 2 + 4/2 - 1/2; dim 1: 1/2
    assert float(gaussian_kl(*b, *a)) == pytest.approx(-math.log(2) + 2 - 1 / 2 + 1 / 2, rel=1e-6)


def test_cvae_shapes_and_metrics():
    torch.manual_seed(0)
    cvae = ConditionalVAE(feature_dim=12, latent_dim=5, hidden=16)
    g = torch.Generator().manual_seed(1)
    cond, x = torch.randn((3, 12), generator=g), torch.randn((3, 12), generator=g)
    mu, logvar = cvae.prior_params(cond)
    assert mu.shape == (3, 5) and logvar.shape == (3, 5)
    assert float(logvar.detach().min()) >= -8 and float(logvar.detach().max()) <= 4
    z = cvae.sample_prior(cond, torch.Generator().manual_seed(2))
    assert z.shape == (3, 5) and not z.requires_grad
    torch.testing.assert_close(z, cvae.sample_prior(cond, torch.Generator().manual_seed(2)))  # seeded: reproducible
    assert not torch.equal(z, cvae.sample_prior(cond, torch.Generator().manual_seed(3)))
    loss, metrics = cvae.loss(x, cond, kl_weight=0.5, generator=torch.Generator().manual_seed(4))
    assert loss.dim() == 0 and loss.requires_grad and math.isfinite(float(loss.detach()))
    assert set(metrics) == {"cvae/loss", "cvae/recon", "cvae/kl"}
    assert metrics["cvae/loss"] == pytest.approx(metrics["cvae/recon"] + 0.5 * metrics["cvae/kl"], rel=1e-5)
    assert metrics["cvae/recon"] > 0 and metrics["cvae/kl"] >= 0


def test_cvae_features_are_scale_free():
    """Inputs are layer-normalised: scaling x and c by a positive constant leaves prior and loss unchanged."""
    torch.manual_seed(0)
    cvae = ConditionalVAE(feature_dim=8, latent_dim=3, hidden=16)
    g = torch.Generator().manual_seed(1)
    cond, x = torch.randn((4, 8), generator=g), torch.randn((4, 8), generator=g)
    torch.testing.assert_close(cvae.prior_params(cond)[0], cvae.prior_params(100 * cond)[0], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        a, _ = cvae.loss(x, cond, generator=torch.Generator().manual_seed(5))
        b, _ = cvae.loss(50 * x, 0.5 * cond, generator=torch.Generator().manual_seed(5))  # (layer norm's eps aside)
    assert float(a) == pytest.approx(float(b), rel=1e-3)


def test_cvae_training_lowers_the_loss():
    """x is a fixed function of the condition: a few dozen Adam steps cut the negative ELBO clearly."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn((32, 8), generator=g)
    mix = torch.randn((8, 8), generator=g)
    x = torch.tanh(cond @ mix) + 0.05 * torch.randn((32, 8), generator=g)
    cvae = ConditionalVAE(feature_dim=8, latent_dim=4, hidden=32)
    opt = torch.optim.Adam(cvae.parameters(), lr=1e-2)
    eval_gen = lambda: torch.Generator().manual_seed(123)  # noqa: E731  (same noise for both readings)
    with torch.no_grad():
        initial = float(cvae.loss(x, cond, generator=eval_gen())[0])
    train_gen = torch.Generator().manual_seed(1)
    for _ in range(60):
        loss, _ = cvae.loss(x, cond, generator=train_gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final, metrics = cvae.loss(x, cond, generator=eval_gen())
    assert float(final) < 0.5 * initial, (initial, float(final))
    assert metrics["cvae/recon"] < 0.5 * initial


def test_injector_shape_and_linear():
    inj = LatentInjector(latent_dim=4, hidden_size=10, scale=0.5, embed_norm=2.0,
                         generator=torch.Generator().manual_seed(0))
    z = torch.randn((3, 4), generator=torch.Generator().manual_seed(1))
    out = inj(z)
    assert out.shape == (3, 10)
    torch.testing.assert_close(out, z @ inj.proj.weight.T)
    torch.testing.assert_close(inj(torch.zeros((2, 4))), torch.zeros((2, 10)))
    assert inj.proj.bias is None
    assert inj(z.double()).dtype == torch.float32  # z is cast to the weight's dtype


def test_injector_is_seeded_by_its_generator():
    a = LatentInjector(4, 10, 0.5, 2.0, generator=torch.Generator().manual_seed(0))
    b = LatentInjector(4, 10, 0.5, 2.0, generator=torch.Generator().manual_seed(0))
    c = LatentInjector(4, 10, 0.5, 2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.proj.weight, b.proj.weight) and not torch.equal(a.proj.weight, c.proj.weight)


@pytest.mark.parametrize("scale,embed_norm", [(0.25, 1.0), (0.25, 8.0), (1.0, 3.0)])
def test_injector_offset_norm_is_scale_times_embed_norm(scale, embed_norm):
    hidden, latent = 128, 16
    inj = LatentInjector(latent, hidden, scale, embed_norm, generator=torch.Generator().manual_seed(0))
    z = torch.randn((512, latent), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        norm = float(inj(z).norm(dim=-1).mean())
    assert norm == pytest.approx(scale * embed_norm, rel=0.2)
