import math

import pytest
import torch

from ibtpo.algos.losses import LossConfig, agg_loss, entropy_from_logits, get_policy_loss, kl_k3

RATIOS = torch.tensor([[1.5, 1.5, 0.5, 0.5]])
ADV = torch.tensor([[1.0, -1.0, 1.0, -1.0]])


def _loss(cfg, ratios=RATIOS, adv=ADV, mask=None):
    mask = torch.ones_like(ratios) if mask is None else mask
    return get_policy_loss("ppo_clip")(torch.zeros_like(ratios), ratios.log(), adv, mask, cfg)


def test_ppo_clip_hand_computed():
    loss, m = _loss(LossConfig(epsilon=0.2, loss_agg_mode="token-mean"))
    # per token: -min(rA, clip(r)A) -> [-1.2, 1.5, -0.5, 0.8]
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert m["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert m["actor/pg_loss"] == pytest.approx(loss.item())


def test_clip_higher_raises_upper_bound_only():
    loss, _ = _loss(LossConfig(epsilon=0.2, epsilon_high=0.28, loss_agg_mode="token-mean"))
    assert loss.item() == pytest.approx((-1.28 + 1.5 - 0.5 + 0.8) / 4)


def test_dual_clip_caps_negative_advantage_loss():
    ratios, adv = torch.tensor([[5.0, 5.0]]), torch.tensor([[-1.0, 1.0]])
    loss, _ = _loss(LossConfig(epsilon=0.2, dual_clip_c=3.0, loss_agg_mode="token-mean"), ratios, adv)
    assert loss.item() == pytest.approx((3.0 + -1.2) / 2)
    loss_nodual, _ = _loss(LossConfig(epsilon=0.2, loss_agg_mode="token-mean"), ratios, adv)
    assert loss_nodual.item() == pytest.approx((5.0 - 1.2) / 2)


def test_gradient_is_zero_where_clipped():
    logp = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0]])
    loss, _ = get_policy_loss("ppo_clip")(torch.zeros(1, 2), logp, adv, torch.ones(1, 2),
                                          LossConfig(loss_agg_mode="token-mean"))
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0  # clipped: no push beyond 1 + eps
    assert logp.grad[0, 1].item() == pytest.approx(-0.5 / 2)  # d(-r A)/dlogp = -r A, averaged over 2 tokens


def test_agg_modes_hand_computed():
    vals = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert agg_loss(vals, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert agg_loss(vals, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4) / 2)
    assert agg_loss(vals, mask, "seq-mean-token-sum-norm", norm_length=4).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(vals, mask, "bogus")


def test_kl_k3_hand_computed_and_nonnegative():
    val = kl_k3(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert val.item() == pytest.approx(0.5 - math.log(0.5) - 1)
    x = torch.randn(1000)
    assert (kl_k3(x, x.roll(1)) >= 0).all()
    assert kl_k3(x, x).abs().max().item() == 0.0


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([0.0, -1e9])).item() == pytest.approx(0.0, abs=1e-6)


