"""What can be named in a config: every registered component with a one-line summary and its typed options
(``ibtpo components``). User components appear too once their module is imported (``plugins=``)."""

from __future__ import annotations

from ibtpo.algos.advantages import ADV_ESTIMATORS
from ibtpo.algos.losses import POLICY_LOSSES
from ibtpo.algos.presets import PRESETS
from ibtpo.algos.extensions import TRAINER_EXTENSIONS
from ibtpo.core.registry import Registry, option_sources
from ibtpo.rollout.rules import BRANCH_RULES
from ibtpo.rollout.samplers import SAMPLERS

KINDS: dict[str, tuple[Registry, str]] = {
    "algorithm": (PRESETS, "algorithm="),
    "sampler": (SAMPLERS, "sampler="),
    "branch rule": (BRANCH_RULES, "(a sampler's rule)"),
    "advantage estimator": (ADV_ESTIMATORS, "adv_estimator="),
    "policy loss": (POLICY_LOSSES, "policy_loss="),
    "trainer extension": (TRAINER_EXTENSIONS, "(on when its settings are)"),
}


def _summary(obj) -> str:
    if hasattr(obj, "summary"):  # a preset
        return f"{obj.summary} [{obj.paper}]"
    fn = getattr(obj, "grow", obj)  # a sampler spec: its grow function
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else ""


def _options(registry: Registry, name: str, obj) -> str:
    cls = registry.options(name)
    listed = "" if cls is None else ", ".join(f"{opt}<-{field}" for opt, field in option_sources(cls))
    if hasattr(obj, "shape_fields"):  # a sampler: its tree shape, then its own options
        return f"G from {obj.shape_fields}" + (f"; {listed}" if listed else "")
    return listed


def catalog() -> list[dict[str, str]]:
    """One row per registered component (kinds in the order of ``KINDS``, names sorted), plus the rewards."""
    from ibtpo.rewards.functions import known_rewards

    rows = []
    for kind, (registry, field) in KINDS.items():
        for name, obj in registry.items():
            name = str(name)  # a key put into a registry by hand, bypassing register(), is listed, not fatal
            if ":" in name:
                continue  # loaded as module:name
            rows.append({"kind": kind, "name": name, "field": field, "summary": _summary(obj),
                         "options": _options(registry, name, obj)})
    for name, fn in sorted(known_rewards().items(), key=lambda kv: str(kv[0])):
        rows.append({"kind": "reward", "name": str(name), "field": "reward_fn=", "summary": _summary(fn),
                     "options": ""})
    return rows
