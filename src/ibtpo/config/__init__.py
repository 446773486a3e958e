"""A run's configuration: ``schema`` (``TrainConfig``, validation, YAML and command-line loading), ``profiles``
(testbed / real-model defaults), ``components`` (the registered objects a config names), ``catalog`` (``ibtpo
components``), ``docs`` (docs/config.md), ``resume_check`` (what a resumed run may change).

``from ibtpo.config import TrainConfig`` (or any public name of ``schema``) keeps working: re-exported lazily, so
importing ``ibtpo.config.profiles`` alone stays cheap."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from ibtpo.config import schema

    if name.startswith("_") or not hasattr(schema, name):
        raise AttributeError(f"module 'ibtpo.config' has no attribute {name!r}")
    return getattr(schema, name)
