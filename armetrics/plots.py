"""Comparison figures: one PNG per question, one colour per model, in a fixed order.

Every ``plot_*`` function takes the models to draw (:class:`Series`: a label, a
colour, a marker and the :class:`~armetrics.report.Report`) and a path, draws what
those reports contain and returns the path — or ``None`` without writing anything
when no report has the probe or keys the figure needs. Missing keys, ``None``
(non-finite) values and models lacking a probe are skipped, never an error.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas (no
pyplot, no display, no global backend switch), constrained layout, and one legend
outside the axes so it never covers data: right of the plots while it is no taller than
they are, else below them in several columns, the figure grown to hold it whole (legend
sizes measured by the renderer; readable for ~100 models). A scatter axis whose values
are all positive and span more than :data:`LOG_RATIO` is logarithmic (:func:`wants_log`). ``path`` may also be a binary file object
(the PNG is written into it; :func:`armetrics.comparison.compare` draws into memory).

Text taken from reports (model names, layer names, summary keys, option values) is
shown literally: every figure is drawn with ``text.parse_math`` off (a name such as
``$\\frac{$`` is not TeX) and ``text.usetex`` off, and such text is put on one line and
cut to :data:`MAX_TEXT` characters, so a crafted report cannot make a figure
unreadable, huge or fail. At most :data:`MAX_PANELS` models get a panel of their own.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import one_line
from .report import Report
from .zoo import format_eps

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DPI = 110
MAX_NAMED_TICKS = 24  # more layers than this: numeric depth ticks only
MAX_TEXT = 60  # longest text from a report shown in a figure (legend labels, titles, ticks)
MAX_PANELS = 48  # spectrum_distribution: panels for at most this many models
LEGEND_SIZE = 9.0  # legend font size (points)
LEGEND_PAD = 0.25  # inches around a legend
MAX_LEGEND_ROWS = 24  # a legend below the plots gets enough columns for at most this many rows...
MAX_WIDTH = 16.0  # ...as long as the figure need not grow wider than this (inches); then it grows taller
LOG_RATIO = 100.0  # a scatter axis is logarithmic when its values are all > 0 and max/min exceeds this


@dataclass
class Series:
    """One model in a figure."""

    label: str
    colour: Any
    marker: str
    report: Report


def colours(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours from viridis (dark = first model, light green = last), skipping
    its pale yellow-green end so every colour reads on white."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if n == 1:
        return [cmap(0.0)]
    return [cmap(0.82 * i / (n - 1)) for i in range(n)]


def make_series(labels: Sequence[str], reports: Sequence[Report]) -> list[Series]:
    cs = colours(len(labels))
    return [Series(lab, c, MARKERS[i % len(MARKERS)], r) for i, (lab, c, r) in enumerate(zip(labels, cs, reports))]


# --------------------------------------------------------------------------- helpers
def literal_text(draw: Callable) -> Callable:
    """Run a drawing function with matplotlib's mathtext and TeX off: text is drawn as given."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        from matplotlib import rc_context

        with rc_context({"text.parse_math": False, "text.usetex": False}):
            return draw(*args, **kwargs)

    return wrapper


