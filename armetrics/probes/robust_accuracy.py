"""``robust_accuracy``: accuracy when every input may be perturbed within an eps-ball.

A sample counts as robust when it is classified correctly at ``x`` *and* at the
attack's output ``x'`` with ``||x' - x||_norm <= eps`` and ``x'`` in [0, 1]^d::

    robust_accuracy = #{i : argmax f(x_i) = y_i and argmax f(x'_i) = y_i} / n

Attacks: ``pgd`` (Madry et al. 2018; ``steps`` steps of size 2.5*eps/steps on the
cross-entropy from a uniformly random start, ``restarts`` times — a sample is broken
when any iterate of any restart is misclassified: as AutoAttack / RobustBench keep any
successful point, a sample stops at its first misclassified iterate, a valid adversarial
point in the ball, and leaves the working set, so later steps run only on the samples
still robust; a final point that drifted back to the right class no longer hides an
earlier success), or ``autoattack`` (Croce & Hein
2020, the standard version: APGD-CE, APGD-T, FAB-T, Square, via ``pyautoattack``).
An attack only gives an upper bound of the true robust accuracy; AutoAttack's is the
usual reference. Only samples classified correctly at ``x`` are attacked.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from typing import Annotated, Iterator, Literal

import torch
from torch import nn

from ..attacks import pgd
from ..errors import ConfigError, ProbeError
from ..functional import LogitsModule, derive_seed, per_sample_norm, top1_correct
from ..probe import Batch, Probe, ProbeResult, Range
from ..registry import register_probe

DEFAULT_EPS = {"Linf": 8 / 255, "L2": 0.5}  # RobustBench's CIFAR-10 threat models


def _misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PGD's early exit: a sample whose iterate is misclassified is broken (keep that point)."""
    return ~top1_correct(logits, y)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default) for a proportion k/n; (nan, nan) if n == 0."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@contextlib.contextmanager
def _contained(model: nn.Module, device: torch.device, notes: list[str]) -> Iterator[None]:
    """Run third-party attack code without side effects: the global RNG state, the
    trace function (AutoAttack's ``check_dynamic`` resets ``sys.settrace``) and
    parameters' ``requires_grad`` (FAB calls ``.backward()``) are restored; its
    warnings and log messages are collected into ``notes`` instead of printed."""
    logger = logging.getLogger("auto-attack")
    handler = _ListHandler(notes)
    old_propagate, old_trace = logger.propagate, sys.gettrace()
    params = [p for p in model.parameters() if p.requires_grad]
    devices = [device.index or 0] if device.type == "cuda" else []
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        notes.extend(str(w.message) for w in caught)
    finally:
        for p in params:
            p.requires_grad_(True)
        logger.removeHandler(handler)
        logger.propagate = old_propagate
        sys.settrace(old_trace)


