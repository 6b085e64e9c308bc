"""``accuracy``: top-1 accuracy on the given data."""

from __future__ import annotations

from typing import Annotated

import torch

from ..functional import top1_correct
from ..probe import Batch, Probe, ProbeResult, SampleRecorder
from ..registry import register_probe


@register_probe("accuracy")
class Accuracy(Probe):
    """Top-1 accuracy: the fraction of samples whose largest logit is the true class.

    Summary: ``accuracy`` (fraction in [0, 1]), ``correct``, ``n``. Layers: one row per
    class (``name`` = class index as a string) with that class's accuracy when
    ``per_class`` is true. Per sample (side file): ``correct`` (bool).
    """

    def __init__(self, *, per_class: Annotated[bool, "also report accuracy per class"] = False):
        super().__init__()
        self.per_class = per_class
        self.add_state("correct", torch.zeros(0, dtype=torch.long), reduce=_add_padded)
        self.add_state("count", torch.zeros(0, dtype=torch.long), reduce=_add_padded)
        self.add_state("per_sample", SampleRecorder(), "merge")

    def update(self, batch: Batch) -> None:
        k = batch.logits.shape[1]
        correct = top1_correct(batch.logits, batch.y)
        if self.keeps_samples:
            self.per_sample.add(batch.offset + torch.arange(len(correct)), correct=correct)
        ok = correct.long().cpu()
        y = batch.y.cpu()
        self.correct = _add_padded(self.correct, torch.bincount(y, weights=ok, minlength=k).long())
        self.count = _add_padded(self.count, torch.bincount(y, minlength=k))

    def compute(self) -> ProbeResult:
        n = int(self.count.sum())
        c = int(self.correct.sum())
        layers = []
        if self.per_class:
            layers = [{"name": str(i), "accuracy": (int(ci) / int(ni) if ni else None), "n": int(ni)}
                      for i, (ci, ni) in enumerate(zip(self.correct, self.count))]
        return ProbeResult(summary={"accuracy": c / n if n else float("nan"), "correct": c, "n": n}, layers=layers,
                           samples=self.per_sample.result({"correct": "top-1 prediction is the label (bool)"}))


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Add two per-class count vectors of possibly different lengths."""
    n = max(len(a), len(b))
    out = torch.zeros(n, dtype=torch.long)
    out[: len(a)] += a
    out[: len(b)] += b
    return out
