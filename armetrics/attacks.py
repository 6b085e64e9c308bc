"""Projected gradient ascent (PGD, Madry et al. 2018) in L2 or Linf, written once.

Used by adversarial training in the examples, ``robust_accuracy``, the ``margin``
probe's input-space fallback and ``smoothness``'s worst-direction search.

Conventions: a batch ``x`` has shape ``(B, ...)``; norms are per sample over all
non-batch coordinates; ``eps`` is a scalar or one radius per sample, shape ``(B,)``.
Randomness comes from ``generator``: one ``torch.Generator`` for the whole batch, or
a sequence of ``B`` generators, one per sample (then each sample's draws depend only
on its own generator, so results do not depend on how samples are batched).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .functional import Norm, flat_norm

Generators = Union[torch.Generator, Sequence[torch.Generator], None]
#: ``stop(logits, y) -> bool (B,)``: which samples of the working set are done (early exit)
Stop = Callable[[torch.Tensor, Union[torch.Tensor, None]], torch.Tensor]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of ``t`` (B, ...), shaped (B, 1, ..., 1) to broadcast."""
    return flat_norm(t).view(-1, *([1] * (t.ndim - 1)))


def _per_sample(eps: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``eps`` as a (B, 1, ..., 1) tensor (a scalar is repeated for every sample)."""
    eps_t = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if eps_t.ndim == 0:
        eps_t = eps_t.expand(like.shape[0])
    return eps_t.reshape(-1, *([1] * (like.ndim - 1)))


def _draw(kind: str, shape: tuple[int, ...], generator: Generators, like: torch.Tensor) -> torch.Tensor:
    """``torch.rand`` / ``torch.randn`` of ``shape`` (leading dim = batch) from one
    generator, or stacked per-sample draws of ``shape[1:]`` from one generator each."""
    fn = torch.rand if kind == "rand" else torch.randn
    if generator is None or isinstance(generator, torch.Generator):
        return _on(fn, shape, generator, like)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}: pass one per sample")
    if shape[0] == 0:
        return torch.empty(shape, device=like.device, dtype=like.dtype)
    return torch.stack([_on(fn, shape[1:], g, like) for g in generator])


def _on(fn, shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``fn(shape)`` drawn from ``generator`` on the generator's own device (a CPU
    generator may serve CUDA tensors: drawn on the CPU, then moved), as ``like``'s
    device and dtype. The draws are those of the generator's device."""
    where = like.device if generator is None else generator.device
    out = fn(shape, generator=generator, device=where, dtype=like.dtype)
    return out if out.device == like.device else out.to(like.device)


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project each sample's perturbation onto the ``norm`` ball of radius ``eps``
    (Linf: clip every coordinate to [-eps, eps]; L2: rescale when ||delta||_2 > eps)."""
    eps_t = _per_sample(eps, delta)
    if norm == "Linf":
        return torch.maximum(torch.minimum(delta, eps_t), -eps_t)
    if norm != "L2":
        raise ValueError(f"unknown norm {norm!r}: use Linf or L2")
    n = _flat_norm(delta)
    return delta * torch.clamp(eps_t / n.clamp_min(1e-12), max=1.0)


def random_start(x: torch.Tensor, eps: float | torch.Tensor, norm: Norm, generator: Generators = None) -> torch.Tensor:
    """A uniformly random point of the ball (Linf: uniform cube; L2: uniform in the ball).

    With a sequence of generators, sample i's point is drawn from ``generator[i]``
    alone (L2: first the direction, then the radius)."""
    eps_t = _per_sample(eps, x)
    if norm == "Linf":
        u = _draw("rand", tuple(x.shape), generator, x)
        return (2 * u - 1) * eps_t
    if norm != "L2":
        raise ValueError(f"unknown norm {norm!r}: use Linf or L2")
    d = x[0].numel()
    if generator is None or isinstance(generator, torch.Generator):
        g = _draw("randn", tuple(x.shape), generator, x)
        r = _draw("rand", (x.shape[0],) + (1,) * (x.ndim - 1), generator, x)
    else:  # per sample: direction, then radius, from the sample's own generator
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}: pass one per sample")
        g = torch.empty_like(x)
        r = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
        for i, gen in enumerate(generator):
            g[i] = _on(torch.randn, tuple(x.shape[1:]), gen, x)
            r[i] = _on(torch.rand, (), gen, x)
    g = g / _flat_norm(g).clamp_min(1e-12)
    return g * r ** (1.0 / d) * eps_t


def pgd(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps: float | torch.Tensor,
    *,
    norm: Norm = "Linf",
    steps: int = 10,
    step_size: float | torch.Tensor | None = None,
    random_init: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    generator: Generators = None,
    init: torch.Tensor | None = None,
    stop: Stop | None = None,
) -> torch.Tensor:
    """Return ``x + delta`` with ``||delta||_norm <= eps`` that (locally) maximizes
    ``loss_fn(model(x + delta), y)`` summed over the batch (default: cross-entropy).

    Algorithm: start at ``delta = init`` if given, else a uniformly random point of
    the ball (``random_init``, drawn from ``generator``) or 0; then ``steps`` times:
    move by ``step_size`` along the gradient sign (Linf) or the L2-normalised gradient
    (L2), project back onto the ball, and clip ``x + delta`` to ``clamp`` (None: no
    clipping). Returns the last iterate (not the best one seen).

    ``eps`` and ``step_size`` may be scalars or one value per sample; ``step_size``
    defaults to ``2.5 * eps / steps``. Gradients are taken with respect to ``delta``
    only: the model's parameters are neither differentiated nor given ``.grad``.
    The loss must be a sum of per-sample terms for the per-sample steps to be
    independent (as the default ``reduction="sum"``).

    Early exit: ``stop(logits, y) -> bool (B,)`` is called on the output of the forward
    each step computes anyway (at the start point and the first ``steps - 1`` iterates); a
    sample where it holds leaves the working set and keeps that iterate, later steps run
    only on the samples still alive (results scattered back in place). ``loss_fn`` then
    gets the alive rows of ``y``: per-sample data it needs must come through ``y``. Until
    it stops, a sample's path is the one without ``stop`` (steps are per sample, starts
    drawn first), so per-sample generators keep results independent of batching. The last
    iterate is returned unchecked: classify the output to know what stopped.
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"unknown norm {norm!r}: use Linf or L2")
    if loss_fn is None:
        loss_fn = lambda out, target: F.cross_entropy(out, target, reduction="sum")  # noqa: E731
    x = x.detach()
    eps_t = _per_sample(eps, x)
    alpha = 2.5 * eps_t / max(steps, 1) if step_size is None else _per_sample(step_size, x)
    if init is not None:
        delta = project(init.detach().to(dtype=x.dtype, device=x.device), eps_t, norm)
    elif random_init:
        delta = random_start(x, eps_t.flatten(), norm, generator)
    else:
        delta = torch.zeros_like(x)
    if clamp is not None:
        delta = (x + delta).clamp(*clamp) - x
    if stop is not None:
        return _pgd_until(stop, model, loss_fn, x, y, delta, eps_t, alpha, norm, clamp, steps)
    for _ in range(steps):
        delta, _out = _ascent_step(model, loss_fn, x, y, delta, eps_t, alpha, norm, clamp)
    return (x + delta).detach()


