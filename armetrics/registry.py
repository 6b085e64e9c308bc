"""Probe registry: ``@register_probe("name")`` writes name -> class into one table.

Built-in probes register when :mod:`armetrics.probes` is imported; third-party
probes are found through the entry-point group ``armetrics.probes`` (an entry point
names a Probe subclass; its entry-point name is the probe name). Both are loaded on
the first lookup, so ``import armetrics`` stays cheap. A plugin that fails to
import is reported with a warning and skipped.
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
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _PROBES:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break armetrics
            warnings.warn(f"armetrics: skipping probe plugin {ep.name!r} ({ep.value}): {exc}", stacklevel=2)
            continue
        if isinstance(obj, type) and ep.name not in _PROBES:
            register_probe(ep.name)(obj)


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
