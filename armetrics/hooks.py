"""Capture layer outputs with forward hooks, always removed in ``try/finally``."""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

from .errors import ConfigError, ProbeError
from .functional import first_output


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Map module names (``model.named_modules()`` names) to modules, with a clear error."""
    out = {}
    for name in names:
        try:
            out[name] = model.get_submodule(name)
        except AttributeError:
            known = [n for n, _ in model.named_modules() if n][:12]
            raise ConfigError(
                f"model has no layer named {name!r}: use a name from model.named_modules(), "
                f"e.g. {', '.join(known)}"
            ) from None
    return out


@contextmanager
def forward_hooks(model: nn.Module, names: Sequence[str], make_hook) -> Iterator[None]:
    """Register ``make_hook(name)`` as a forward hook on each named layer for the block;
    the hooks are removed on exit, whatever happens."""
    handles = []
    try:
        for name, module in resolve_layers(model, names).items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield
    finally:
        for h in handles:
            h.remove()


class Capture(dict):
    """Layer outputs by name, filled by forward hooks while ``enabled``."""

    enabled: bool = True


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[Capture]:
    """Within the block, every forward pass of ``model`` stores the output of each named
    layer in the yielded dict (overwriting the previous pass) while ``.enabled`` is
    true. The empty name ``""`` means the model itself. Hooks are removed on exit,
    whatever happens."""
    captured = Capture()

    def make_hook(key: str):
        def hook(_module, _inputs, output):
            if captured.enabled:
                captured[key] = first_output(output)

        return hook

    with forward_hooks(model, names, make_hook):
        yield captured


def select_layers(model: nn.Module, patterns: Sequence[str] | None, *, option: str,
                  types: tuple[type, ...], among: str = "typed", include_root: bool = False,
                  ignore: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Layers of ``model`` as ``(name, module)`` in ``named_modules()`` order.

    No ``patterns``: every module of ``types``. Else the modules whose name matches one of
    the ``fnmatch`` globs (case-sensitive), looked for among the modules of ``types``
    (``among="typed"``) or among all modules (``among="all"``). A glob that matches
    nothing (except those in ``ignore``) is a ConfigError naming ``option``. The model
    itself (name ``""``) is a candidate only with ``include_root``.
    """
    modules = [(n, m) for n, m in model.named_modules() if n or include_root]
    typed = [(n, m) for n, m in modules if isinstance(m, types)]
    if not patterns:
        return typed
    pool = typed if among == "typed" else modules
    unmatched = [g for g in patterns if g not in ignore and not any(fnmatch.fnmatchcase(n, g) for n, _ in pool)]
    if unmatched:
        what = "/".join(t.__name__ for t in types) + " layer" if among == "typed" else "module"
        verb = "matches" if len(unmatched) == 1 else "match"
        examples = ", ".join(n for n, _ in pool[:12]) or "none"
        raise ConfigError(f"{option}: {', '.join(map(repr, unmatched))} {verb} no {what}: use names from "
                          f"model.named_modules(), e.g. {examples}")
    return [(n, m) for n, m in pool if any(fnmatch.fnmatchcase(n, g) for g in patterns)]


def check_captured(captured: dict, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in captured]
    if missing:
        raise ProbeError(
            f"layers {', '.join(missing)} produced no output in the forward pass "
            f"(not on the model's forward path): choose other layers"
        )