def shown(text: Any, limit: int = MAX_TEXT) -> str:
    """Text from a report as a figure shows it: one line, at most ``limit`` characters."""
    text = one_line(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 4.2, **kw):
    """A figure of ``width`` x ``height`` inches of plots, with room for the legend on
    the right and below (sized in :func:`_save`). Returns the plots' subfigure (call
    ``suptitle`` on it: the title is centred over the plots, never over the legend) and
    the axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width + 2.0, height + 0.05), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=[width, 2.0], height_ratios=[height, 0.05], wspace=0.0, hspace=0.0)
    main = fig.add_subfigure(grid[0, 0])
    main.armetrics_legend = fig.add_subfigure(grid[0, 1])
    main.armetrics_below = fig.add_subfigure(grid[1, :])
    main.armetrics_grid = grid
    main.armetrics_size = (width, height)
    axes = main.subplots(nrows, ncols, squeeze=False, **kw)
    return main, axes


def _legend_size(where, handles: list, labels: list[str], ncol: int, title: str, **kw) -> tuple[Any, float, float]:
    """A legend drawn on the subfigure ``where`` and its (width, height) in inches,
    measured by the renderer (what the PNG will show)."""
    leg = where.legend(handles, labels, frameon=False, ncol=ncol, title=title, fontsize=LEGEND_SIZE,
                       title_fontsize=LEGEND_SIZE + 1, borderaxespad=0.2, **kw)
    box = leg.get_window_extent(where.figure.canvas.get_renderer())
    return leg, box.width / DPI, box.height / DPI


def _place_legend(main, handles: list, labels: list[str], title: str) -> tuple[float, float]:
    """Put the legend where it fits whole: on the right of the plots in one or two
    columns while it is no taller than they are, else below them in as many columns as
    the width allows (the figure widened to :data:`MAX_WIDTH` inches for at most
    :data:`MAX_LEGEND_ROWS` rows, and as tall as the legend needs). Returns the room it
    takes: (width on the right, height below), in inches."""
    width, height = main.armetrics_size
    side, below = main.armetrics_legend, main.armetrics_below
    for ncol in (1, 2):
        leg, w, h = _legend_size(side, handles, labels, ncol, title, loc="upper left")
        if h <= height - 0.2:
            return w + LEGEND_PAD, 0.0
        leg.remove()
    leg, col, _ = _legend_size(below, handles, labels, 1, title, loc="upper center")
    leg.remove()
    wanted = math.ceil(len(labels) / MAX_LEGEND_ROWS)
    total = max(width, min(MAX_WIDTH, wanted * col + LEGEND_PAD))
    ncol = max(1, min(len(labels), int((total - LEGEND_PAD) // col)))
    _, w, h = _legend_size(below, handles, labels, ncol, title, loc="upper center")
    main.armetrics_size = (max(total, w + LEGEND_PAD), height)
    return 0.0, h + LEGEND_PAD


def _save(main, path: Path, handles: list, labels: list[str], title: str = "model") -> Path:
    """Place the legend (:func:`_place_legend`), size the figure around plots and legend,
    and write the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = main.figure
    FigureCanvasAgg(fig)
    right, under = 0.05, 0.05
    if handles:
        right, under = _place_legend(main, handles, [shown(t) for t in labels], title)
        right, under = max(right, 0.05), max(under, 0.05)
    width, height = main.armetrics_size
    main.armetrics_grid.set_width_ratios([width, right])
    main.armetrics_grid.set_height_ratios([height, under])
    fig.set_size_inches(width + right, height + under)
    fig.savefig(path, dpi=DPI, format="png")
    return Path(path) if isinstance(path, (str, os.PathLike)) else path


