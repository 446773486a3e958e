"""Typed component options: nested options filled from the run config, listed with their config fields."""

from dataclasses import dataclass
from types import SimpleNamespace

from ibtpo.core.registry import config_field, option_sources, options_field, options_from
from ibtpo.core.tree_stats import IB_DEFAULTS, IBOptions


@dataclass(frozen=True)
class Outer:
    lam: float = config_field(0.1, "outer_lambda")
    ib: IBOptions = options_field(IBOptions)


def test_nested_options_are_built_from_the_config_like_the_outer_ones():
    cfg = SimpleNamespace(outer_lambda=0.5, ib_beta=2.0, ib_conf="product")
    got = options_from(Outer, cfg)
    assert got == Outer(lam=0.5, ib=IBOptions(beta=2.0, conf_mode="product", zero_phat=IB_DEFAULTS.zero_phat))
    assert options_from(Outer, None) == Outer() and Outer().ib == IB_DEFAULTS  # no config: the defaults
    assert options_from(Outer, cfg, lam=1.0).lam == 1.0  # overrides still win


def test_option_sources_name_nested_fields_with_their_config_fields():
    assert option_sources(Outer) == [("lam", "outer_lambda"), ("ib.beta", "ib_beta"), ("ib.conf_mode", "ib_conf"),
                                     ("ib.zero_phat", "ib_zero_phat")]