def _ascent_step(model, loss_fn, x, y, delta, eps_t, alpha, norm, clamp) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD step from ``delta``: (the next delta, the model's output at ``x + delta``)."""
    delta = delta.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x + delta)
        (grad,) = torch.autograd.grad(loss_fn(out, y), delta)
    with torch.no_grad():
        if norm == "Linf":
            step = grad.sign()
        else:
            step = grad / _flat_norm(grad).clamp_min(1e-12)
        new = project(delta + alpha * step, eps_t, norm)
        if clamp is not None:
            new = (x + new).clamp(*clamp) - x
    return new.detach(), (out.detach() if isinstance(out, torch.Tensor) else out)


def _pgd_until(stop: Stop, model, loss_fn, x, y, delta, eps_t, alpha, norm, clamp, steps) -> torch.Tensor:
    """PGD's steps with early exit: a sample leaves the working set at the first
    iterate where ``stop`` holds and keeps it; the rest go on (see :func:`pgd`)."""
    x_all, result = x, delta.detach().clone()
    alive = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        new, out = _ascent_step(model, loss_fn, x, y, delta, eps_t, alpha, norm, clamp)
        done = stop(out, y).to(device=x.device, dtype=torch.bool)
        if bool(done.any()):
            result[alive[done]] = delta[done]
            keep = (~done).nonzero().flatten()
            alive, x, new, eps_t, alpha = alive[keep], x[keep], new[keep], eps_t[keep], alpha[keep]
            y = None if y is None else y[keep]
            if alive.numel() == 0:
                return (x_all + result).detach()
        delta = new
    result[alive] = delta
    return (x_all + result).detach()
