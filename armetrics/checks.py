"""Argument checks shared by the Python API and the command line.

Every public entry point (``load_model``, ``load_data``, ``analyze``, ``compare``) checks
its arguments here, so a bad call raises a :class:`~armetrics.errors.ConfigError` with the
same one-line message the CLI prints, instead of a ``TypeError`` from deep in numpy or
torch. ``name`` is how the value is called in the message, e.g. ``"-n"`` or ``"seed (--seed)"``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Type

import torch

from .errors import ArmetricsError, ConfigError


def integer(value: Any, name: str, minimum: int | None = None, error: Type[ArmetricsError] = ConfigError) -> int:
    """``value`` as an int (ints and integral numpy ints; never bool, str or 2.5)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise error(f"{name} must be an integer{_at_least(minimum)}, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{name} must be an integer{_at_least(minimum)}, got {value}")
    return value


def _at_least(minimum: int | None) -> str:
    return "" if minimum is None else (" of at least 1" if minimum == 1 else f" of at least {minimum}")


def seed(value: Any, name: str = "seed (--seed)", allow_none: bool = True) -> int | None:
    """A seed: a non-negative integer (numpy's generators refuse negative ones), or None."""
    if value is None and allow_none:
        return None
    return integer(value, name, minimum=0)


def number(value: Any, name: str, *, positive: bool = False, error: Type[ArmetricsError] = ConfigError) -> float:
    """A finite real number (never bool, NaN or inf); ``positive``: also > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value}")
    if positive and value <= 0:
        raise error(f"{name} must be positive, got {value}")
    return value


def numbers_list(values: Iterable[Any], name: str, *, positive: bool = False,
                 error: Type[ArmetricsError] = ConfigError) -> list[float]:
    """A non-empty list of finite numbers (``--mean``/``--std``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise error(f"{name} must be a list of numbers, got {values!r}")
    out = [number(v, name, positive=positive, error=error) for v in values]
    if not out:
        raise error(f"{name} needs at least one value (one per channel)")
    return out


def device(value: Any, name: str = "--device") -> torch.device:
    """A ``torch.device`` that exists on this machine: ``cuda`` without a GPU, ``cuda:3``
    on a two-GPU machine and unknown names are errors that say what to use instead."""
    if isinstance(value, torch.device):
        dev = value
    elif isinstance(value, str):
        try:
            dev = torch.device(value.strip())
        except (RuntimeError, ValueError, TypeError):
            raise ConfigError(f"{name} {value!r} is not a device: use cpu, cuda, cuda:1 or mps") from None
    else:
        raise ConfigError(f"{name} must be a device name such as 'cpu' or 'cuda:0', got {value!r}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"{name} {value}: this machine has no usable CUDA GPU ({build}): use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{name} {value}: there {'is' if count == 1 else 'are'} only {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1}): pick one of them")
        return dev
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ConfigError(f"{name} {value}: no {dev.type} device is available here: use --device cpu")
    return dev
