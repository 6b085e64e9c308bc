"""Capture layer outputs with forward hooks, always removed in ``try/finally``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

from .errors import ConfigError, ProbeError


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
                captured[key] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    with forward_hooks(model, names, make_hook):
        yield captured


def check_captured(captured: dict, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in captured]
    if missing:
        raise ProbeError(
            f"layers {', '.join(missing)} produced no output in the forward pass "
            f"(not on the model's forward path): choose other layers"
        )
