"""The "before" of the ``early_exit`` benchmark (issue 20, part 4): verbatim copies of
the attacks as they were at commit d7006ae, before samples left the working set once broken
or finished, so ``benchmarks/run.py --only early_exit`` measures before and after side by side.

- ``pgd``: ``armetrics.attacks.pgd`` (every sample runs all ``steps``; the last iterate);
- ``RobustAccuracy._pgd`` as ``robust_pgd(self, ...)`` and :class:`BaselineRobustAccuracy`, the
  probe with that method (registered nowhere: pass the instance to ``am.analyze``);
- ``_flips`` / ``bisection_distance``: ``armetrics.boundary``'s PGD bisection (every loss runs on
  every sample); ``fab_distance`` (unchanged by issue 20, copied for completeness) and
  :class:`BaselineMargin`, the margin probe whose input-space distance calls these copies.

Helpers the copies use and that did not change (``project``, ``random_start``, ``_per_sample``,
``_flat_norm``, ``linearized_targets``, ``refine_segment``, ...) are imported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from armetrics.attacks import _flat_norm, _per_sample, project, random_start
from armetrics.boundary import (MIN_RADIUS_RATIO, BoundaryDistance, _check, _predict, _start, linearized_targets,
                                perturbation_norm, refine_segment)
from armetrics.errors import ConfigError, ProbeError
from armetrics.functional import Norm
from armetrics.functional import top1_correct
from armetrics.probe import Batch
from armetrics.probes.margin import Margin
from armetrics.probes.robust_accuracy import RobustAccuracy

from typing import Callable  # noqa: E402

Generators = object
Attack = str

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
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "Linf":
                step = grad.sign()
            else:
                step = grad / _flat_norm(grad).clamp_min(1e-12)
            delta = project(delta + alpha * step, eps_t, norm)
            if clamp is not None:
                delta = (x + delta).clamp(*clamp) - x
        delta = delta.detach()
    return (x + delta).detach()


def robust_pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: Batch, pos: list[int]) -> torch.Tensor:
    robust = torch.ones_like(y, dtype=torch.bool)
    for r in range(self.restarts):
        idx = robust.nonzero().flatten()
        if idx.numel() == 0:
            break
        gens = batch.sample_rngs(f"robust_accuracy/pgd/{r}", [pos[i] for i in idx.tolist()])
        xa = pgd(model, x[idx], y[idx], self.radius, norm=self.norm, steps=self.steps,
                 random_init=True, clamp=(0.0, 1.0), generator=gens)
        with torch.no_grad():
            robust[idx] = top1_correct(model(xa), y[idx])
    return robust


def _flips(model, x, y, eps, norm, steps, target_classes) -> torch.Tensor:
    """Does PGD within radius ``eps`` (per sample) change the prediction? (bool, (B,))
    One untargeted run (margin loss) plus one targeted run per column of ``target_classes``."""

    def untargeted(out, target):
        z_y = out.gather(1, target[:, None]).squeeze(1)
        other = out.scatter(1, target[:, None], -math.inf)
        return (other.amax(dim=1) - z_y).sum()

    losses = [untargeted]
    for col in range(target_classes.shape[1] if target_classes is not None else 0):
        t = target_classes[:, col]

        def targeted(out, target, t=t):
            return (out.gather(1, t[:, None]) - out.gather(1, target[:, None])).sum()

        losses.append(targeted)
    flipped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for loss in losses:
        adv = pgd(model, x, y, eps, norm=norm, steps=steps, random_init=False, loss_fn=loss, clamp=(0.0, 1.0))
        flipped |= _predict(model, adv).argmax(dim=1) != y
    return flipped.cpu()


def bisection_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm,
    *,
    max_radius: float,
    steps: int = 20,
    search_steps: int = 14,
    targets: int = 1,
    logits: torch.Tensor | None = None,
) -> BoundaryDistance:
    """Distance to the decision boundary per sample: the smallest radius (geometric
    bisection on ``[max_radius * 1e-6, max_radius]``) at which PGD with ``steps``
    steps flips the prediction.

    Per radius, PGD runs once untargeted (margin loss ``max_{j != y} z_j - z_y``) and
    once targeted (loss ``z_t - z_y``) at each of the ``targets`` classes nearest to
    first order (:func:`linearized_targets`); a flip by any run counts. The untargeted
    margin loss alone follows the runner-up class and can stop at a local maximum when
    another class's boundary is nearer (measured: +3.5 % on a 4-class linear model);
    the targeted run fixes that. Deterministic (PGD starts at ``x``).
    """
    _check(norm, max_radius)
    correct, dist = _start(model, x, y, logits)
    idx = correct.nonzero().flatten()
    if idx.numel():
        xc, yc = x[idx].detach(), y[idx]
        n = idx.numel()
        hi = torch.full((n,), float(max_radius), dtype=torch.float64)
        tc = linearized_targets(model, xc, yc, norm, targets) if targets > 0 else None
        ok = _flips(model, xc, yc, hi.to(x.device, x.dtype), norm, steps, tc)
        best = torch.where(ok, hi, math.inf)
        sel = ok.nonzero().flatten()
        if sel.numel():
            xs, ys = xc[sel.to(x.device)], yc[sel.to(x.device)]
            ts = tc[sel.to(x.device)] if tc is not None else None
            lo = torch.full((sel.numel(),), max_radius * MIN_RADIUS_RATIO, dtype=torch.float64)
            hi = hi[sel]
            for _ in range(search_steps):
                mid = (lo * hi).sqrt()
                f = _flips(model, xs, ys, mid.to(x.device, x.dtype), norm, steps, ts)
                hi = torch.where(f, mid, hi)
                lo = torch.where(f, lo, mid)
            best[sel] = hi
        dist[idx.cpu()] = best
    return BoundaryDistance(dist, torch.isfinite(dist))


def fab_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm,
    *,
    max_radius: float,
    steps: int = 100,
    restarts: int = 1,
    seed: int = 0,
    refine_steps: int = 20,
    logits: torch.Tensor | None = None,
) -> BoundaryDistance:
    """Distance to the decision boundary per sample by FAB (untargeted, minimal norm).

    FAB's best point overshoots the boundary (its ``eta = 1.05`` extrapolation): on a
    linear model by 0.52 %. ``refine_steps`` bisection steps on the segment from ``x`` to
    that point (forward passes only) move it back to the boundary along the same
    direction (0 to keep FAB's point).

    ``steps``: FAB iterations per restart; ``restarts``: the first starts at ``x``,
    later ones at a random point (FAB's own random start, half the largest distance
    found so far) seeded by ``seed`` — the global torch RNG is restored afterwards.
    ``logits``: the model's output on ``x`` if already known (saves a forward pass).
    """
    _check(norm, max_radius)
    try:
        from pyautoattack.fab_pt import FABAttack_PT
    except ImportError:  # pragma: no cover - dependency of the package
        raise ProbeError("FAB needs the pyautoattack package: pip install pyautoattack, or use attack=pgd") from None
    correct, dist = _start(model, x, y, logits)
    idx = correct.nonzero().flatten()
    if idx.numel():
        xc, yc = x[idx].detach(), y[idx]
        best = torch.full((idx.numel(),), math.inf, dtype=torch.float64)
        fab = FABAttack_PT(model, norm=norm, n_restarts=1, n_iter=steps, eps=max_radius, seed=seed, device=x.device)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for r in range(max(restarts, 1)):
                if r > 0:
                    finite = best[torch.isfinite(best)]
                    fab.eps = float(finite.max()) if finite.numel() else max_radius
                adv = fab.attack_single_run(xc, yc, use_rand_start=r > 0, is_targeted=False).to(x.dtype)
                flipped = (_predict(model, adv).argmax(dim=1) != yc).cpu()
                if refine_steps and flipped.any():
                    f = flipped.nonzero().flatten().to(x.device)
                    adv[f] = refine_segment(model, xc[f], adv[f], yc[f], refine_steps)
                d = perturbation_norm(adv - xc, norm).cpu()
                ok = flipped & (d <= max_radius) & (d < best)
                best = torch.where(ok, d, best)
        # a sample whose prediction changes between batch compositions is on the boundary
        wrong_now = (_predict(model, xc).argmax(dim=1) != yc).cpu()
        best = torch.where(wrong_now, 0.0, best)
        dist[idx.cpu()] = best
    return BoundaryDistance(dist, torch.isfinite(dist))


class BaselineRobustAccuracy(RobustAccuracy):
    """``robust_accuracy`` with its PGD as before issue 20 (no early exit)."""

    def _pgd(self, model, x, y, batch, pos):
        return robust_pgd(self, model, x, y, batch, pos)


def baseline_boundary_distance(model, x, y, norm, *, attack="fab", max_radius, steps=None, search_steps=14,
                               targets=1, restarts=1, seed=0, refine_steps=20, logits=None):
    """``armetrics.boundary.boundary_distance`` dispatching to the copies above."""
    if attack == "fab":
        return fab_distance(model, x, y, norm, max_radius=max_radius, steps=steps or 100,
                            restarts=restarts, seed=seed, refine_steps=refine_steps, logits=logits)
    return bisection_distance(model, x, y, norm, max_radius=max_radius, steps=steps or 20,
                              search_steps=search_steps, targets=targets, logits=logits)


class BaselineMargin(Margin):
    """``margin`` whose input-space distance runs the copies above."""

    def _update_input(self, batch: Batch) -> None:
        import armetrics.probes.margin as mod

        saved = mod.boundary_distance
        mod.boundary_distance = baseline_boundary_distance
        try:
            super()._update_input(batch)
        finally:
            mod.boundary_distance = saved
