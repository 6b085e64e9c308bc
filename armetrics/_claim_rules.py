"""The claims' statistics and verdict rules (:mod:`armetrics.claims` is the API).

A scalar claim (:class:`ScalarSpec`) compares one per-sample statistic of the
reference and of the most robust model on the same images with a paired bootstrap; a
layer claim (:class:`LayerSpec`) compares one per-layer value of the two reports layer
by layer (smoothness values also get paired-bootstrap intervals from the per-sample
ratios). Every function here returns numbers or :class:`Verdict` objects; the words
explaining a verdict are built in :mod:`armetrics._claim_text`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import bootstrap
from ._claim_text import claim1_note, layer_note, missing_note, scalar_note
from .report import Report
from .samples import SampleSet, where
from .zoo import format_eps, parse_eps

REPRODUCED, PARTLY, NOT, INCONCLUSIVE = "reproduced", "partly", "not reproduced", "inconclusive"
#: every verdict a claim can get
VERDICTS = (REPRODUCED, PARTLY, NOT, INCONCLUSIVE)
#: a layer claim is reproduced when at least this fraction of layers moves in the claimed direction ...
REPRODUCED_FRACTION = 0.75
#: ... and partly reproduced when more than this fraction does
PARTLY_FRACTION = 0.25
#: a layer whose value changes by at most this fraction of its size did not move (float rounding)
LAYER_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict.

    claim: its id ("1", "1.sigma_std", "1.cv", ..., "2", "3", "4"); title: the claim in
    words; statistic: what is compared, with units; reference, robust: the statistic
    for the reference and for the most robust model (layer claims: the median over the
    compared layers); diff: robust - reference; ci_low, ci_high: its paired-bootstrap
    95% interval over the test images (None where there is no sampling: weights);
    verdict: one of :data:`VERDICTS`; check: True for a labelled robustness check (a
    scale-free or secondary statistic), False for the paper's own statistic; note: how
    the verdict came about (layer fraction, monotonicity over eps, why scale and shape
    statistics differ). sign: the claimed sign of diff; fraction: layer claims, the
    fraction of layers in the claimed direction; layers: per-layer rows (name,
    reference, robust, diff, ci_low, ci_high, claimed); by_model: the statistic of every
    model in eps order (label, value; layer claims also fraction); monotone: whether it
    moves in the claimed direction at every step of eps (None: one robust model only).
    """

    claim: str
    title: str
    statistic: str
    reference: float | None
    robust: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    check: bool = False
    note: str = ""
    sign: int = -1
    fraction: float | None = None
    layers: tuple = ()
    by_model: tuple = ()
    monotone: bool | None = None


def scalar_verdict(low: float, high: float, sign: int) -> str:
    """*reproduced* when the interval [low, high] of robust - reference lies strictly on
    the claimed side of 0 (``sign`` -1: smaller, +1: larger), *not reproduced* when it
    lies strictly on the other side, else (or NaN) *inconclusive*."""
    if sign * low > 0 and sign * high > 0:
        return REPRODUCED
    if sign * low < 0 and sign * high < 0:
        return NOT
    return INCONCLUSIVE


def layer_verdict(fraction: float | None) -> str:
    """*reproduced* when at least 75% of the compared layers move in the claimed
    direction, *partly* when more than 25%, else *not reproduced*; *inconclusive* when
    no layer could be compared (None or NaN)."""
    if fraction is None or not math.isfinite(fraction):
        return INCONCLUSIVE
    return REPRODUCED if fraction >= REPRODUCED_FRACTION else PARTLY if fraction > PARTLY_FRACTION else NOT


# --------------------------------------------------------------------------- models
@dataclass
class Model:
    """One report with its per-sample values and how it is labelled (its eps, else its name)."""

    report: Report
    samples: SampleSet
    label: str
    name: str
    eps: float | None

    @classmethod
    def of(cls, report: Report, samples: SampleSet, is_reference: bool) -> "Model":
        eps = parse_eps(report.model.get("eps"))
        name = str(report.model.get("name") or where(report))
        label = f"eps={format_eps(eps)}" if eps is not None else name
        return cls(report, samples, label, name, eps)


def monotone(values: list[float], sign: int) -> bool | None:
    """Whether ``values`` (in eps order) move in the claimed direction (or stay) at every
    step; None for fewer than three values (one step says nothing beyond the verdict)."""
    if len(values) < 3 or not all(math.isfinite(v) for v in values):
        return None
    return all(sign * (b - a) >= 0 for a, b in zip(values, values[1:]))


# --------------------------------------------------------------------------- scalar claims
@dataclass(frozen=True)
class ScalarSpec:
    """A claim on one per-sample statistic: ``stat`` (a :mod:`armetrics.bootstrap`
    statistic) of the first of ``sources`` ((probe, column)) every model has."""

    claim: str
    title: str
    statistic: str
    sources: tuple[tuple[str, str], ...]
    stat: Callable[[np.ndarray], np.ndarray]
    sign: int
    check: bool = False