def _num(v: Any) -> float:
    """A report value as a float; NaN for None, strings, bools."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v)


def _probe(report: Report, probe: str) -> dict[str, Any] | None:
    return report.data["probes"].get(probe)


def _layer_rows(report: Report, probe: str) -> list[dict[str, Any]]:
    entry = _probe(report, probe)
    return list(entry.get("layers") or []) if entry else []


def _any_finite(values) -> bool:
    return any(math.isfinite(v) for v in values)


def _depth_axis(ax, names_per_model: list[list[str]], xlabel: str) -> None:
    """x = layer depth 1..L; tick labels are the layer names when every model has the
    same layers and there are few enough of them to read."""
    longest = max((len(n) for n in names_per_model), default=0)
    same = all(n == names_per_model[0] for n in names_per_model)
    if same and 0 < longest <= MAX_NAMED_TICKS:
        ax.set_xticks(range(1, longest + 1))
        ax.set_xticklabels([shown(n, 40) for n in names_per_model[0]], rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
        ax.set_xlabel(xlabel)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        ax.set_xlabel(f"{xlabel} (depth index)")


def _log_axis(ax, values: Sequence[float] = (), axis: str = "y") -> None:
    """Log scale on ``axis`` (``"x"`` or ``"y"``) with plain-number tick labels (1, 2, 5,
    10, ... over at most three decades of ``values``, else powers of ten), no 2x10^0 clutter."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    finite = [v for v in values if math.isfinite(v) and v > 0]
    decades = math.log10(max(finite) / min(finite)) if finite else 0.0
    subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def _log_ok(values: list[float]) -> bool:
    """Per-layer curves: log y when every finite value is > 0 and max/min > 20."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20


def wants_log(values: Sequence[float], ratio: float = LOG_RATIO) -> bool:
    """Scatter axes (``correlation.png``): logarithmic when every finite value is > 0 and
    they span more than ``ratio`` (two decades), so that one outlier does not flatten
    the others against an end of a linear axis."""
    finite = [v for v in values if math.isfinite(v)]
    return len(finite) >= 2 and min(finite) > 0 and max(finite) / min(finite) > ratio


# --------------------------------------------------------------------------- per-layer lines
SPECTRUM_STATS = (
    ("cv", "CV of singular values\n(std / mean)"),
    ("sigma_max", "largest singular value σ_max"),
    ("condition_number", "condition number\nσ_max / σ_min"),
    ("stable_rank", "stable rank Σσ² / σ_max²"),
)
SMOOTHNESS_STATS = (
    ("ratio_random", "‖Δh‖ / ‖δ‖, random δ"),
    ("ratio_worst", "‖Δh‖ / ‖δ‖, worst δ (σ_max of J)"),
    ("rel_ratio_worst", "worst ratio relative to\n‖h(x)‖ / ‖x‖"),
    ("anisotropy", "anisotropy\nratio_worst / ratio_random"),
)


def _per_layer_figure(series: Sequence[Series], probe: str, stats, path: Path, title: str, xlabel: str) -> Path | None:
    rows = {s.label: _layer_rows(s.report, probe) for s in series}
    present = [(k, lab) for k, lab in stats
               if any(_any_finite(_num(r.get(k)) for r in rs) for rs in rows.values())]
    if not present:
        return None
    ncols = 2 if len(present) > 1 else 1
    nrows = math.ceil(len(present) / ncols)
    fig, axes = _figure(nrows, ncols, width=5.0 * ncols, height=3.6 * nrows + 0.6)
    handles, labels = [], []
    drawn = [s for s in series if rows[s.label]]
    names = [[str(r.get("name")) for r in rows[s.label]] for s in drawn]
    for ax, (key, ylabel) in zip(axes.flat, present):
        values_all = []
        for s in drawn:
            ys = [_num(r.get(key)) for r in rows[s.label]]
            values_all += ys
            lo = [_num(r.get(f"{key}_ci_low")) for r in rows[s.label]]
            hi = [_num(r.get(f"{key}_ci_high")) for r in rows[s.label]]
            if _any_finite(lo) and _any_finite(hi):  # 95% confidence band where the probe gives one
                ax.fill_between(range(1, len(ys) + 1), lo, hi, color=s.colour, alpha=0.15, linewidth=0)
            (line,) = ax.plot(range(1, len(ys) + 1), ys, color=s.colour, marker=s.marker, markersize=4, linewidth=1.5,
                              markevery=max(1, len(ys) // 12))
            if ax is axes.flat[0]:
                handles.append(line)
                labels.append(s.label)
        if _log_ok(values_all):
            _log_axis(ax, values_all)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax in axes.flat[:len(present)]:
        _depth_axis(ax, names, xlabel)
    fig.suptitle(title)
    return _save(fig, path, handles, labels)


@literal_text
def plot_spectrum_layers(series: Sequence[Series], path: Path) -> Path | None:
    """Per-layer spectrum statistics (cv, σ_max, condition number, stable rank) vs depth."""
    return _per_layer_figure(series, "spectrum", SPECTRUM_STATS, path,
                             "Weight spectrum per layer", "layer")


@literal_text
def plot_smoothness_layers(series: Sequence[Series], path: Path) -> Path | None:
    """Per-layer smoothness ratios and anisotropy vs depth (last row: the logits), with
    the probe's 95% bootstrap bands where it reports ``<key>_ci_low/high``."""
    return _per_layer_figure(series, "smoothness", SMOOTHNESS_STATS, path,
                             "Feature change per unit input change, per layer", "layer")


# --------------------------------------------------------------------------- spectrum bands
#: the spectrum probe's per-layer quantile keys: low outer, low inner, middle, high inner, high outer
QUANTILE_KEYS = ("q05", "q25", "q50", "q75", "q95")


