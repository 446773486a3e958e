"""The plugin boundary (``ibtpo.core.guard``): registration checks, signature binding, exceptions of user code turned into
one line naming the component with the user's file:line, return-value checks; and the finite-float config rule.
The run-level cases (through ``ibtpo train``) are in ``tests/training/test_plugin_faults.py``."""

import math
from pathlib import Path

import pytest
import torch

from ibtpo.config.schema import ConfigError, build_config
from ibtpo.core.guard import (ComponentError, call, check_grad_norm, check_loss_pair, check_signature, check_tensor,
                         describe, user_location)
from ibtpo.core.registry import Registry, RegistrationError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _user_fn():
    raise ValueError("boom")


def test_call_names_the_component_and_the_users_line():
    with pytest.raises(ComponentError) as err:
        call("advantage estimator 'mine'", _user_fn)
    msg = str(err.value)
    assert msg.startswith("advantage estimator 'mine' raised ValueError: boom at ")
    assert f"{Path(__file__).name}:" in msg and "\n" not in msg
    line = _user_fn.__code__.co_firstlineno + 1
    assert msg.split(" at ")[1].split(";")[0].endswith(f"test_guard.py:{line}")
    assert isinstance(err.value.__cause__, ValueError)  # the full trace stays reachable (IBTPO_TRACEBACK=1)


def test_call_lets_builtin_errors_and_interrupts_through():
    from ibtpo.algos.losses import agg_denominator

    with pytest.raises(ValueError, match="loss_agg_mode"):  # an ibtpo function's own error: unchanged
        call("policy loss 'x'", agg_denominator, torch.ones(2, 2), "nope")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call("policy loss 'x'", interrupted)


def test_user_location_prefers_the_components_own_file():
    def inner():
        return torch.zeros(2) + torch.zeros(3)  # raises inside torch

    try:
        inner()
    except RuntimeError as exc:
        where = user_location(exc, inner)
    assert where.endswith(f"test_guard.py:{inner.__code__.co_firstlineno + 1}")


def test_signature_binding_names_the_problem():
    def est(rewards):
        return rewards

    with pytest.raises(ComponentError, match=r"cannot be called as the trainer calls it.*unexpected keyword "
                                             r"argument 'response_mask'.*add \*\*kwargs"):
        check_signature("advantage estimator 'e'", est, (), {"rewards": 1, "response_mask": 1},
                        hint="add **kwargs")
    check_signature("x", lambda **kw: None, (), {"a": 1})  # fine
    check_signature("x", print, (1, 2))  # a builtin: no signature to check, let through


@pytest.mark.parametrize("value, fragment", [
    (None, "returned None; expected advantages of shape (2, 3)"),
    (torch.zeros(2), "returned a tensor of shape (2,) of float32, finite; expected advantages of shape (2, 3)"),
    (torch.zeros(2, 3, dtype=torch.long), "of int64; expected advantages of shape (2, 3) (floating point)"),
    (torch.tensor([[0.0, float("nan"), 1.0], [0, 0, float("inf")]]), "2 non-finite value(s); expected advantages "
                                                                     "with finite values"),
    ([[0.0] * 3] * 2, "returned a list of 2 item(s)"),
])
def test_check_tensor_says_what_came_back(value, fragment):
    with pytest.raises(ComponentError) as err:
        check_tensor("advantage estimator 'e'", value, "advantages", shape=(2, 3))
    assert fragment in str(err.value)


def test_check_tensor_accepts_good_advantages():
    t = torch.zeros(2, 3)
    assert check_tensor("e", t, "advantages", shape=(2, 3)) is t


def test_loss_pair_checks():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, metrics = check_loss_pair("policy loss 'l'", (logp.sum(), {"a": 1.0}), grad=True)
    assert loss.dim() == 0 and metrics == {"a": 1.0}
    for out, fragment in [((logp * 2, {}), "returned a tensor of shape (2, 3)"),
                          ((torch.tensor(0.0), {}), "does not require grad"),
                          (logp.sum(), "expected a pair (loss: 0-d tensor, metrics: dict)"),
                          ((logp.sum() * math.inf, {}), "1 non-finite value(s)"),
                          ((logp.sum(), [1]), "metrics as a list"),
                          ((logp.sum(), {"a": "x"}), "metric 'a' as a str")]:
        with pytest.raises(ComponentError, match="policy loss 'l'") as err:
            check_loss_pair("policy loss 'l'", out, grad=True)
        assert fragment in str(err.value)


def test_grad_norm_check():
    check_grad_norm(3.0)
    for bad in (math.nan, math.inf):
        with pytest.raises(ComponentError, match="gradient norm is .* before the optimizer step"):
            check_grad_norm(bad)


def test_registration_refuses_non_string_names_and_non_callables():
    reg = Registry("advantage estimator", builtins="")
    with pytest.raises(RegistrationError, match="name 3: a name must be a non-empty string, got int"):
        reg.register(3, lambda **kw: None)
    with pytest.raises(RegistrationError, match="'five' is an int \\(5\\), not a function"):
        reg.register("five", 5)
    with pytest.raises(ValueError):  # also a ValueError, as a taken name is
        reg.register("", len)
    reg._items[7] = len  # put in by hand, bypassing register(): listing still works
    reg.register("b", len)
    assert reg.names() == [7, "b"]


def test_sampler_and_preset_registrations_are_checked():
    import ibtpo

    with pytest.raises(RegistrationError, match="sampler 'bad_sampler' has grow = an int"):
        ibtpo.register_sampler("bad_sampler", 3)
    with pytest.raises(RegistrationError, match="algorithm 'bad_preset' is a dict, not an ibtpo Preset"):
        ibtpo.register_preset("bad_preset", {"sampler": "ib"})
    with pytest.raises(Exception, match="reward function 'r' is a str"):
        ibtpo.register_reward("r", "not a function")
    with pytest.raises(Exception, match="a name must be a non-empty string"):
        ibtpo.register_reward(1, len)


def test_components_listing_survives_a_key_put_in_by_hand():
    from ibtpo.config.catalog import catalog
    from ibtpo.rewards.functions import REWARD_FUNCTIONS

    REWARD_FUNCTIONS[99] = len
    try:
        assert any(r["name"] == "99" for r in catalog())
    finally:
        del REWARD_FUNCTIONS[99]


@pytest.mark.parametrize("field, value", [("kv_budget_gib", "inf"), ("beta", float("inf")), ("kv_budget_gib", "1e400"),
                                          ("ib_beta", float("nan")), ("dist_timeout_s", "inf"),
                                          ("epsilon_high", float("inf")), ("reward_timeout_s", "nan")])
def test_every_float_field_must_be_finite(field, value):
    with pytest.raises(ConfigError) as err:
        build_config(overrides={field: value})
    msg = str(err.value)
    assert f"{field}: got" in msg and "allowed: a finite float" in msg and "\n" not in msg


def test_every_float_field_refuses_infinity():
    """The rule is general: no float field of the config accepts inf (none opts out)."""
    from ibtpo.config.schema import TrainConfig

    floats = [n for n, f in TrainConfig.model_fields.items() if f.annotation in (float, float | None)]
    assert len(floats) > 20
    for name in floats:
        with pytest.raises(ConfigError, match="finite"):
            build_config(overrides={name: math.inf})


def test_describe():
    assert describe(None) == "None"
    assert describe(torch.zeros(())) == "a 0-d tensor of float32, finite"
    assert describe(3) == "an int (3)"