def _paired_values(spec: ScalarSpec, models: list[Model]) -> tuple[tuple[str, str] | None, list[np.ndarray], int]:
    """The spec's source, every model's values on the samples all of them have finite
    values for (in the same order), and how many samples were left out."""
    source = next((s for s in spec.sources if all(m.samples.get(*s) is not None for m in models)), None)
    if source is None:
        return None, [], 0
    cols = [m.samples.get(*source) for m in models]
    common = cols[0][0]
    for index, _ in cols[1:]:
        common = np.intersect1d(common, index)
    values = [v[np.searchsorted(i, common)].astype(np.float64) for i, v in cols]
    finite = np.all([np.isfinite(v) for v in values], axis=0) if values else np.zeros(0, bool)
    return source, [v[finite] for v in values], int(len(common) - finite.sum())


def scalar_claim(spec: ScalarSpec, models: list[Model], reps: int, seed: int) -> Verdict:
    """The verdict of a scalar claim: reference vs the most robust model, paired bootstrap."""
    source, values, dropped = _paired_values(spec, models)
    base = dict(claim=spec.claim, title=spec.title, statistic=spec.statistic, check=spec.check, sign=spec.sign)
    if source is None or not len(values[0]):
        missing = [m for m in models if all(m.samples.get(*s) is None for s in spec.sources)]
        note = missing_note(spec.sources[0][0], [where(m.report) for m in missing]) if missing else \
            "no sample has finite values in every report"
        return Verdict(reference=None, robust=None, diff=None, ci_low=None, ci_high=None, verdict=INCONCLUSIVE,
                       note=note, **base)
    per_model = [float(bootstrap.statistic(spec.stat, v)) for v in values]
    diff, lo, hi = bootstrap.paired(values[0], values[-1], spec.stat, reps=reps, seed=seed)
    mono = monotone(per_model, spec.sign)
    by_model = tuple({"label": m.label, "value": v} for m, v in zip(models, per_model))
    verdict = scalar_verdict(lo, hi, spec.sign)
    note = scalar_note(spec, models, per_model, mono, dropped, len(values[0]), source)
    return Verdict(reference=per_model[0], robust=per_model[-1], diff=diff, ci_low=lo, ci_high=hi, verdict=verdict,
                   note=note, by_model=by_model, monotone=mono, **base)


SCALAR_CLAIMS = (
    ScalarSpec("2", "Samples concentrate near the decision boundary (small margins)",
               "median |logit margin| |z_y - max_{j!=y} z_j| (logits)",
               (("margin", "logit_margin"),), bootstrap.abs_median, -1),
    ScalarSpec("2.normalized", "Samples concentrate near the decision boundary (small margins)",
               "median |logit margin| / ||z||_2 (scale-free)",
               (("margin", "normalized_margin"),), bootstrap.abs_median, -1, check=True),
    ScalarSpec("3", "Predictions are less confident", "mean max softmax probability (probability)",
               (("confidence", "max_prob"),), bootstrap.mean, -1),
    ScalarSpec("3.entropy", "Predictions are less confident", "mean entropy of the softmax (nats)",
               (("confidence", "entropy"),), bootstrap.mean, +1, check=True),
    ScalarSpec("4", "Standard accuracy falls as eps grows", "mean top-1 correctness on the same images (fraction)",
               (("accuracy", "correct"), ("confidence", "correct")), bootstrap.mean, -1),
)


