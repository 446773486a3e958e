"""Algorithm presets: each is a sampler + an advantage estimator + a policy loss (+ regularisers), by name.

``algorithm=NAME`` fills these config fields unless the user sets them (precedence: field defaults < preset < YAML
< command line), so every method of the family runs from one switch and any part can still be overridden, e.g.
``algorithm=ib_tpo ib_tpo_lambda=0`` (the sampler-only ablation) or ``algorithm=ib_tpo sampler=random``.
Each method module (``ibtpo.methods``) registers its presets; ``ibtpo.register_preset`` adds your own.

Shared settings (KL coefficient, learning rate, sampling, budget) are not part of a preset, so a comparison changes
only the algorithm. The IB-TPO paper trains every method with a k3 KL of 0.001 (``beta=0.001``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ibtpo.core.registry import Registry


@dataclass(frozen=True)
class Preset:
    """One method of the family."""

    fields: dict[str, Any]
    """Config fields the preset sets."""
    summary: str
    """What it is, in one line."""
    paper: str
    """Where it comes from."""


TREE_SHAPE = {"tree_b0": 4, "tree_l": 9, "tree_k": 1, "tree_b": 1}
"""The paper's (B0, L, K, B) of every tree method: G = 12."""

def _preset_problem(preset: Any) -> str | None:
    if not isinstance(preset, Preset):
        return f"is a {type(preset).__name__}, not an ibtpo Preset (ibtpo.Preset(fields=..., summary=..., paper=...))"
    if not isinstance(preset.fields, dict) or not all(isinstance(k, str) for k in preset.fields):
        return "has fields that are not a mapping of config field name -> value"
    return None


PRESETS: Registry[Preset] = Registry("algorithm", check=_preset_problem)
DEFAULT_ALGORITHM = "ib_tpo"


def register_preset(name: str, preset: Preset) -> Preset:
    """Register an ``algorithm=`` preset."""
    return PRESETS.register(name, preset)


def apply_preset(data: dict[str, Any], default: str = DEFAULT_ALGORITHM) -> dict[str, Any]:
    """Raw config input with the preset's fields filled in where `data` does not set them (an unknown name is left
    for the config's own check)."""
    name = data.get("algorithm", default)
    if not isinstance(name, str) or (name not in PRESETS and ":" not in name):
        return data
    try:
        preset = PRESETS.get(name)
    except KeyError:
        return data
    if not isinstance(preset, Preset):
        return data
    return {**preset.fields, **data}
