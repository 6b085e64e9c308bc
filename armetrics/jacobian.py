"""Layer Jacobians of a network at an input, without ever forming them.

For a layer output ``h(x)`` (any module's output, flattened per sample) the Jacobian
``J = dh/dx`` at ``x`` is applied to vectors in both directions:

- ``J^T w`` (vector-Jacobian product): one backward pass from ``h`` to ``x``;
- ``J v`` (Jacobian-vector product): the "double-backward trick" — ``g(u) = J^T u``
  is linear in ``u``, so ``J v = d<g(u), v>/du``, one backward pass through the graph
  of ``g``. It reuses the forward graph of ``h`` that the VJP already needs, so one
  forward pass serves every layer and every iteration.

Samples are independent (a model in eval mode), so with a batch ``x`` of shape
``(B, ...)`` every product is per sample: ``J`` is block diagonal.

:func:`top_singular_value` runs (Krylov-accelerated) power iteration on ``J^T J``
per sample.
:func:`truncated` turns "the network up
to module m" into a function that stops the forward pass right after ``m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import math

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from .errors import ProbeError
from .functional import first_output, flat_norm
from .hooks import resolve_layers, tap_outputs


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / flat_norm(t).clamp_min(1e-30).view(-1, *([1] * (t.ndim - 1)))


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted output exists."""


