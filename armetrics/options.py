"""Probe options: ``--set probe.option=value`` parsing and type coercion."""

from __future__ import annotations

import difflib
import math
import types
import typing
from fractions import Fraction
from typing import Any, Iterable

from .errors import ConfigError, shorten
from .probe import Option

TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_sets(items: Iterable[str]) -> dict[str, dict[str, str]]:
    """``["margin.bins=30", ...]`` -> ``{"margin": {"bins": "30"}}`` (values still strings)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        probe, dot, opt = key.strip().partition(".")
        if not sep or not dot or not probe or not opt:
            raise ConfigError(f"malformed --set {item!r}: write --set probe.option=value, e.g. --set confidence.bins=15")
        out.setdefault(probe, {})[opt.strip()] = value.strip()
    return out


def _number(text: str, kind: type) -> Any:
    text = text.strip()
    try:
        if kind is int:
            return int(text)
        if "/" in text:  # 8/255
            return float(Fraction(text))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'} (e.g. {'15' if kind is int else '0.03 or 8/255'})") from None


def coerce(option: Option, value: Any) -> Any:
    """Convert ``value`` (a CLI string or a Python value) to the option's type."""
    typ = option.type
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null", ""}):
            return None
        last: Exception | None = None
        for a in args:
            try:
                return coerce(Option(option.name, a, option.default), value)
            except ValueError as exc:
                last = exc
        raise ValueError(str(last))
    if origin is typing.Literal:
        choices = typing.get_args(typ)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value.strip()):
                return c
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if origin in (list, tuple):
        (inner,) = typing.get_args(typ)[:1] or (str,)
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        conv = [coerce(Option(option.name, inner, None), v) for v in items]
        return tuple(conv) if origin is tuple else conv
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise ValueError("expected true or false")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"expected {'an integer' if typ is int else 'a number'}")
        if isinstance(value, str):
            value = _number(value, typ)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        if not isinstance(value, (int, float)):
            raise ValueError(f"expected {'an integer' if typ is int else 'a number'}")
        value = typ(value)
    if typ is float and not math.isfinite(value):
        raise ValueError("expected a finite number (not nan or inf)")
    if typ in (int, float):
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    return value


def resolve_options(probe_name: str, declared: dict[str, Option], given: dict[str, Any]) -> dict[str, Any]:
    """Check option names and coerce values; ConfigError listing valid options otherwise."""
    out = {}
    for key, value in given.items():
        if key not in declared:
            close = difflib.get_close_matches(key, declared, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            valid = ", ".join(declared) or "none"
            raise ConfigError(f"probe {probe_name!r} has no option {key!r}: {hint}valid options: {valid}")
        try:
            out[key] = coerce(declared[key], value)
        except ValueError as exc:
            raise ConfigError(f"bad value {shorten(repr(value))} for {probe_name}.{key}: {exc}") from None
    return out
