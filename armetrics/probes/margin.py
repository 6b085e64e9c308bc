"""``margin``: how far each sample is from the decision boundary, in logits,
probabilities and (optionally) input space.

Per sample with logits z (K classes) and label y:

- logit margin ``m = z_y - max_{j != y} z_j`` (logit units; negative = misclassified,
  0 = a tie between y and another class);
- probability margin ``p_y - max_{j != y} p_j`` with ``p = softmax(z)`` (in [-1, 1]);
- normalized margin ``m / ||z||_2`` (scale-free, in [-sqrt 2, sqrt 2]; 0 when z = 0);
- spectrally-normalized margin ``m / prod_l sigma_max(W_l)`` (Bartlett et al. 2017,
  leading factor only) when the ``spectrum`` probe ran in the same analysis;
- with ``input=true``: the input-space distance to the decision boundary in L2 and/or
  Linf (units of [0, 1] pixels) by FAB or PGD bisection, see :mod:`armetrics.boundary`.

State is bounded and merges exactly: quantile sketches (relative error
``SKETCH_ALPHA``; their sums, hence the means, are exact), fixed-bin histograms and
integer counts. Per sample (the report's side file, exact values): ``logit_margin``,
``prob_margin``, ``normalized_margin`` (NaN for a row of non-finite logits).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from ..boundary import MIN_RADIUS_RATIO, boundary_distance
from ..errors import ConfigError, ProbeError
from ..functional import Norm, logit_margin  # noqa: F401  (logit_margin: re-exported)
from ..probe import Batch, Context, Probe, ProbeResult, Range, SampleRecorder
from ..registry import register_probe
from ..stats import MAX_BINS, Histogram, QuantileSketch

#: relative error of every quantile (median, q05, ...) this probe reports
SKETCH_ALPHA = 0.005
QUANTILES = {"q05": 0.05, "q25": 0.25, "q75": 0.75, "q95": 0.95}
#: the per-sample columns and their meaning and units
SAMPLE_UNITS = {"logit_margin": "z_y - max_{j!=y} z_j (logits)",
                "prob_margin": "p_y - max_{j!=y} p_j (probability)",
                "normalized_margin": "logit margin / ||z||_2 (scale-free)"}


def prob_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y - max_{j != y} p_j`` with ``p = softmax(z)`` (float64), shape (B,)."""
    return logit_margin(torch.softmax(logits.detach().double(), dim=1), y)


def normalized_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``m / ||z||_2`` per row (0 where ``z = 0``), float64, shape (B,)."""
    m = logit_margin(logits, y)
    norm = logits.detach().double().norm(dim=1)
    return torch.where(norm > 0, m / torch.where(norm > 0, norm, 1.0), 0.0)


def _sketch() -> QuantileSketch:
    return QuantileSketch(alpha=SKETCH_ALPHA)


def _input_edges(max_radius: float, bins: int) -> list[float]:
    """``[0, r/1000, ..., r]``: 0, then ``bins`` geometric bins up to ``max_radius``."""
    return [0.0] + torch.logspace(math.log10(max_radius * 1e-3), math.log10(max_radius), bins).tolist()


def _quantiles(prefix: str, sketch: QuantileSketch, scale: float = 1.0) -> dict[str, float]:
    out = {f"{prefix}_mean": sketch.mean / scale, f"{prefix}_median": sketch.quantile(0.5) / scale}
    out.update({f"{prefix}_{k}": sketch.quantile(q) / scale for k, q in QUANTILES.items()})
    return out


def _rank_quantile(sketch: QuantileSketch, q: float, extra_inf: int) -> float:
    """q-quantile of the sketch's values plus ``extra_inf`` values of +inf (lower rank)."""
    total = sketch.count + extra_inf
    if total == 0:
        return math.nan
    rank = math.floor(q * (total - 1))
    if rank >= sketch.count:
        return math.inf
    if sketch.count == 1:
        return sketch.quantile(0.5)
    return sketch.quantile(min((rank + 0.5) / (sketch.count - 1), 1.0))