def hist_quantiles(edges: Sequence[float], counts: Sequence[float], qs: Sequence[float]) -> list[float]:
    """Quantiles of histogrammed data, linear within a bin (NaN when the histogram is empty)."""
    counts = np.asarray(counts, dtype=float)
    edges = np.asarray(edges, dtype=float)
    total = counts.sum()
    if total <= 0 or len(edges) != len(counts) + 1:
        return [math.nan] * len(qs)
    cum = np.concatenate([[0.0], np.cumsum(counts)]) / total
    out = []
    for q in qs:
        i = int(np.clip(np.searchsorted(cum, q, side="left"), 1, len(edges) - 1))
        lo, hi = cum[i - 1], cum[i]
        frac = 0.0 if hi <= lo else (q - lo) / (hi - lo)
        out.append(float(edges[i - 1] + frac * (edges[i] - edges[i - 1])))
    return out


def _spectrum_bands(report: Report) -> tuple[list[str], dict[str, list[float]]]:
    """Per layer: ``min``/``max`` (σ_min, σ_max), ``lo``/``hi`` (inner quantile band),
    ``lo2``/``hi2`` (outer band), ``mid`` (median or mean), from the per-layer quantile
    keys, else the per-layer histograms in ``distributions``, else mean ± std."""
    rows = _layer_rows(report, "spectrum")
    names = [str(r.get("name")) for r in rows]
    out: dict[str, list[float]] = {k: [] for k in ("min", "max", "lo2", "lo", "mid", "hi", "hi2")}
    entry = _probe(report, "spectrum") or {}
    dists = entry.get("distributions") or {}
    keys = QUANTILE_KEYS if rows and all(k in rows[0] for k in QUANTILE_KEYS) else None
    for r in rows:
        out["min"].append(_num(r.get("sigma_min")))
        out["max"].append(_num(r.get("sigma_max")))
        name = str(r.get("name"))
        hist = dists.get(name)  # the spectrum probe's histogram of the layer's values
        if keys:
            vals = [_num(r.get(k)) for k in keys]
        elif isinstance(hist, dict) and "edges" in hist and "counts" in hist:
            vals = hist_quantiles(hist["edges"], hist["counts"], (0.05, 0.25, 0.5, 0.75, 0.95))
        else:
            m, sd = _num(r.get("mean")), _num(r.get("std"))
            vals = [math.nan, m - sd, m, m + sd, math.nan]
        for k, v in zip(("lo2", "lo", "mid", "hi", "hi2"), vals):
            out[k].append(v)
    return names, out