@register_probe("robust_accuracy")
class RobustAccuracy(Probe):
    """Accuracy under an eps-bounded attack (PGD or AutoAttack): the fraction still classified correctly.

    Summary: ``robust_accuracy`` (fraction in [0, 1]) with a 95% Wilson interval
    (``robust_accuracy_ci_low/high``), ``accuracy`` (clean), ``n``, ``correct``,
    ``robust`` (counts), ``attack_success_rate`` (broken / correct), ``eps`` (the
    radius used, [0, 1] pixel units). Details: messages AutoAttack emitted.

    PGD exits early: a sample is broken at its first misclassified iterate (that point
    is kept, as AutoAttack does) and the later steps run only on the samples still robust.
    """

    #: 2: a PGD sample counts as broken at its first misclassified iterate (early exit), not at the last one
    revision = 2

    headline = ('robust_accuracy', 'accuracy')

    def __init__(
        self,
        *,
        attack: Annotated[Literal["pgd", "autoattack"], "pgd, or AutoAttack's standard version"] = "pgd",
        eps: Annotated[float | None, "radius in [0,1] pixel units (default 8/255 for Linf, 0.5 for L2)", Range(0)] = None,
        norm: Annotated[Literal["Linf", "L2"], "threat model"] = "Linf",
        steps: Annotated[int, "PGD steps (step size 2.5*eps/steps)", Range(0, 10_000)] = 10,
        restarts: Annotated[int, "PGD runs from independent random starts", Range(1, 1_000)] = 1,
    ):
        super().__init__()
        self.add_state("n", 0, reduce="sum")
        self.add_state("correct", 0, reduce="sum")
        self.add_state("robust", 0, reduce="sum")
        self.add_state("notes", [], reduce="cat")

    @property
    def radius(self) -> float:
        """The eps actually used."""
        return DEFAULT_EPS[self.norm] if self.eps is None else float(self.eps)

    def update(self, batch: Batch) -> None:
        ok = top1_correct(batch.logits, batch.y)
        self.n += int(batch.y.numel())
        self.correct += int(ok.sum())
        pos = ok.nonzero().flatten()
        if pos.numel() == 0:
            return
        x, y = batch.x[pos].detach(), batch.y[pos]
        model = LogitsModule(batch.model)
        if self.radius == 0:
            robust = torch.ones_like(y, dtype=torch.bool)
        elif self.attack == "pgd":
            robust = self._pgd(model, x, y, batch, pos.cpu().tolist())
        else:
            robust = self._autoattack(model, x, y, batch, num_classes=batch.logits.shape[1])
        self.robust += int(robust.sum())

    def _pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: Batch, pos: list[int]) -> torch.Tensor:
        robust = torch.ones_like(y, dtype=torch.bool)
        for r in range(self.restarts):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            gens = batch.sample_rngs(f"robust_accuracy/pgd/{r}", [pos[i] for i in idx.tolist()])
            xa = pgd(model, x[idx], y[idx], self.radius, norm=self.norm, steps=self.steps,
                     random_init=True, clamp=(0.0, 1.0), generator=gens, stop=_misclassified)
            with torch.no_grad():
                robust[idx] = top1_correct(model(xa), y[idx])
        return robust

    def _autoattack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: Batch, num_classes: int) -> torch.Tensor:
        if num_classes < 4:
            raise ConfigError(f"AutoAttack's standard version needs at least 4 classes (its targeted DLR loss), the model has "
                              f"{num_classes}: use --set robust_accuracy.attack=pgd")
        try:
            from pyautoattack import AutoAttack
        except ImportError:
            raise ConfigError("attack=autoattack needs the pyautoattack package: pip install pyautoattack, "
                              "or use --set robust_accuracy.attack=pgd") from None
        notes: list[str] = []
        seed = derive_seed(batch.seed, batch.offset, "robust_accuracy/autoattack", bits=31)
        with _contained(model, x.device, notes):
            aa = AutoAttack(model, norm=self.norm, eps=self.radius, version="standard", device=x.device, seed=seed)
            aa.verbose = False
            targets = min(9, num_classes - 1)
            aa.apgd_targeted.n_target_classes = targets
            aa.fab.n_target_classes = targets
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
        x_adv = x_adv.to(x.device, x.dtype)
        too_far = per_sample_norm(x_adv - x, self.norm) > self.radius * (1 + 1e-4) + 1e-6
        if bool(too_far.any()) or x_adv.min() < 0 or x_adv.max() > 1:
            raise ProbeError("AutoAttack returned points outside the eps-ball or [0, 1]: report this with your pyautoattack version")
        with torch.no_grad():
            robust = top1_correct(model(x_adv), y)
        self.notes = self.notes + sorted(set(notes) - set(self.notes))
        return robust

    def compute(self) -> ProbeResult:
        n, c, r = int(self.n), int(self.correct), int(self.robust)
        lo, hi = wilson_interval(r, n)
        summary = {
            "robust_accuracy": r / n if n else math.nan,
            "robust_accuracy_ci_low": lo,
            "robust_accuracy_ci_high": hi,
            "accuracy": c / n if n else math.nan,
            "attack_success_rate": (c - r) / c if c else math.nan,
            "n": n,
            "correct": c,
            "robust": r,
            "eps": self.radius,
        }
        details = {"notes": sorted(set(self.notes))} if self.notes else {}
        return ProbeResult(summary=summary, details=details)