# --------------------------------------------------------------------------- layer claims
def _mean_of(col: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x[..., col].mean(axis=1)


def _ratio_of_means(x: np.ndarray) -> np.ndarray:
    return x[..., 0].mean(axis=1) / x[..., 1].mean(axis=1)


@dataclass(frozen=True)
class LayerSpec:
    """A claim on one per-layer value ``key`` of ``probe``'s layer rows; for
    per-sample probes, ``columns`` of the side file and ``stat`` ((B, n, L, C) -> (B, L))
    recompute the value on bootstrap resamples."""

    claim: str
    statistic: str
    probe: str
    key: str
    sign: int
    check: bool = False
    columns: tuple[str, ...] = ()
    stat: Callable[[np.ndarray], np.ndarray] | None = None
    title: str = "Smoother, more uniform layers; more concentrated spectra"


_FEATURE = "feature units per input unit"
LAYER_CLAIMS = (
    LayerSpec("1.sigma_std", "per-layer std of the singular values (weight units)", "spectrum", "std", -1),
    LayerSpec("1.sigma_max", "per-layer largest singular value sigma_max (weight units)", "spectrum", "sigma_max", -1),
    LayerSpec("1.ratio_worst", f"per-layer worst-direction feature change ||J v||, sigma_max of dh/dx ({_FEATURE})",
              "smoothness", "ratio_worst", -1, columns=("ratio_worst",), stat=_mean_of(0)),
    LayerSpec("1.ratio_random", f"per-layer random-direction feature change ||h(x+d)-h(x)||/||d|| ({_FEATURE})",
              "smoothness", "ratio_random", -1, columns=("ratio_random",), stat=_mean_of(0)),
    LayerSpec("1.cv", "per-layer CV = std/mean of the singular values (scale-free)", "spectrum", "cv", -1, check=True),
    LayerSpec("1.anisotropy", "per-layer anisotropy = ratio_worst / ratio_random (scale-free)", "smoothness",
              "anisotropy", -1, check=True, columns=("ratio_worst", "ratio_random"), stat=_ratio_of_means),
    LayerSpec("1.rel_ratio_worst", "per-layer ratio_worst / (||h(x)||/||x||) (scale-free)", "smoothness",
              "rel_ratio_worst", -1, check=True, columns=("rel_ratio_worst",), stat=_mean_of(0)),
    LayerSpec("1.rel_ratio_random", "per-layer ratio_random / (||h(x)||/||x||) (scale-free)", "smoothness",
              "rel_ratio_random", -1, check=True, columns=("rel_ratio_random",), stat=_mean_of(0)),
)


def layer_values(report: Report, probe: str, key: str) -> dict[str, float]:
    """``{layer name: value}`` of a report's ``probe`` rows (report order), finite
    values only, without the model-output row (``type`` "logits": it repeats the
    last layer's numbers or is no layer)."""
    if probe not in report.probes:
        return {}
    out = {}
    for row in report.layers(probe):
        v = row.get(key)
        if row.get("type") == "logits" or row.get("name") == "logits" or not isinstance(v, (int, float)) \
                or isinstance(v, bool) or not math.isfinite(v):
            continue
        out[row["name"]] = float(v)
    return out


@dataclass
class _Layers:
    """The compared layers of a layer claim: names, both value lists, hits."""

    names: list[str]
    ref: list[float]
    top: list[float]
    hits: list[bool] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        return sum(self.hits) / len(self.names) if self.names else None


def moved(reference: float, robust: float, sign: int) -> bool:
    """Whether a layer's value moved from ``reference`` to ``robust`` in the claimed
    direction ``sign``, by more than :data:`LAYER_TOLERANCE` of its size."""
    return sign * (robust - reference) > LAYER_TOLERANCE * max(abs(reference), abs(robust))


def _compare(spec: LayerSpec, ref: Model, other: Model) -> _Layers:
    a, b = layer_values(ref.report, spec.probe, spec.key), layer_values(other.report, spec.probe, spec.key)
    names = [n for n in a if n in b]
    out = _Layers(names, [a[n] for n in names], [b[n] for n in names])
    out.hits = [moved(x, y, spec.sign) for x, y in zip(out.ref, out.top)]
    return out


def layer_claim(spec: LayerSpec, models: list[Model], reps: int = 1000, seed: int = 0) -> Verdict:
    """The verdict of a layer claim: the fraction of layers moving in the claimed direction
    from the reference to the most robust model; medians over layers as the values."""
    ref, top = models[0], models[-1]
    cmp = _compare(spec, ref, top)
    base = dict(claim=spec.claim, title=spec.title, statistic=spec.statistic, check=spec.check, sign=spec.sign)
    if not cmp.names:
        missing = [m for m in (ref, top) if not layer_values(m.report, spec.probe, spec.key)]
        note = missing_note(spec.probe, [where(m.report) for m in missing]) if missing else \
            f"the reports have no layer in common with a finite {spec.key}"
        return Verdict(reference=None, robust=None, diff=None, ci_low=None, ci_high=None, verdict=INCONCLUSIVE,
                       note=note, **base)
    intervals = _layer_intervals(spec, ref, top, cmp.names, reps, seed)
    med_ref, med_top = float(np.median(cmp.ref)), float(np.median(cmp.top))
    by_model = _layer_by_model(spec, models)
    mono = monotone([row["value"] for row in by_model], spec.sign)
    rows = tuple({"name": n, "reference": x, "robust": y, "diff": y - x, "claimed": hit,
                  "ci_low": None if intervals is None else float(intervals[1][j]),
                  "ci_high": None if intervals is None else float(intervals[2][j])}
                 for j, (n, x, y, hit) in enumerate(zip(cmp.names, cmp.ref, cmp.top, cmp.hits)))
    lo, hi = (None, None) if intervals is None else intervals[3]
    note = layer_note(spec, models, cmp.names, sum(cmp.hits), by_model, mono, intervals is None and bool(spec.columns))
    return Verdict(reference=med_ref, robust=med_top, diff=med_top - med_ref, ci_low=lo, ci_high=hi,
                   verdict=layer_verdict(cmp.fraction), note=note, fraction=cmp.fraction, layers=rows,
                   by_model=by_model, monotone=mono, **base)


def _layer_by_model(spec: LayerSpec, models: list[Model]) -> tuple[dict[str, Any], ...]:
    """Per model in eps order: the median over the layers it shares with the reference,
    and (robust models) the fraction of those layers in the claimed direction."""
    out = []
    for i, m in enumerate(models):
        cmp = _compare(spec, models[0], m)
        row: dict[str, Any] = {"label": m.label, "value": float(np.median(cmp.top)) if cmp.names else math.nan}
        if i:
            row["fraction"] = cmp.fraction
        out.append(row)
    return tuple(out)


def _layer_intervals(spec: LayerSpec, ref: Model, top: Model, names: list[str], reps: int, seed: int):
    """Paired-bootstrap intervals from the side files' per-sample values: per layer
    (diff, low, high arrays) and of the difference of the medians over layers; None when
    the claim has no per-sample values or the two models measured different samples."""
    if not spec.columns:
        return None
    stacks = [_stack(m.samples, spec.probe, spec.columns, names) for m in (ref, top)]
    if any(s is None for s in stacks) or not np.array_equal(stacks[0][0], stacks[1][0]) or not len(stacks[0][0]):
        return None
    a, b = stacks[0][1], stacks[1][1]
    diff, lo, hi = bootstrap.paired(a, b, spec.stat, reps=reps, seed=seed)
    _, mlo, mhi = bootstrap.paired(a, b, lambda x: np.median(spec.stat(x), axis=-1), reps=reps, seed=seed)
    return np.atleast_1d(diff), np.atleast_1d(lo), np.atleast_1d(hi), (mlo, mhi)


def _stack(s: SampleSet, probe: str, columns: tuple[str, ...], names: list[str]):
    """``(index, values (n, L, C))`` of ``columns`` for the layers ``names``; None when missing."""
    spec = s.probes.get(probe)
    if spec is None or spec.rows is None or any(c not in spec.columns for c in columns) or \
            any(n not in spec.rows for n in names):
        return None
    cols = [spec.rows.index(n) for n in names]
    return spec.index, np.stack([spec.columns[c][:, cols] for c in columns], axis=-1)


# --------------------------------------------------------------------------- claim 1
def claim1_verdict(subs: list[Verdict]) -> Verdict:
    """Claim 1 from its sub-claims on the paper's statistics (``check`` False):
    reproduced when every conclusive one is, not reproduced when every one is not,
    partly otherwise, inconclusive when none is conclusive. The checks are reported
    beside it (the note says why they differ: scale vs shape)."""
    primary = [v for v in subs if not v.check and v.verdict != INCONCLUSIVE]
    if not primary:
        verdict = INCONCLUSIVE
    elif all(v.verdict == REPRODUCED for v in primary):
        verdict = REPRODUCED
    elif all(v.verdict == NOT for v in primary):
        verdict = NOT
    else:
        verdict = PARTLY
    return Verdict(claim="1", title=LAYER_CLAIMS[0].title,
                   statistic="the paper's per-layer statistics: std of the singular values, sigma_max, worst- and "
                             "random-direction feature-change ratios",
                   reference=None, robust=None, diff=None, ci_low=None, ci_high=None, verdict=verdict,
                   note=claim1_note(subs), sign=-1)


# --------------------------------------------------------------------------- per model
#: the per-model statistics of :func:`per_model_stats`: key -> ((probe, column) sources, statistic)
MODEL_STATS = {
    "accuracy": ((("accuracy", "correct"), ("confidence", "correct")), bootstrap.mean),
    "max_prob_mean": ((("confidence", "max_prob"),), bootstrap.mean),
    "entropy_mean": ((("confidence", "entropy"),), bootstrap.mean),
    "logit_margin_abs_median": ((("margin", "logit_margin"),), bootstrap.abs_median),
    "logit_margin_median": ((("margin", "logit_margin"),), bootstrap.median),
}


def per_model_stats(models: list[Model], reps: int, seed: int) -> list[dict[str, Any]]:
    """Each model's label, name, eps and :data:`MODEL_STATS` as ``[value, low, high]``
    (95% bootstrap interval over its test images; absent when the report lacks them)."""
    out = []
    for m in models:
        row: dict[str, Any] = {"label": m.label, "name": m.name, "eps": m.eps}
        for key, (sources, stat) in MODEL_STATS.items():
            col = next((m.samples.get(*s) for s in sources if m.samples.get(*s) is not None), None)
            if col is None:
                continue
            values = col[1].astype(np.float64)
            values = values[np.isfinite(values)]
            if len(values):
                row[key] = list(bootstrap.interval(values, stat, reps=reps, seed=seed))
        out.append(row)
    return out