@literal_text
def plot_spectrum_distribution(series: Sequence[Series], path: Path) -> Path | None:
    """Singular value distribution per layer, one panel per model: σ_min–σ_max range,
    5–95% and 25–75% quantile bands, median line (the first :data:`MAX_PANELS` models
    that have them)."""
    drawn = [(s, *_spectrum_bands(s.report)) for s in series if _layer_rows(s.report, "spectrum")]
    drawn = [d for d in drawn if _any_finite(d[2]["max"]) or _any_finite(d[2]["mid"])]
    if not drawn:
        return None
    left_out = max(0, len(drawn) - MAX_PANELS)
    drawn = drawn[:MAX_PANELS]
    n = len(drawn)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols, width=4.0 * ncols, height=3.3 * nrows + 0.8, sharey=True)
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    all_vals = []
    for ax, (s, names, b) in zip(axes.flat, drawn):
        x = np.arange(1, len(names) + 1)
        arr = {k: np.asarray(v, dtype=float) for k, v in b.items()}
        all_vals += [v for k in ("min", "max", "mid") for v in b[k]]
        ax.fill_between(x, arr["min"], arr["max"], color=s.colour, alpha=0.12, linewidth=0)
        ax.fill_between(x, arr["lo2"], arr["hi2"], color=s.colour, alpha=0.22, linewidth=0)
        ax.fill_between(x, arr["lo"], arr["hi"], color=s.colour, alpha=0.45, linewidth=0)
        ax.plot(x, arr["mid"], color=s.colour, marker=s.marker, markersize=3.5, linewidth=1.5,
                markevery=max(1, len(x) // 12))
        ax.set_title(shown(s.label), fontsize=10)
        ax.grid(True, alpha=0.3)
        _depth_axis(ax, [names], "layer")
    finite = [v for v in all_vals if math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 20:
        for ax in axes.flat:
            _log_axis(ax, finite)
    for ax in axes[:, 0]:
        ax.set_ylabel("singular value σ")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    grey = "0.35"
    handles = [Patch(color=grey, alpha=0.12), Patch(color=grey, alpha=0.3), Patch(color=grey, alpha=0.55),
               Line2D([], [], color=grey, linewidth=1.5)]
    labels = ["σ_min – σ_max", "5–95% of σ", "25–75% of σ", "median σ"]
    fig.suptitle("Singular value distribution per layer"
                 + (f" (first {MAX_PANELS} models; {left_out} more not shown)" if left_out else ""))
    return _save(fig, path, handles, labels, title="band")


# --------------------------------------------------------------------------- histograms
MARGIN_HISTS = (
    ("logit_margin", "logit margin  z_y − max_{j≠y} z_j"),
    ("prob_margin", "probability margin  p_y − max_{j≠y} p_j"),
    ("normalized_margin", "normalized margin  m / ‖z‖₂"),
)
CONFIDENCE_HISTS = (
    ("max_prob", "confidence  max_j p_j"),
    ("entropy", "predictive entropy (nats)"),
)


def _hist_fractions(hist: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(edges, fraction of all samples per bin); under/overflow folded into the end bins."""
    try:
        edges = np.asarray(hist["edges"], dtype=float)
        counts = np.asarray(hist["counts"], dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if edges.ndim != 1 or len(edges) != len(counts) + 1 or len(counts) == 0:
        return None
    counts = counts.copy()
    counts[0] += _num(hist.get("underflow")) if math.isfinite(_num(hist.get("underflow"))) else 0.0
    counts[-1] += _num(hist.get("overflow")) if math.isfinite(_num(hist.get("overflow"))) else 0.0
    total = counts.sum()
    if total <= 0:
        return None
    return edges, counts / total


def draw_hists(ax, series: Sequence[Series], probe: str, key: str, zero_line: bool = False, fill: bool = True,
               linewidth: float = 1.6) -> list[tuple[Series, Any]]:
    """Each model's ``probe`` distribution ``key`` as a step line on ``ax`` (fractions per
    bin, filled lightly when ``fill``), zoomed on the occupied bins, a dotted line at 0
    when ``zero_line`` and 0 is in view. Returns the (series, line) drawn."""
    drawn, lo, hi = [], math.inf, -math.inf
    for s in series:
        hist = ((_probe(s.report, probe) or {}).get("distributions") or {}).get(key)
        fr = _hist_fractions(hist) if isinstance(hist, dict) else None
        if fr is None:
            continue
        edges, frac = fr
        occupied = np.nonzero(frac)[0]
        if len(occupied):
            lo, hi = min(lo, edges[occupied[0]]), max(hi, edges[occupied[-1] + 1])
        (line,) = ax.step(edges, np.append(frac, frac[-1]), where="post", color=s.colour, linewidth=linewidth)
        if fill:
            ax.fill_between(edges, np.append(frac, frac[-1]), step="post", color=s.colour, alpha=0.08, linewidth=0)
        drawn.append((s, line))
    pad = 0.04 * (hi - lo) if math.isfinite(lo) and math.isfinite(hi) else math.nan
    if hi > lo and math.isfinite(lo - pad) and math.isfinite(hi + pad):  # zoom on the occupied bins
        ax.set_xlim(lo - pad, hi + pad)
    if zero_line and ax.get_xlim()[0] < 0 < ax.get_xlim()[1]:
        ax.axvline(0.0, color="0.3", linestyle=":", linewidth=1)
    return drawn


def _hist_figure(series: Sequence[Series], probe: str, hists, path: Path, title: str,
                 zero_line: bool = False) -> Path | None:
    present = [(k, lab) for k, lab in hists
               if any(isinstance((_probe(s.report, probe) or {}).get("distributions", {}).get(k), dict) for s in series)]
    if not present:
        return None
    fig, axes = _figure(1, len(present), width=4.3 * len(present), height=3.8)
    handles, labels = [], []
    for ax, (key, xlabel) in zip(axes.flat, present):
        for s, line in draw_hists(ax, series, probe, key, zero_line, fill=True, linewidth=1.6):
            if s.label not in labels:
                handles.append(line)
                labels.append(s.label)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes.flat[0].set_ylabel("fraction of samples per bin")
    fig.suptitle(title)
    return _save(fig, path, handles, labels)


@literal_text
def plot_margin_hist(series: Sequence[Series], path: Path) -> Path | None:
    """Overlaid histograms of the margin probe's distributions (fractions per bin)."""
    return _hist_figure(series, "margin", MARGIN_HISTS, path,
                        "Margins (end bins include values beyond the histogram range)", zero_line=True)


@literal_text
def plot_confidence_hist(series: Sequence[Series], path: Path) -> Path | None:
    """Overlaid histograms of confidence (max-prob) and entropy."""
    return _hist_figure(series, "confidence", CONFIDENCE_HISTS, path, "Confidence and entropy")


# --------------------------------------------------------------------------- reliability
@literal_text
def plot_reliability(series: Sequence[Series], path: Path) -> Path | None:
    """Reliability diagram: accuracy vs mean confidence per confidence bin (top), and the
    fraction of samples per bin (bottom). The diagonal is perfect calibration."""
    data = []
    for s in series:
        details = (_probe(s.report, "confidence") or {}).get("details") or {}
        bins = details.get("reliability")
        if not isinstance(bins, list):
            continue
        rows = [b for b in bins if isinstance(b, dict)]
        total = sum(_num(b.get("count")) for b in rows if math.isfinite(_num(b.get("count"))))
        pts = [(_num(b.get("confidence")), _num(b.get("accuracy")), _num(b.get("count")),
                _num(b.get("lower")), _num(b.get("upper"))) for b in rows]
        pts = [p for p in pts if all(math.isfinite(v) for v in p[:3]) and p[2] > 0]
        if pts and total > 0:
            data.append((s, pts, total))
    if not data:
        return None
    fig, axes = _figure(2, 1, width=5.2, height=6.0, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top, bottom = axes[0, 0], axes[1, 0]
    top.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=1)
    handles, labels = [], []
    for s, pts, total in data:
        conf, acc, cnt = (np.array([p[i] for p in pts]) for i in range(3))
        (line,) = top.plot(conf, acc, color=s.colour, marker=s.marker, markersize=4.5, linewidth=1.5)
        ece = _num((s.report.data["probes"]["confidence"].get("summary") or {}).get("ece"))
        handles.append(line)
        labels.append(f"{s.label} (ECE {ece:.3f})" if math.isfinite(ece) else s.label)
        bottom.plot(conf, cnt / total, color=s.colour, marker=s.marker, markersize=3.5, linewidth=1.2)
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], color="0.4", linestyle="--"))
    labels.append("perfect calibration")
    top.set_ylabel("accuracy in bin")
    top.set_xlim(0, 1.0)
    top.set_ylim(0, 1.02)
    top.grid(True, alpha=0.3)
    bottom.set_xlabel("mean confidence in bin (max_j p_j)")
    bottom.set_ylabel("fraction\nof samples")
    bottom.grid(True, alpha=0.3)
    fig.suptitle("Reliability diagram")
    return _save(fig, path, handles, labels)


