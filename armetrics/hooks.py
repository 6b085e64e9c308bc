"""Capture layer outputs with forward hooks, always removed in ``try/finally``."""

from __future__ import annotations

import fnmatch
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
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


@dataclass
class Taps:
    """Outputs of tapped modules from the last forward pass, and how often each ran.

    ``active``: the names recorded now (None: every tapped name; an empty set: none,
    e.g. while probes make passes of their own during the engine's shared pass).
    """

    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    refs: dict[str, "weakref.ref[torch.Tensor]"] = field(default_factory=dict)
    reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None
    active: "set[str] | frozenset[str] | None" = None

    def is_same(self, name: str, tensor: torch.Tensor) -> bool:
        """Whether module ``name``'s (last) output tensor *is* ``tensor`` (e.g. a last
        Linear layer whose output the model returns as its logits)."""
        ref = self.refs.get(name)
        return ref is not None and ref() is tensor

    def clear(self) -> None:
        self.outputs.clear()
        self.calls.clear()
        self.refs.clear()


@contextmanager
def tap_outputs(model: nn.Module, names: Sequence[str],
                reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> Iterator[Taps]:
    """Within the block each forward pass stores, per module name, ``out.clone()`` (or
    ``reduce(name, out)`` when given, e.g. a per-sample norm, so no feature map is
    kept) in ``taps.outputs`` — the module's own output, taken before any in-place op
    downstream (``ReLU(inplace=True)``) modifies it, and differentiable when the pass
    builds a graph; a module called several times keeps its last call. The empty name
    ``""`` means the model itself. Hooks are removed on exit, whatever happens."""
    taps = Taps(reduce=reduce)

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if taps.active is not None and name not in taps.active:
                return
            out = first_output(output)
            taps.calls[name] = taps.calls.get(name, 0) + 1
            taps.refs[name] = weakref.ref(out)
            taps.outputs[name] = reduce(name, out) if reduce is not None else out.clone()

        return hook

    with forward_hooks(model, names, make_hook):
        yield taps


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