@register_probe("margin")
class Margin(Probe):
    """Logit, probability and normalized margins to the decision boundary (optionally in input space).

    Summary (``<q>`` in mean, median, q05, q25, q75, q95): ``logit_margin_<q>``,
    ``prob_margin_<q>``, ``normalized_margin_<q>``, ``frac_negative`` (m < 0),
    ``frac_zero`` (ties), ``n``, ``n_nonfinite``; ``spectral_margin_mean/median`` when
    the ``spectrum`` probe ran; with ``input``: per norm ``input_margin_<norm>_median``,
    ``_mean``, ``_q25``, ``_q75``, ``_failed``. Distributions: histograms of each margin.
    """

    headline = ('logit_margin_mean', 'logit_margin_median', 'prob_margin_mean', 'prob_margin_median', 'normalized_margin_median', 'frac_negative')

    def __init__(
        self,
        *,
        bins: Annotated[int, "number of histogram bins", Range(1, MAX_BINS)] = 40,
        logit_range: Annotated[float, "logit-margin histogram covers [-R, R] (outside: under/overflow)",
                               Range(0, positive=True)] = 20.0,
        input: Annotated[bool, "also measure the input-space distance to the decision boundary (slow)"] = False,
        norms: Annotated[tuple[Norm, ...], "norms of the input-space distance"] = ("L2", "Linf"),
        attack: Annotated[Literal["fab", "pgd"], "input-space attack: FAB or bisection over PGD"] = "fab",
        max_l2: Annotated[float, "largest L2 distance searched ([0,1] pixel units)", Range(0, positive=True)] = 10.0,
        max_linf: Annotated[float, "largest Linf distance searched ([0,1] pixel units)", Range(0, positive=True)] = 0.25,
        steps: Annotated[int | None, "FAB iterations, or PGD steps per bisection radius (default 100 / 20)",
                         Range(1, 10_000)] = None,
        search_steps: Annotated[int, "bisection steps (attack=pgd; each halves the interval)", Range(0, 64)] = 14,
        targets: Annotated[int, "attack=pgd: also targeted runs at the T classes nearest to first order (0: untargeted only)",
                           Range(0, 1_000)] = 1,
        restarts: Annotated[int, "FAB restarts (the first from x, later ones random)", Range(1, 1_000)] = 1,
    ):
        super().__init__()
        if input and attack == "pgd":  # 2: bisection's PGD counts a radius as flipping at the first
            self.revision = 2          # misclassified iterate (early exit), not only at the last one
        self.norms = tuple(n.strip() for n in norms.split(",")) if isinstance(norms, str) else tuple(norms)
        if not self.norms or len(set(self.norms)) != len(self.norms) or not set(self.norms) <= {"L2", "Linf"}:
            raise ConfigError(f"margin.norms must be distinct names from L2, Linf, got {','.join(map(str, self.norms)) or 'nothing'}")

        self.add_state("n", 0, "sum")
        self.add_state("n_nonfinite", 0, "sum")
        self.add_state("n_negative", 0, "sum")
        self.add_state("n_zero", 0, "sum")
        self.add_state("logit_sketch", _sketch(), "merge")
        self.add_state("prob_sketch", _sketch(), "merge")
        self.add_state("norm_sketch", _sketch(), "merge")
        self.add_state("logit_hist", Histogram.linear(-logit_range, logit_range, bins), "merge")
        self.add_state("prob_hist", Histogram.linear(-1.0, 1.0, bins), "merge")
        self.add_state("norm_hist", Histogram.linear(-math.sqrt(2), math.sqrt(2), bins), "merge")
        self.add_state("per_sample", SampleRecorder(), "merge")
        if input:
            for norm in self.norms:
                self.add_state(f"input_{norm}_sketch", _sketch(), "merge")
                self.add_state(f"input_{norm}_hist", Histogram(_input_edges(self.max_radius(norm), bins)), "merge")
                self.add_state(f"input_{norm}_failed", 0, "sum")

    def max_radius(self, norm: str) -> float:
        return self.max_l2 if norm == "L2" else self.max_linf

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if ctx.num_classes is not None and ctx.num_classes < 2:
            raise ProbeError("margin needs at least 2 classes: use a classifier with K >= 2 outputs")

    def update(self, batch: Batch) -> None:
        logits, y = batch.logits, batch.y
        if logits.shape[1] < 2:
            raise ProbeError("margin needs at least 2 classes: use a classifier with K >= 2 outputs")
        finite = torch.isfinite(logits).all(dim=1)
        self.n += int(y.numel())
        self.n_nonfinite += int((~finite).sum())
        z, t = logits[finite], y[finite]
        m = logit_margin(z, t)
        pm = prob_margin(z, t)
        nm = normalized_margin(z, t)
        self.n_negative += int((m < 0).sum())
        self.n_zero += int((m == 0).sum())
        for sketch, hist, values in ((self.logit_sketch, self.logit_hist, m), (self.prob_sketch, self.prob_hist, pm),
                                     (self.norm_sketch, self.norm_hist, nm)):
            sketch.update(values)
            hist.update(values)
        if self.keeps_samples:
            self._record(batch, finite, {"logit_margin": m, "prob_margin": pm, "normalized_margin": nm})
        if self.input:
            self._update_input(batch)

    def _record(self, batch: Batch, finite: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Each sample's margins (NaN where its logits are not finite)."""
        finite = finite.cpu()
        columns = {}
        for key, v in values.items():
            full = torch.full((len(finite),), math.nan, dtype=torch.float64)
            full[finite] = v.double().cpu()
            columns[key] = full
        self.per_sample.add(batch.offset + torch.arange(len(finite)), **columns)

    def _update_input(self, batch: Batch) -> None:
        finite = torch.isfinite(batch.logits).all(dim=1).cpu()
        for norm in self.norms:
            seed = int(torch.randint(0, 2**62, (1,), generator=batch.rng(f"margin.input.{norm}"), device=batch.x.device))
            res = boundary_distance(
                batch.model, batch.x, batch.y, norm, attack=self.attack, max_radius=self.max_radius(norm),
                steps=self.steps, search_steps=self.search_steps, targets=self.targets,
                restarts=self.restarts, seed=seed, logits=batch.logits)
            found = res.distance[res.found & finite]
            getattr(self, f"input_{norm}_sketch").update(found)
            getattr(self, f"input_{norm}_hist").update(found)
            setattr(self, f"input_{norm}_failed", getattr(self, f"input_{norm}_failed") + int((~res.found & finite).sum()))

    def _spectral(self) -> tuple[float | None, dict]:
        spec = self.ctx.results.get("spectrum") if self.ctx is not None else None
        if spec is None:
            return None, {"spectral_margin": "not reported: run the spectrum probe in the same analysis "
                                             "(--probes spectrum,margin) to get spectral_margin_*"}
        sig = [row.get("sigma_max") for row in spec.layers]
        names = [row.get("name") for row in spec.layers]
        if not sig or any(s is None or not math.isfinite(float(s)) or float(s) <= 0 for s in sig):
            return None, {"spectral_margin": "not reported: the spectrum probe gave no finite positive sigma_max "
                                             "for every layer"}
        product = math.prod(float(s) for s in sig)
        return product, {"spectral_margin": {
            "definition": "logit margin / prod_l sigma_max(layer l) (Bartlett et al. 2017, leading factor only)",
            "product": product, "layers": names,
            "note": "sigma_max as reported by the spectrum probe of this analysis (see its config: method, fold_bn)"}}

    def compute(self) -> ProbeResult:
        valid = self.n - self.n_nonfinite
        summary: dict[str, float] = {"n": self.n, "n_nonfinite": self.n_nonfinite,
                                     "frac_negative": self.n_negative / valid if valid else math.nan,
                                     "frac_zero": self.n_zero / valid if valid else math.nan}
        summary.update(_quantiles("logit_margin", self.logit_sketch))
        summary.update(_quantiles("prob_margin", self.prob_sketch))
        summary.update(_quantiles("normalized_margin", self.norm_sketch))
        distributions = {"logit_margin": self.logit_hist.to_dict(), "prob_margin": self.prob_hist.to_dict(),
                         "normalized_margin": self.norm_hist.to_dict()}
        details: dict = {"quantile_relative_error": SKETCH_ALPHA,
                         "units": {"logit_margin": "logits", "prob_margin": "probability",
                                   "normalized_margin": "logit margin / ||logits||_2"}}
        product, note = self._spectral()
        details.update(note)
        if product is not None:
            summary["spectral_margin_mean"] = self.logit_sketch.mean / product
            summary["spectral_margin_median"] = self.logit_sketch.quantile(0.5) / product
        if self.input:
            for norm in self.norms:
                sketch: QuantileSketch = getattr(self, f"input_{norm}_sketch")
                failed = getattr(self, f"input_{norm}_failed")
                key = f"input_margin_{norm}"
                summary[f"{key}_median"] = _rank_quantile(sketch, 0.5, failed)
                summary[f"{key}_q25"] = _rank_quantile(sketch, 0.25, failed)
                summary[f"{key}_q75"] = _rank_quantile(sketch, 0.75, failed)
                summary[f"{key}_mean"] = sketch.mean
                summary[f"{key}_failed"] = failed
                distributions[key] = getattr(self, f"input_{norm}_hist").to_dict()
            details["input_margin"] = {
                "attack": self.attack, "units": "input-space distance, [0, 1] pixel units",
                "max_radius": {n: self.max_radius(n) for n in self.norms},
                "median_and_quartiles": "over all finite samples; misclassified count as 0, failed ones "
                                        "(no boundary point within max_radius) as +inf",
                "mean": "over samples whose boundary was found (misclassified count as 0)",
                "bisection_relative_resolution": ((1 / MIN_RADIUS_RATIO) ** (2.0 ** -self.search_steps) - 1
                                                  if self.attack == "pgd" else None),
            }
        return ProbeResult(summary=summary, distributions=distributions, details=details,
                           samples=self.per_sample.result(SAMPLE_UNITS))