# --------------------------------------------------------------------------- scatter
def clean_accuracy(report: Report) -> float:
    """Clean top-1 accuracy from whichever probe reported it (accuracy, robust_accuracy,
    confidence), NaN if none did."""
    for probe in ("accuracy", "robust_accuracy", "confidence"):
        v = _num(((_probe(report, probe) or {}).get("summary") or {}).get("accuracy"))
        if math.isfinite(v):
            return v
    return math.nan


def robust_accuracy(report: Report) -> float:
    return _num(((_probe(report, "robust_accuracy") or {}).get("summary") or {}).get("robust_accuracy"))


def _attack_text(series: Sequence[Series]) -> str:
    for s in series:
        entry = _probe(s.report, "robust_accuracy") or {}
        cfg = entry.get("config") or {}
        if cfg:
            eps = _num(cfg.get("eps"))
            if not math.isfinite(eps):  # default radius: the probe reports the one it used
                eps = _num((entry.get("summary") or {}).get("eps"))
            eps_txt = f" ε={format_eps(eps)}" if math.isfinite(eps) else ""
            parts = [{"pgd": "PGD", "autoattack": "AutoAttack"}.get(str(cfg["attack"]), shown(cfg["attack"], 20))
                     if k == "attack" else shown(cfg[k], 20) for k in ("attack", "norm") if cfg.get(k) is not None]
            return (" (" + " ".join(parts) + eps_txt + ")") if parts or eps_txt else ""
    return ""


