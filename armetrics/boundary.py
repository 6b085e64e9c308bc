"""Input-space distance to a classifier's decision boundary (minimal adversarial perturbation).

For an input ``x`` in ``[0, 1]^D`` with label ``y`` that the model ``f`` classifies
correctly, the distance to the decision boundary in the norm ``p`` (L2 or Linf) is

    d_p(x) = min { ||delta||_p : argmax_j f(x + delta)_j != y,  x + delta in [0, 1]^D }

in the units of the input (pixel values scaled to [0, 1]). A misclassified input has
``d_p = 0``. An attack only ever finds an *upper bound* of ``d_p`` (a point it proves
adversarial); a sample for which no adversarial point was found within ``max_radius``
is reported as failed (distance ``inf``).

Two attacks:

- ``fab_distance``: FAB (Croce & Hein 2020), ``pyautoattack.fab_pt.FABAttack_PT`` as
  shipped with AutoAttack. FAB iterates projections onto the linearised decision
  boundary of every class (so it is exact for a linear model after one step) and keeps
  the smallest adversarial perturbation seen, which we then move back onto the
  boundary by bisection along the segment from ``x`` (:func:`refine_segment`). Its ``perturb`` method answers a
  fixed-eps question (robust or not) and never improves a distance once an adversarial
  point is found, so we call ``attack_single_run`` per restart instead and keep the
  per-sample minimum. Cost per iteration: one forward and K backward passes.
- ``bisection_distance``: bisection over the radius with PGD
  (:func:`armetrics.attacks.pgd`, margin loss, started at ``x``): the smallest radius
  at which PGD flips the prediction. The search is geometric between
  ``max_radius * 1e-6`` and ``max_radius``, so after ``search_steps`` steps the
  distance is known within a relative ``(1e6) ** (2 ** -search_steps) - 1`` (0.08 %
  for 14 steps) of the radius at which PGD succeeds. Cost: ``(search_steps + 1) *
  steps`` forward-backward passes, times at most ``1 + targets`` (one untargeted run and
  one per target class; a radius's later runs skip the samples an earlier run flipped,
  and within a run a sample stops at its first misclassified iterate: work shrinks as
  the attack succeeds).

FAB does not stop a sample early: it improves its best point until its last iteration.
See docs/probes/margin.md, "Early exit and equal results".

Both return ``BoundaryDistance(distance, found)`` with one float64 distance per sample.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Literal

import torch
from torch import nn

from .attacks import pgd
from .errors import ConfigError, ProbeError
from .functional import NORMS, Norm, logits as model_logits, per_sample_norm

Attack = Literal["fab", "pgd"]
#: the geometric bisection starts at ``max_radius * MIN_RADIUS_RATIO`` (assumed not to flip)
MIN_RADIUS_RATIO = 1e-6


@dataclass
class BoundaryDistance:
    """Per-sample result: ``distance`` (float64, (B,); 0 for misclassified inputs, inf
    where nothing was found) and ``found`` (bool, (B,); False only for failures)."""

    distance: torch.Tensor
    found: torch.Tensor

    @property
    def failed(self) -> int:
        return int((~self.found).sum())


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """``||delta_i||_norm`` per sample (float64), over all non-batch dimensions."""
    if norm in NORMS:
        return per_sample_norm(delta.detach().double(), norm)
    raise ConfigError(f"unknown norm {norm!r}: use one of {', '.join(NORMS)}")


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_logits(model, x)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters set to ``requires_grad=False`` for the block, then restored: FAB calls
    ``.backward()``, which would otherwise also compute (and leave in ``.grad``) the
    gradients of every parameter that requires one."""
    params = [p for p in model.parameters() if p.requires_grad] if isinstance(model, nn.Module) else []
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _check(norm: str, max_radius: float) -> None:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}: use one of {', '.join(NORMS)}")
    if not (max_radius > 0 and math.isfinite(max_radius)):
        raise ConfigError(f"max radius must be a positive number, got {max_radius}")