def test_token_covariance_hand_computed():
    from ibtpo.algos.losses import token_covariance

    logp = torch.tensor([[-1.0, -3.0, 0.0]])
    adv = torch.tensor([[2.0, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # masked means: logp -2, adv 1 -> (1)(1), (-1)(-1); the padded token gets 0
    assert token_covariance(logp, adv, mask).tolist() == [[1.0, 1.0, 0.0]]


def test_clip_cov_removes_gradient_of_drawn_high_covariance_tokens():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[-0.5, -2.5, -1.5, -1.5]], requires_grad=True)  # mean -1.5
    adv = torch.tensor([[2.0, -2.0, 0.0, 0.0]])  # mean 0 -> covariances [2, 2, 0, 0]
    mask = torch.ones(1, 4)
    cfg = LossConfig(epsilon=10.0, loss_agg_mode="token-mean", clip_cov_ratio=0.25, clip_cov_lb=1.0, clip_cov_ub=5.0)
    torch.manual_seed(0)
    loss, m = get_policy_loss("clip_cov")(old, logp, adv, mask, cfg)
    loss.backward()
    grads = logp.grad[0].tolist()
    # one token (25% of 4) among the two in the band (1, 5) loses its gradient; the others keep -A*r/4
    assert m["actor/clip_cov_frac"] == 0.25
    full = [-2.0 * math.exp(-0.5) / 4, 2.0 * math.exp(-2.5) / 4]
    assert sorted([grads[0] == 0.0, grads[1] == 0.0]) == [False, True]
    assert grads[0] in (0.0, pytest.approx(full[0])) and grads[1] in (0.0, pytest.approx(full[1]))
    none, _ = get_policy_loss("clip_cov")(old, logp.detach(), adv, mask,
                                          LossConfig(epsilon=10.0, loss_agg_mode="token-mean", clip_cov_lb=3.0))
    ppo, _ = get_policy_loss("ppo_clip")(old, logp.detach(), adv, mask, LossConfig(epsilon=10.0,
                                                                                     loss_agg_mode="token-mean"))
    assert none.item() == pytest.approx(ppo.item())  # nothing in the band: plain PPO


def test_kl_cov_penalises_top_covariance_tokens():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    logp = torch.tensor([[-0.5, -2.5, -1.5, -1.5]])
    adv = torch.tensor([[2.0, -1.0, 0.0, 0.0]])  # adv mean 0.25 -> covariances [1.75, 1.25, 0, 0]
    cfg = LossConfig(loss_agg_mode="token-mean", kl_cov_ratio=0.25, kl_cov_coef=2.0)
    loss, m = get_policy_loss("kl_cov")(old, logp, adv, torch.ones(1, 4), cfg)
    r = [math.exp(x) for x in (-0.5, -2.5, -1.5, -1.5)]
    unclipped = [-2.0 * r[0], 1.0 * r[1], 0.0, 0.0]
    assert loss.item() == pytest.approx((sum(unclipped) + 2.0 * 0.5) / 4)  # only token 0 is penalised
    assert m["actor/kl_cov_frac"] == 0.25


def test_regularizers_hand_computed():
    from ibtpo.algos.losses import REGULARIZERS

    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0]])
    ent = torch.tensor([[0.5, 1.5]])
    adv = torch.tensor([[2.0, -1.0]])
    mask = torch.ones(1, 2)
    cfg = LossConfig(loss_agg_mode="token-mean", kl_coef=0.1, entropy_coef=0.01, ibro_coef=0.2)
    kl, m = REGULARIZERS["kl"](logp, ent, adv, mask, ref, cfg)
    assert kl.item() == pytest.approx(0.1 * (0 + (math.exp(1) - 1 - 1)) / 2) and m["actor/kl"] > 0
    bonus, _ = REGULARIZERS["entropy"](logp, ent, adv, mask, ref, cfg)
    assert bonus.item() == pytest.approx(-0.01 * 1.0)
    ibro, _ = REGULARIZERS["ibro"](logp, ent, adv, mask, ref, cfg)
    assert ibro.item() == pytest.approx(-0.2 * (2.0 * 0.5 - 1.0 * 1.5) / 2)


def test_kl_k3_is_clamped_like_verl():
    """Far from the reference the k3 value stops at 10 with no gradient (it grew like e^d: 16.1 at d = 3)."""
    logp = torch.tensor([-5.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -2.0])  # d = ref - logp = 3 and 0
    val = kl_k3(logp, ref)
    assert val[0].item() == pytest.approx(10.0) and val[1].item() == 0.0
    val.sum().backward()
    assert logp.grad[0].item() == 0.0
    small = kl_k3(torch.tensor([-2.5], requires_grad=True), torch.tensor([-2.0]))  # d = 0.5: unclamped
    assert small.item() == pytest.approx(math.exp(0.5) - 0.5 - 1)