@literal_text
def plot_accuracy_robust(series: Sequence[Series], path: Path,
                         leaderboard: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """Clean accuracy vs robust accuracy (robust_accuracy probe), one point per model;
    hollow markers: the leaderboard's clean / robust accuracy of zoo models."""
    pts = [(s, clean_accuracy(s.report), robust_accuracy(s.report)) for s in series]
    pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
    if not pts:
        return None
    fig, axes = _figure(1, 1, width=5.0, height=4.8)
    ax = axes[0, 0]
    handles, labels = [], []
    for s, a, r in pts:
        h = ax.scatter([a], [r], color=s.colour, marker=s.marker, s=60, edgecolors="black", linewidths=0.5, zorder=3)
        handles.append(h)
        labels.append(s.label)
    lb_drawn = False
    for s in series:
        rec = (leaderboard or {}).get(s.label)
        if rec and rec.get("clean_accuracy") is not None and rec.get("robust_accuracy") is not None:
            ax.scatter([rec["clean_accuracy"]], [rec["robust_accuracy"]], facecolors="none", edgecolors=[s.colour],
                       marker=s.marker, s=70, linewidths=1.5, zorder=2)
            lb_drawn = True
    if lb_drawn:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="0.3"))
        labels.append("leaderboard (hollow)")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("robust accuracy" + _attack_text(series))
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
    ax.grid(True, alpha=0.3)
    ax.set_aspect("equal")
    fig.suptitle("Accuracy vs robust accuracy")
    return _save(fig, path, handles, labels)


def _correlation_panels(rows: Sequence[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The rows to scatter: per (dataset, threat model) group, in the rows' order, the
    ``top`` keys with the strongest finite ρ (2 per group when there are several groups)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("dataset"), r.get("threat_model")), []).append(r)
    per = top if len(groups) == 1 else min(top, 2)
    return [r for g in groups.values() for r in [r for r in g if math.isfinite(_num(r.get("spearman_rho")))][:per]]


def _scatter_key(ax, series: Sequence[Series], row: dict[str, Any], values: Callable[[Series, str], float],
                 robust: Callable[[Series], float], group: Callable[[Series], Any] | None,
                 handles: list, labels: list[str]) -> None:
    """One panel of :func:`plot_correlation`: the models of ``row``'s group, key vs
    leaderboard robust accuracy (log x when :func:`wants_log`)."""
    place = (row.get("dataset"), row.get("threat_model"))
    xs = []
    for s in series:
        if group is not None and place != (None, None) and tuple(group(s) or ()) != place:
            continue
        x, y = values(s, row["key"]), robust(s)
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        xs.append(x)
        h = ax.scatter([x], [y], color=s.colour, marker=s.marker, s=50, edgecolors="black", linewidths=0.5)
        if s.label not in labels:
            handles.append(h)
            labels.append(s.label)
    if wants_log(xs):
        _log_axis(ax, xs, axis="x")
    ax.set_xlabel(shown(row["key"]) + (" (log scale)" if wants_log(xs) else ""))
    where = f"{place[0]}/{place[1]}: " if place != (None, None) else ""
    ax.set_title(f"{where}Spearman ρ = {row['spearman_rho']:.2f}  (n = {row['n']})", fontsize=10)
    ax.grid(True, alpha=0.3)