def _start(model, x, y, logits) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctly-classified mask and the initial distances (0 wrong, inf correct)."""
    if logits is None:
        logits = _predict(model, x)
    correct = (logits.argmax(dim=1) == y) & torch.isfinite(logits).all(dim=1)
    dist = torch.where(correct.cpu(), math.inf, 0.0).double()
    return correct, dist


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
        with torch.random.fork_rng(devices=devices), _frozen(model):
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


def linearized_targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, count: int) -> torch.Tensor:
    """The ``count`` classes j != y whose boundary is nearest to x to first order
    (DeepFool's / FAB's criterion): smallest ``(z_y - z_j) / ||grad_x (z_j - z_y)||_dual``
    with the dual norm of ``norm`` (L2 -> L2, Linf -> L1). Exact for a linear model.
    Costs one forward and K + 1 backward passes. Returns (B, count) class indices."""
    rows = torch.arange(x.shape[0], device=x.device)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model_logits(model, xg)
        k = out.shape[1]
        grad_y = torch.autograd.grad(out[rows, y].sum(), xg, retain_graph=True)[0].flatten(1)
        dual = torch.empty(out.shape, dtype=torch.float64, device=x.device)
        for j in range(k):  # one class at a time: memory O(B * D), not O(B * K * D)
            diff = torch.autograd.grad(out[:, j].sum(), xg, retain_graph=j < k - 1)[0].flatten(1) - grad_y
            dual[:, j] = (diff.norm(dim=1) if norm == "L2" else diff.abs().sum(dim=1)).double()
    out = out.detach().double()
    gap = out[rows, y][:, None] - out  # (B, K)
    dist = gap / dual.clamp_min(1e-12)
    dist[rows, y] = math.inf
    return dist.argsort(dim=1)[:, : min(count, k - 1)]


def refine_segment(model: nn.Module, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The point nearest to ``x`` on the segment ``x -> adv`` (``adv`` misclassified)
    that is still misclassified, to a relative ``2 ** -steps`` of the segment (bisection
    on t in ``x + t (adv - x)``, forward passes only). Stays in the box when both ends do."""
    lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    delta = adv - x
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(steps):
        mid = (lo + hi) / 2
        wrong = _predict(model, x + mid.view(shape) * delta).argmax(dim=1) != y
        hi = torch.where(wrong, mid, hi)
        lo = torch.where(wrong, lo, mid)
    return x + hi.view(shape) * delta


def _untargeted(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Margin loss ``max_{j != y} z_j - z_y`` summed over the batch."""
    z_y = out.gather(1, target[:, None]).squeeze(1)
    other = out.scatter(1, target[:, None], -math.inf)
    return (other.amax(dim=1) - z_y).sum()


def _targeted(out: torch.Tensor, yt: torch.Tensor) -> torch.Tensor:
    """Targeted loss ``z_t - z_y`` summed over the batch; ``yt`` (B, 2) holds ``[y, t]``
    per sample (label and target class travel together through PGD's early exit)."""
    return (out.gather(1, yt[:, 1:2]) - out.gather(1, yt[:, 0:1])).sum()


def _flipped(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PGD's early exit: the prediction is no longer the label (``y`` (B,) or ``[y, t]``)."""
    return out.argmax(dim=1) != (y if y.ndim == 1 else y[:, 0])


def _flips(model, x, y, eps, norm, steps, target_classes) -> torch.Tensor:
    """Does PGD within radius ``eps`` (per sample) change the prediction? (bool, (B,))
    One untargeted run (margin loss) plus one targeted run per column of ``target_classes``.

    Early exit, twice: each run attacks only the samples no earlier run flipped, and
    within a run a sample stops at its first iterate that is misclassified (it is inside
    the ball, so the radius is proven to flip); the rest go on. A sample's path until it
    stops is the one of the full run, so a flip the full run ends with is found as well;
    a flip at an earlier iterate that a later step undoes now counts too (revision 2 of
    ``margin``: distances can only get smaller, each one still an adversarial point)."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])
    flipped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    columns = [None] + list(range(target_classes.shape[1] if target_classes is not None else 0))
    for col in columns:
        todo = (~flipped).nonzero().flatten()
        if todo.numel() == 0:
            break
        yt = y[todo] if col is None else torch.stack([y[todo], target_classes[todo, col]], 1)
        adv = pgd(model, x[todo], yt, eps[todo], norm=norm, steps=steps, random_init=False,
                  loss_fn=_untargeted if col is None else _targeted, clamp=(0.0, 1.0), stop=_flipped)
        flipped[todo] = _predict(model, adv).argmax(dim=1) != y[todo]
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


def boundary_distance(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: Norm,
    *,
    attack: Attack = "fab",
    max_radius: float,
    steps: int | None = None,
    search_steps: int = 14,
    targets: int = 1,
    restarts: int = 1,
    seed: int = 0,
    refine_steps: int = 20,
    logits: torch.Tensor | None = None,
) -> BoundaryDistance:
    """Dispatch to :func:`fab_distance` (``attack="fab"``) or :func:`bisection_distance`
    (``attack="pgd"``). ``steps`` defaults to 100 FAB iterations / 20 PGD steps."""
    if attack == "fab":
        return fab_distance(model, x, y, norm, max_radius=max_radius, steps=steps or 100,
                            restarts=restarts, seed=seed, refine_steps=refine_steps, logits=logits)
    if attack == "pgd":
        return bisection_distance(model, x, y, norm, max_radius=max_radius, steps=steps or 20,
                                  search_steps=search_steps, targets=targets, logits=logits)
    raise ConfigError(f"unknown boundary attack {attack!r}: use fab or pgd")
