"""Open name -> component registries (verl's ``@register_adv_est("name")`` pattern) and typed component options.

Every pluggable part (advantage estimator, policy loss, sampler, branch rule, algorithm preset, trainer extension)
lives in a :class:`Registry`. The built-ins register themselves when ``ibtpo.methods`` is imported; users register
their own from Python (``ibtpo.register_estimator`` ...) or name them on the command line as ``module:name`` /
``path/to/file.py:name``, which imports the object and registers it under that spelling (see :meth:`Registry.get`).

A component declares its options as a frozen dataclass (``options=`` at registration). Each option field may map to a
run-config field (``config_field``); :func:`options_from` builds the options of a run from its config, so a default
is written once, in the options class, and the run config's field refers to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

F = TypeVar("F")


class RegistryError(KeyError):
    """An unknown name or an object that cannot be loaded; ``str()`` is one line naming it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RegistrationError(RegistryError, ValueError):
    """A registration refused: a name that is not a non-empty string, or an object of the wrong kind (e.g. an int
    where a function is expected). One line naming the component."""


def _describe(obj: Any) -> str:
    shown, name = repr(obj), type(obj).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name} ({shown if len(shown) <= 40 else shown[:37] + '...'})"


def callable_item(obj: Any) -> str | None:
    """The default check of a registry's items: a function or other callable (None = fine, else the problem)."""
    return None if callable(obj) else f"is {_describe(obj)}, not a function or other callable"


def import_file(path: str | Path) -> Any:
    """Import a .py file as a module, once per resolved path (a second call returns the same module)."""
    path = Path(path).expanduser().resolve()
    name = f"ibtpo_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


def load_object(spec: str, what: str = "object") -> Any:
    """The object named by ``module.path:attr`` or ``path/to/file.py:attr`` (RegistryError, one line, if not found)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise RegistryError(f"{what} {spec!r}: write module:name or file.py:name")
    if target.endswith(".py") and not Path(target).expanduser().is_file():
        raise RegistryError(f"{what} {spec!r}: file {target} not found")
    try:
        module = import_file(target) if target.endswith(".py") else importlib.import_module(target)
    except (Exception, SystemExit) as exc:  # a user module that fails to import: one line with its own error
        from ibtpo.core.guard import first_line, user_location

        where = user_location(exc)
        raise RegistryError(f"{what} {spec!r}: cannot import {target} ({first_line(exc)}"
                            f"{f' at {where}' if where else ''})") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{what} {spec!r}: {target} has no attribute {attr!r}") from None


class Registry(Generic[F]):
    """Components registered by name, each with an optional options dataclass.

    ``get`` of an unknown name raises a RegistryError listing the known ones; a name containing ':' is loaded with
    :func:`load_object` and registered under that name first (so ``adv_estimator=my_pkg.adv:my_estimator`` works)."""

    def __init__(self, kind: str, coerce: Callable[[Any], F] | None = None, builtins: str = "ibtpo.methods",
                 check: Callable[[Any], str | None] = callable_item):
        self.kind = kind
        self._check = check
        """item -> None, or the problem of an object that cannot be this registry's item (checked at registration)."""
        self._builtins = builtins
        """Module whose import registers the built-in components, imported on the first lookup (so a registry is
        complete however the package was entered)."""
        self._coerce = coerce
        """Turns a user object loaded by ``module:name`` into this registry's item type (e.g. a function into a
        sampler spec); None keeps it as it is."""
        self._items: dict[str, F] = {}
        self._options: dict[str, type | None] = {}

    def register(self, name: str, obj: F | None = None, *, options: type | None = None,
                 replace: bool = False) -> Any:
        """Register `obj` under `name` (a call), or the decorated object (``@registry.register("name")``).

        `options`: the component's frozen options dataclass (see :func:`options_from`). Registering a taken name
        raises ValueError unless `replace`."""
        if not isinstance(name, str) or not name.strip():
            raise RegistrationError(f"{self.kind} name {name!r}: a name must be a non-empty string, got "
                                    f"{type(name).__name__}")

        def add(item: F) -> F:
            problem = self._check(item)
            if problem:
                raise RegistrationError(f"{self.kind} {name!r} {problem}")
            if name in self._items and not replace and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            self._options[name] = options
            return item

        return add if obj is None else add(obj)

    def _load_builtins(self) -> None:
        if self._builtins:
            module, self._builtins = self._builtins, ""
            importlib.import_module(module)

    def get(self, name: str) -> F:
        if name not in self._items:
            self._load_builtins()
        if name not in self._items and ":" in name:
            obj = load_object(name, self.kind)
            self.register(name, self._coerce(obj) if self._coerce else obj)  # checked there
        try:
            return self._items[name]
        except KeyError:
            known = [n for n in self.names() if ":" not in n]  # not the ones loaded as module:name
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {', '.join(known)} "
                                f"(or module:name of your own)") from None

    def options(self, name: str) -> type | None:
        """The options dataclass `name` was registered with (None: it takes none)."""
        self.get(name)
        return self._options.get(name)

    def __getitem__(self, name: str) -> F:
        return self.get(name)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._items

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._items, key=str)  # key=str: a key put into _items by hand cannot break the listing

    def __iter__(self):
        return iter(self.names())

    def items(self) -> list[tuple[str, F]]:
        """(name, component) pairs, sorted by name."""
        return [(n, self._items[n]) for n in self.names()]

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._items)


def config_field(default: Any, config: str, doc: str = "") -> Any:
    """A dataclass field whose value, in a run, comes from run-config field `config` (see :func:`options_from`)."""
    return dataclasses.field(default=default, metadata={"config": config, "doc": doc})


def options_field(cls: type) -> Any:
    """A dataclass field holding another options dataclass (e.g. the IB options inside IB-TPO's estimator options),
    filled from the run config by :func:`options_from` like the outer one; default: `cls`'s defaults."""
    return dataclasses.field(default_factory=cls, metadata={"options": cls})


def options_from(cls: type, cfg: Any, **overrides: Any) -> Any:
    """An instance of options dataclass `cls` filled from a run config: each field mapped with :func:`config_field`
    (or named like a config field) takes the config's value; fields the config lacks keep their defaults; a field
    made with :func:`options_field` is an options dataclass built the same way."""
    values = {}
    for f in dataclasses.fields(cls):
        if "options" in f.metadata:
            values[f.name] = options_from(f.metadata["options"], cfg)
            continue
        key = f.metadata.get("config", f.name)
        if cfg is not None and hasattr(cfg, key):
            values[f.name] = getattr(cfg, key)
    values.update(overrides)
    return cls(**values)


def default_of(cls: type, name: str) -> Any:
    """The default of field `name` of options dataclass `cls` (the one place a default is written)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def option_sources(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(option name, run-config field) pairs of options dataclass `cls`, nested options as ``outer.inner``."""
    out = []
    for f in dataclasses.fields(cls):
        if "options" in f.metadata:
            out += option_sources(f.metadata["options"], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f.metadata.get("config", f.name)))
    return out