@literal_text
def plot_correlation(series: Sequence[Series], path: Path, rows: Sequence[dict[str, Any]],
                     values: Callable[[Series, str], float], robust: Callable[[Series], float],
                     top: int = 4, group: Callable[[Series], Any] | None = None) -> Path | None:
    """Scatter of the summary keys with the strongest finite Spearman |ρ| against
    leaderboard robust accuracy (``rows`` as in correlation.csv, strongest first within
    each (dataset, threat model) group): the ``top`` keys of a single group, 2 keys per
    group (one row of panels each) when there are several; ``group(series)`` gives a
    model's (dataset, threat model), and a panel shows only its group's models."""
    best = _correlation_panels(rows, top)
    if not best:
        return None
    per_group: dict[tuple, int] = {}
    for r in best:
        per_group[(r.get("dataset"), r.get("threat_model"))] = per_group.get((r.get("dataset"), r.get("threat_model")), 0) + 1
    several = len(per_group) > 1
    ncols = max(per_group.values()) if several else min(len(best), 2)
    nrows = len(per_group) if several else math.ceil(len(best) / ncols)
    fig, axes = _figure(nrows, ncols, width=max(4.4 * ncols, 6.0), height=3.6 * nrows + 0.6)
    slots = _panel_slots(best, ncols) if several else list(range(len(best)))
    handles, labels = [], []
    for slot, row in zip(slots, best):
        _scatter_key(axes.flat[slot], series, row, values, robust, group, handles, labels)
    for i, ax in enumerate(axes.flat):
        ax.set_visible(i in slots)
    for ax in axes[:, 0]:
        ax.set_ylabel("leaderboard robust accuracy")
    fig.suptitle("Summary keys most rank-correlated with" + (" " if ncols > 1 else "\n")
                 + "leaderboard robust accuracy" + (", per dataset / threat model" if several else ""))
    return _save(fig, path, handles, labels)


def _panel_slots(best: Sequence[dict[str, Any]], ncols: int) -> list[int]:
    """Panel index of each row: one row of panels per (dataset, threat model) group."""
    slots, groups = [], []
    for r in best:
        g = (r.get("dataset"), r.get("threat_model"))
        if g not in groups:
            groups.append(g)
        slots.append(groups.index(g) * ncols + sum(1 for s, b in zip(slots, best)
                                                   if (b.get("dataset"), b.get("threat_model")) == g))
    return slots


#: figure file name -> drawing function (each returns None when its data are absent)
FIGURES: dict[str, Callable[[Sequence[Series], Path], Path | None]] = {
    "spectrum_layers.png": plot_spectrum_layers,
    "spectrum_distribution.png": plot_spectrum_distribution,
    "margin_hist.png": plot_margin_hist,
    "confidence_hist.png": plot_confidence_hist,
    "reliability.png": plot_reliability,
    "smoothness_layers.png": plot_smoothness_layers,
    "accuracy_robust.png": plot_accuracy_robust,
}

CAPTIONS = {
    "spectrum_layers.png": "Per-layer statistics of each layer's singular values (spectrum probe), input to output.",
    "spectrum_distribution.png": "Distribution of each layer's singular values: σ_min–σ_max range, 5–95% and "
                                 "25–75% bands and the median (from the spectrum probe's per-layer quantiles "
                                 "or histograms; mean ± std when neither is reported).",
    "margin_hist.png": "Margin distributions (margin probe), as the fraction of samples per bin; values beyond "
                       "the histogram range are counted in the end bins.",
    "confidence_hist.png": "Distribution of the confidence max_j p_j and the predictive entropy (confidence probe).",
    "reliability.png": "Reliability diagram (confidence probe): accuracy vs mean confidence per equal-width "
                       "confidence bin; below, the fraction of samples per bin.",
    "smoothness_layers.png": "Per-layer smoothness (smoothness probe): feature change per unit input change "
                             "along random and worst-case directions, and their ratio (anisotropy), with 95% "
                             "bootstrap bands where reported; the last point of each line is the logits.",
    "accuracy_robust.png": "Clean accuracy vs robust accuracy (robust_accuracy probe); hollow markers are the "
                           "RobustBench leaderboard's numbers for zoo models.",
    "correlation.png": "Summary keys with the strongest Spearman rank correlation with the leaderboard's "
                       "robust accuracy.",
}
