"""Forward-mode Jacobian-vector products without wasted work.

torch's forward-mode AD (``torch.autograd.forward_ad``) differentiates ``conv2d`` and
``linear`` with respect to every argument: with plain (non-dual) weights it still runs
a convolution of the input with a zero weight tangent, so a dual forward pass costs
about three convolutions per layer instead of two. :class:`CheapTangents` is a torch
function mode that routes ``conv2d``, ``linear`` and eval-mode ``batch_norm`` calls whose
weights carry no tangent through autograd functions with the exact, minimal tangent
rule (``conv2d(x_t, W)``, ``x_t W^T``, ``x_t * gamma / sqrt(var + eps)``); every other op
keeps torch's own forward-mode rule. Values are those of torch's rules to float
rounding; a dual pass then costs about 1.9 forward passes (WRN-16-4, 16 images, CPU).

:func:`jvp` is ``J v`` of ``f`` at ``x`` (``f``'s output per sample, flattened) from one
such pass.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .functional import first_output


@functools.lru_cache(maxsize=None)
def _load_forward_ad_rules() -> None:
    """Import torch's forward-AD decompositions once, silencing the ``torch.jit.script``
    FutureWarning that torch itself emits when it first builds them (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        try:
            import torch._decomp.decompositions_for_jvp  # noqa: F401
        except ImportError:  # a torch without that private module: nothing to preload
            pass

_CONV_ARGS = (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, w, b, args, cached):
        return cached.clone() if cached is not None else F.conv2d(x, w, b, *args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.w, ctx.args = inputs[1], inputs[3]

    @staticmethod
    def jvp(ctx, x_t, _w_t, _b_t, _args, _cached):
        return F.conv2d(x_t, ctx.w, None, *ctx.args)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(x, w, b, cached):
        return cached.clone() if cached is not None else F.linear(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.w = inputs[1]

    @staticmethod
    def jvp(ctx, x_t, _w_t, _b_t, _cached):
        return F.linear(x_t, ctx.w)


class _BatchNormEval(torch.autograd.Function):
    @staticmethod
    def forward(x, mean, var, w, b, eps, cached):
        return cached.clone() if cached is not None else F.batch_norm(x, mean, var, w, b, False, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _mean, var, w, _b, eps, _cached = inputs
        scale = torch.rsqrt(var + eps)
        ctx.scale = (scale if w is None else w * scale).view(1, -1, *([1] * (x.ndim - 2)))

    @staticmethod
    def jvp(ctx, x_t, *_):
        return x_t * ctx.scale


def _has_tangent(t) -> bool:
    return isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None


def _conv(args, kwargs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    rest = list(args[3:]) + [kwargs.get(k, d) for k, d in _CONV_ARGS[len(args[3:]):]]
    if _has_tangent(x) and not _has_tangent(w) and not _has_tangent(b) and not isinstance(rest[1], str):
        return lambda cached: _Conv2d.apply(x, w, b, tuple(rest), cached)
    return None


def _linear(args, kwargs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    if _has_tangent(x) and not _has_tangent(w) and not _has_tangent(b):
        return lambda cached: _Linear.apply(x, w, b, cached)
    return None


def _batch_norm(args, kwargs):
    a = {**dict(zip(_BN_ARGS, args)), **kwargs}
    if a.get("training") or a.get("running_mean") is None or a.get("running_var") is None:
        return None
    if not _has_tangent(a["input"]) or any(_has_tangent(a.get(k)) for k in ("running_mean", "running_var", "weight", "bias")):
        return None
    return lambda cached: _BatchNormEval.apply(a["input"], a["running_mean"], a["running_var"], a.get("weight"),
                                               a.get("bias"), a.get("eps", 1e-5), cached)


_RULES = {F.conv2d: _conv, F.linear: _linear, F.batch_norm: _batch_norm}


class PrimalCache:
    """The primal outputs of the conv2d / linear / batch_norm calls of forward-mode passes
    at ONE input ``x``, in call order. Passes at the same ``x`` (different tangents, e.g.
    the products of a power iteration, or networks truncated at different depths) then
    skip those primal computations: the n-th such call returns the n-th stored output.
    Only valid while the input, the weights and the call order stay the same; a call
    whose input shape differs from the recorded one raises. Memory: those outputs (about
    the activations of one forward pass of the batch)."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.shapes: list[tuple] = []
        self.position = 0

    def call(self, make, x: torch.Tensor) -> torch.Tensor:
        i, self.position = self.position, self.position + 1
        if i < len(self.outputs):
            if tuple(x.shape) != self.shapes[i]:
                raise RuntimeError("PrimalCache: the forward pass changed between passes at one input")
            return make(self.outputs[i])
        out = make(None)
        self.outputs.append(fwAD.unpack_dual(out).primal.detach())
        self.shapes.append(tuple(x.shape))
        return out


class CheapTangents(TorchFunctionMode):
    """Torch function mode: minimal tangent rules for conv2d / linear / eval batch_norm
    with tangent-free weights (see the module docstring); everything else unchanged.
    With a :class:`PrimalCache` their primal outputs are replayed from it."""

    def __init__(self, cache: PrimalCache | None = None):
        super().__init__()
        self.cache = cache
        if cache is not None:
            cache.position = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        if rule is not None:
            make = rule(args, kwargs)
            if make is not None:
                return make(None) if self.cache is None else self.cache.call(make, args[0])
        return func(*args, **kwargs)


def jvp(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, v: torch.Tensor,
        cache: PrimalCache | None = None) -> torch.Tensor:
    """``J v`` per sample, flattened ``(B, m)``: the tangent of ``f``'s output at ``x`` in
    direction ``v`` (shape of ``x``) from one forward-mode pass (no graph is kept).
    ``f`` may return a tuple (its first element is used). ``cache``: a
    :class:`PrimalCache` shared by passes at this same ``x``."""
    _load_forward_ad_rules()
    with torch.no_grad(), fwAD.dual_level(), CheapTangents(cache):
        out = first_output(f(fwAD.make_dual(x, v.view_as(x))))
        tangent = fwAD.unpack_dual(out).tangent
    if tangent is None:  # the output does not depend on x
        return torch.zeros(out.shape[0], out[0].numel(), dtype=out.dtype, device=out.device)
    return tangent.flatten(1)