def truncated(model: nn.Module, name: str, *, stop: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f(x)`` = the output of module ``name`` when ``model`` runs on ``x`` (a clone,
    differentiable). With ``stop`` the forward pass ends right after the module (set
    ``stop=False`` for a module called more than once per forward: then the last
    call's output is returned, after a full pass). ``name == ""`` is the model output."""
    if name == "":
        return model
    module = resolve_layers(model, [name])[name]

    def f(x: torch.Tensor) -> torch.Tensor:
        box: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            out = first_output(output)
            box[:] = [out.clone()]
            if stop:
                raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not box:
            raise ProbeError(f"layer {name!r} produced no output in the forward pass: choose another layer")
        return box[0]

    return f


@dataclass
class PowerResult:
    """Per-sample results of the iteration on ``A = J^T J``.

    sigma: the estimate of the top singular value of ``J`` — the square root of the
        largest Ritz value, i.e. ``||J v||`` for the unit vector ``v`` below: a lower
        bound of sigma_max(J) that converges to it (B,).
    sigma_prev: the same estimate from one product fewer (B,), to judge convergence.
    v: the unit vector attaining ``sigma`` (top right-singular vector estimate), shape of x.
    """

    sigma: torch.Tensor
    sigma_prev: torch.Tensor
    v: torch.Tensor


def _orthogonalize(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from each z (B, d) its components along basis (B, j, d), twice (CGS2)."""
    for _ in range(2):
        coef = torch.einsum("bjd,bd->bj", basis, z)
        z = z - torch.einsum("bj,bjd->bd", coef, basis)
    return z


def top_singular_value(x: torch.Tensor, h: torch.Tensor, v0: torch.Tensor, iters: int, *,
                       jvp: Callable[[torch.Tensor], torch.Tensor] | None = None, tol: float = 0.0) -> PowerResult:
    """Top singular value of ``J = dh/dx`` per sample from at most ``iters`` products
    ``A q = J^T (J q)`` (one JVP and one VJP each), started at ``v0`` (shape of x).

    This is power iteration with its Krylov subspace kept: the vectors
    ``v0, A v0, ..., A^(iters-1) v0`` are orthonormalized (Lanczos with full
    reorthogonalization) and the estimate is the best one in their span
    (Rayleigh-Ritz: the top eigenvalue of ``Q^T A Q``). The plain power iterate lies in
    that span, so for the same products the estimate is never worse than power
    iteration's, and it is exact once ``iters`` reaches the rank of ``J`` (e.g. the
    number of classes for logits). Like any Rayleigh quotient it never exceeds the
    true value. When the subspace is exhausted the remaining vectors are zero.

    ``jvp``: ``q -> J q`` (flattened per sample), e.g. a forward-mode pass
    (:func:`armetrics.tangents.jvp`); without it ``J q`` comes from the double-backward
    trick on ``h``'s graph. ``J^T w`` always comes from ``h``'s graph.
    ``tol``: a sample stops (its later vectors are zero, so its estimate stays that of
    its own subspace) once the residual of its top Ritz pair is below ``tol`` times its
    Ritz value, i.e. an eigenvalue of ``J^T J`` lies within ``tol`` (relative) of the
    estimate of ``sigma^2`` — within ``tol / 2`` of sigma itself, when that eigenvalue is
    the top one; the loop ends when every sample has stopped. Each sample's result depends
    on that sample alone, whatever else is in the batch.

    ``h`` must have been computed from ``x`` (``x.requires_grad``) with the graph kept;
    the graph is reused (``retain_graph``) and no parameter gets a gradient. Call
    under ``torch.enable_grad()``. Memory: two ``(B, iters, d)`` tensors.
    """
    b = x.shape[0]
    if not h.requires_grad:  # h does not depend on x: J = 0
        zero = torch.zeros(b, dtype=x.dtype, device=x.device)
        return PowerResult(zero, zero, _unit(v0))
    basis, gram, top, prev = _lanczos(_gram_operator(x, h, jvp), v0.detach().flatten(1), max(int(iters), 1), tol)
    bad = ~torch.isfinite(gram).all(dim=2).all(dim=1)  # non-finite weights or inputs: NaN, not a crash
    gram = torch.where(bad[:, None, None], torch.zeros_like(gram), gram)
    evecs = torch.linalg.eigh(gram)[1]
    nan = torch.full_like(top, math.nan)
    top, prev = torch.where(bad, nan, top.clamp_min(0)), torch.where(bad, nan, prev.clamp_min(0))
    v = torch.einsum("bj,bjd->bd", evecs[:, :, -1].to(x.dtype), basis)
    return PowerResult(top.sqrt().to(x.dtype), prev.sqrt().to(x.dtype), _unit(v).view_as(x).detach())


#: most outputs per sample whose Jacobian :func:`top_singular_value_by_rows` forms
DENSE_ROWS_MAX = 128


def top_singular_value_by_rows(x: torch.Tensor, h: torch.Tensor) -> PowerResult:
    """Top singular value of ``J = dh/dx`` per sample, exactly, from ``J`` itself: its
    ``m`` rows (m = outputs per sample, at most :data:`DENSE_ROWS_MAX`) by ``m`` backward
    passes through ``h``'s graph (row k: the gradient of ``sum_b h[b, k]``, per sample since
    samples are independent), then the top eigenpair of the ``m x m`` matrix ``J J^T`` in
    float64. For models whose ``J q`` is out of reach (a custom ``autograd.Function``
    with neither a ``jvp`` rule nor a differentiable backward) and few outputs (logits).
    ``sigma_prev`` equals ``sigma`` (nothing left to converge); ``v = J^T u / sigma``.
    Memory: one ``(B, m, d)`` tensor."""
    b, m = h.shape[0], h[0].numel()
    if m > DENSE_ROWS_MAX:
        raise ProbeError(f"forming the Jacobian needs at most {DENSE_ROWS_MAX} outputs per sample, not {m}")
    hf = h.reshape(b, m)
    if not h.requires_grad:
        zero = torch.zeros(b, dtype=x.dtype, device=x.device)
        return PowerResult(zero, zero, _unit(torch.ones_like(x)))
    rows = []
    for k in range(m):
        (g,) = torch.autograd.grad(hf[:, k].sum(), x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if g is None else g)
    jac = torch.stack(rows, 1).flatten(2).double()  # (B, m, d)
    bad = ~torch.isfinite(jac).flatten(1).all(dim=1)  # non-finite weights or inputs: NaN, not a crash
    jac = torch.where(bad[:, None, None], torch.zeros_like(jac), jac)
    evals, evecs = torch.linalg.eigh(jac @ jac.transpose(1, 2))
    top = torch.where(bad, math.nan, evals[:, -1].clamp_min(0))
    v = torch.einsum("bm,bmd->bd", evecs[:, :, -1], jac)
    sigma = top.sqrt().to(x.dtype)
    return PowerResult(sigma, sigma, _unit(v.to(x.dtype)).view_as(x).detach())


def _lanczos(ata, q: torch.Tensor, k: int, tol: float):
    """At most ``k`` products of Lanczos with full reorthogonalization from the unit-scaled
    start ``q`` (B, d): the basis (B, k, d), ``Q^T A Q`` (B, k, k) in float64, and per
    sample the top Ritz value after its last product and after the one before (see
    :func:`top_singular_value` for ``tol``)."""
    b, d = q.shape
    basis = q.new_zeros(b, k, d)
    images = q.new_zeros(b, k, d)
    gram = torch.zeros(b, k, k, dtype=torch.float64, device=q.device)
    top = prev = torch.zeros(b, dtype=torch.float64, device=q.device)
    alive = torch.ones(b, dtype=torch.bool, device=q.device)
    q = _unit(q)
    for j in range(k):
        basis[:, j] = q
        images[:, j] = ata(q)
        row = torch.einsum("bd,bid->bi", basis[:, j].double(), images[:, : j + 1].double())
        col = torch.einsum("bid,bd->bi", basis[:, : j + 1].double(), images[:, j].double())
        gram[:, j, : j + 1] = gram[:, : j + 1, j] = (row + col) / 2  # Q^T A Q, symmetrized
        ritz, residual = _top_ritz_pair(gram[:, : j + 1, : j + 1], basis[:, : j + 1], images[:, : j + 1])
        prev, top = torch.where(alive, top, prev), torch.where(alive, ritz, top)
        if tol > 0:
            alive = alive & ~(residual <= tol * ritz.abs())  # |ritz - eigenvalue| <= ||A y - ritz y||
        if j == k - 1 or not bool(alive.any()):
            break
        z = _orthogonalize(images[:, j], basis[:, : j + 1])
        beta = z.norm(dim=1, keepdim=True)
        exhausted = alive & (beta <= 1e-5 * images[:, j].norm(dim=1, keepdim=True)).squeeze(1)
        prev = torch.where(exhausted, top, prev)  # the subspace is invariant: the estimate is exact
        alive = alive & ~exhausted
        q = torch.where(alive[:, None], z / beta.clamp_min(1e-30), torch.zeros_like(z))
    if k == 1:
        prev = top
    return basis, gram, top, prev


def _top_ritz_pair(gram: torch.Tensor, basis: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the largest Ritz value ``theta`` of ``A`` on the span of ``basis``
    (``gram = Q^T A Q``, ``images = A Q``) and the norm of its residual
    ``||A y - theta y||`` (``y`` its unit Ritz vector): some eigenvalue of ``A`` lies within
    that distance of ``theta``. NaN where ``gram`` is not finite."""
    finite = torch.isfinite(gram).all(dim=2).all(dim=1)
    evals, evecs = torch.linalg.eigh(torch.where(finite[:, None, None], gram, torch.zeros_like(gram)))
    theta, c = evals[:, -1], evecs[:, :, -1]
    resid = torch.einsum("bj,bjd->bd", c, images.double()) - theta[:, None] * torch.einsum("bj,bjd->bd", c, basis.double())
    nan = torch.full_like(theta, math.nan)
    return torch.where(finite, theta, nan), torch.where(finite, resid.norm(dim=1), nan)


def _gram_operator(x: torch.Tensor, h: torch.Tensor, jvp: Callable[[torch.Tensor], torch.Tensor] | None):
    """``q (B, d) -> J^T J q (B, d)``: ``J q`` from ``jvp`` or the double-backward trick,
    then ``J^T`` by a backward pass through ``h``'s graph."""
    if jvp is None:
        u = torch.zeros_like(h, requires_grad=True)
        (g,) = torch.autograd.grad(h, x, u, create_graph=True)  # g = J^T u, linear in u

        def jvp(q: torch.Tensor) -> torch.Tensor:
            if not g.requires_grad:  # J^T u does not depend on u: J = 0
                return torch.zeros_like(h)
            return torch.autograd.grad(g, u, q.view_as(x), retain_graph=True)[0]  # J q (double backward)

    def ata(q: torch.Tensor) -> torch.Tensor:
        jq = jvp(q.view_as(x)).reshape(h.shape)
        (jtjq,) = torch.autograd.grad(h, x, jq, retain_graph=True)  # J^T (J q)
        return jtjq.flatten(1)

    return ata


def directional_derivative_norms(model: nn.Module, x: torch.Tensor, v: torch.Tensor,
                                 names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample ``||J v||`` for the model output and for every module in ``names``
    (``J`` the Jacobian of that output at ``x``), from ONE forward-mode pass
    (``torch.autograd.forward_ad``); returns ``(norm_out (B,), {name: (B,)})``."""

    def tangent_norm(_name: str, out: torch.Tensor) -> torch.Tensor:
        t = fwAD.unpack_dual(out).tangent
        return torch.zeros(out.shape[0], dtype=out.dtype, device=out.device) if t is None else flat_norm(t)

    from .tangents import _load_forward_ad_rules

    _load_forward_ad_rules()
    with fwAD.dual_level(), tap_outputs(model, names, reduce=tangent_norm) as taps:
        out = model(fwAD.make_dual(x, v))
        out = first_output(out)
        norm_out = tangent_norm("", out)
    return norm_out, dict(taps.outputs)
