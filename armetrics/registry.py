"""Probe registry: ``@register_probe("name")`` writes name -> class into one table.

Built-in probes register when :mod:`armetrics.probes` is imported; third-party
probes are found through the entry-point group ``armetrics.probes`` (an entry point
names a Probe subclass; its entry-point name is the probe name). Both are loaded on
the first lookup, so ``import armetrics`` stays cheap. A plugin that fails to
import, or names something that is not a Probe subclass, is reported with a warning
and skipped; one reusing a name already registered (a built-in) is ignored with a
warning: the registered probe wins.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import warnings
from importlib.metadata import entry_points
from typing import Callable, TypeVar

from .errors import ConfigError

ENTRY_POINT_GROUP = "armetrics.probes"

_PROBES: dict[str, type] = {}
_loaded = False

P = TypeVar("P", bound=type)


def register_probe(name: str | None = None, *, description: str | None = None) -> Callable[[P], P]:
    """Class decorator registering a :class:`~armetrics.probe.Probe` under ``name``.

    ``description`` (default: the first line of the class docstring) is the one-line
    meaning shown by ``armetrics probes``.
    """

    def deco(cls: P) -> P:
        probe_name = name or cls.__name__.lower()
        existing = _PROBES.get(probe_name)
        if existing is not None and existing is not cls:
            raise ConfigError(
                f"probe name {probe_name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}: choose another name"
            )
        cls.name = probe_name
        doc = (cls.__doc__ or "").strip().splitlines()
        cls.description = description or (doc[0].strip() if doc else "")
        _PROBES[probe_name] = cls
        return cls

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("armetrics.probes")
    from .probe import Probe  # here, not at the top: the registry is imported before torch is needed

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _PROBES:
            owner = _PROBES[ep.name]
            kind = "the built-in probe" if owner.__module__.startswith("armetrics.") else "the probe"
            warnings.warn(f"armetrics: ignoring probe plugin {ep.name!r} ({ep.value}): the name belongs to {kind} "
                          f"{owner.__module__}.{owner.__qualname__}, which wins; give the entry point another name",
                          stacklevel=2)
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break armetrics
            warnings.warn(f"armetrics: skipping probe plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)
            continue
        if not (isinstance(obj, type) and issubclass(obj, Probe)):
            warnings.warn(f"armetrics: skipping probe plugin {ep.name!r} ({ep.value}): it names "
                          f"{_describe(obj)}, not a subclass of armetrics.probe.Probe; point the entry point at one",
                          stacklevel=2)
            continue
        register_probe(ep.name)(obj)


def _describe(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def get_probe(name: str) -> type:
    """The probe class registered as ``name``; a ConfigError with close matches otherwise."""
    if not isinstance(name, str):
        raise ConfigError(f"a probe name must be a string such as 'margin', got {name!r} (see `armetrics probes`)")
    _load_all()
    try:
        return _PROBES[name]
    except KeyError:
        close = difflib.get_close_matches(name, _PROBES, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"unknown probe {name!r}: {hint}available: {', '.join(sorted(_PROBES))} "
            f"(see `armetrics probes`)"
        ) from None


def list_probes(pattern: str | None = None) -> list[str]:
    """Registered probe names, sorted, optionally filtered by an fnmatch pattern."""
    if pattern is not None and not isinstance(pattern, str):
        raise ConfigError(f"a probe name pattern must be a string such as 'm*', got {pattern!r}")
    _load_all()
    names = sorted(_PROBES)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]
