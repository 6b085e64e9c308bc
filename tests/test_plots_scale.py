"""Figures stay readable with many models (issue 17): every legend entry is inside the
PNG and clear of the plots and of the other entries, for 96 models; a scatter axis whose
values span orders of magnitude is logarithmic."""

from __future__ import annotations

import io
import math

import pytest

import armetrics as am
from armetrics import plots, zoo

N_MODELS = 96
#: figures with one legend entry per model, one of each layout (wide 2x2 panels, a row of
#: histograms, a tall narrow plot with longer labels, a square scatter); the others
#: (confidence_hist, smoothness_layers) are laid out by the same code.
#: spectrum_distribution has a fixed 4-entry band legend.
PER_MODEL = ["spectrum_layers.png", "margin_hist.png", "reliability.png", "accuracy_robust.png"]


def hist(lo: float, hi: float, shift: float) -> dict:
    edges = [lo + (hi - lo) * k / 10 for k in range(11)]
    return {"edges": edges, "counts": [1 + (k + int(shift)) % 5 for k in range(10)], "underflow": 0, "overflow": 0}


def synthetic_report(name: str, i: int) -> am.Report:
    """A report with what every figure draws (values vary with ``i``); no model is run."""
    layers = [{"name": n, "sigma_max": (1 + i / 10) * (k + 1), "sigma_min": 0.1, "cv": 0.2 + k / 10,
               "condition_number": 10.0 * (k + 1), "stable_rank": 2.0 + k,
               "q05": 0.2, "q25": 0.4, "q50": 0.6, "q75": 0.8, "q95": 1.0} for k, n in enumerate(("conv1", "conv2", "fc"))]
    smooth = [{"name": n, "ratio_random": 0.5 + k + i / 100, "ratio_worst": 2.0 + k + i / 50} for k, n in
              enumerate(("conv1", "conv2", "logits"))]
    bins = [{"lower": k / 5, "upper": (k + 1) / 5, "count": 10 + k, "accuracy": min(1.0, k / 5 + i / 500),
             "confidence": k / 5 + 0.1} for k in range(5)]
    probe = {"config": {}, "layers": [], "distributions": {}, "seconds": 0.0}
    return am.Report({
        "schema": "armetrics.report/1", "armetrics_version": "0", "created": "2025-01-01T00:00:00Z",
        "model": {"source": f"{name}.pt", "name": name, "sha256": f"{i:064x}"},
        "data": {"source": "cifar10-sample", "n": 100, "seed": 0, "num_classes": 10}, "environment": {},
        "probes": {
            "spectrum": {**probe, "summary": {"sigma_max_product": 10.0 ** (-2 + 6 * i / (N_MODELS - 1))},
                         "layers": layers},
            "margin": {**probe, "summary": {}, "distributions": {"logit_margin": hist(-5, 10, i)}},
            "confidence": {**probe, "summary": {"ece": 0.01 + i / 1000},
                           "distributions": {"max_prob": hist(0, 1, i)}, "details": {"reliability": bins}},
            "smoothness": {**probe, "summary": {}, "layers": smooth},
            "robust_accuracy": {**probe, "config": {"attack": "pgd", "norm": "Linf", "eps": 8 / 255},
                                "summary": {"robust_accuracy": 0.2 + i / 400, "accuracy": 0.6 + i / 400}},
        },
    })


@pytest.fixture(scope="module")
def many():
    """96 series named like RobustBench models ("<name> (Linf)": the longest labels compare makes)."""
    names = [f"{r['name']} (Linf)" for r in zoo.leaderboard("cifar10", "Linf")][:N_MODELS]
    assert len(names) == N_MODELS
    reports = [synthetic_report(n, i) for i, n in enumerate(names)]
    return plots.make_series(names, reports)


@pytest.fixture
def saved(monkeypatch):
    """Every figure ``plots._save`` writes, kept (after the PNG is written: laid out as saved)."""
    figures = []
    original = plots._save

    def keep(main, path, *args, **kwargs):
        out = original(main, path, *args, **kwargs)
        figures.append(main.figure)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def legend_problems(fig) -> list[str]:
    """What is wrong with a saved figure's legends: a text outside the figure, two
    texts that overlap, a legend over a visible plot. Empty when all is well."""
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    legends = list(fig.legends) + [leg for sub in fig.subfigs for leg in sub.legends]
    axes = [ax.get_window_extent(renderer) for sub in [fig, *fig.subfigs] for ax in sub.axes if ax.get_visible()]
    problems, boxes = [], []
    for leg in legends:
        for text in [leg.get_title(), *leg.get_texts()]:
            box = text.get_window_extent(renderer)
            if not text.get_text():
                continue
            if box.x0 < frame.x0 - 0.5 or box.y0 < frame.y0 - 0.5 or box.x1 > frame.x1 + 0.5 or box.y1 > frame.y1 + 0.5:
                problems.append(f"{text.get_text()!r} at {box.bounds} outside the figure {frame.bounds}")
            if any(box.overlaps(ax) for ax in axes):
                problems.append(f"{text.get_text()!r} over a plot")
            problems += [f"{text.get_text()!r} overlaps {other!r}" for other, b in boxes if box.overlaps(b)]
            boxes.append((text.get_text(), box))
    return problems


def legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [leg for sub in fig.subfigs for leg in sub.legends]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


@pytest.mark.parametrize("name", PER_MODEL)
def test_every_legend_entry_of_96_models_is_inside_the_figure(many, saved, name):
    buf = io.BytesIO()
    assert plots.FIGURES[name](many, buf) is not None
    (fig,) = saved
    texts = legend_texts(fig)
    assert sum(any(t.startswith(s.label) for t in texts) for s in many) == N_MODELS  # one entry per model
    assert legend_problems(fig) == []
    width, height = fig.get_size_inches()
    assert width <= plots.MAX_WIDTH + 0.5 and height < 40  # readable, not absurd


def test_few_models_keep_the_legend_on_the_right(many, saved):
    plots.plot_accuracy_robust(many[:3], io.BytesIO())
    (fig,) = saved
    (leg,) = [leg for sub in fig.subfigs for leg in sub.legends]
    assert leg.figure is fig.subfigs[1]  # the column right of the plots, not the one below
    assert legend_problems(fig) == []


def test_the_legend_check_catches_a_cut_off_legend(many):
    """The checker above fails on the old layout: a one-column legend taller than the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=plots.DPI)
    ax = fig.add_axes((0.1, 0.1, 0.5, 0.8))
    lines = [ax.plot([0, 1], [0, k])[0] for k in range(N_MODELS)]
    fig.legend(lines, [s.label for s in many], loc="upper right")
    FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png")
    problems = legend_problems(fig)
    assert any("outside the figure" in p for p in problems)


def correlation_axis(many, saved, values) -> str:
    rows = [{"key": "spectrum.sigma_max_product", "dataset": "cifar10", "threat_model": "Linf", "models": N_MODELS,
             "n": N_MODELS, "spearman_rho": 0.5, "p_value": 0.01, "note": ""}]
    plots.plot_correlation(many, io.BytesIO(), rows, values=lambda s, key: values[s.label],
                           robust=lambda s: 0.3, group=lambda s: ("cifar10", "Linf"))
    fig = saved[-1]
    (ax,) = [ax for sub in fig.subfigs for ax in sub.axes if ax.get_visible()]
    assert legend_problems(fig) == []
    return ax.get_xscale()


def test_correlation_axis_is_log_when_values_span_orders_of_magnitude(many, saved):
    spread = {s.label: 10.0 ** (-2 + 6 * i / (N_MODELS - 1)) for i, s in enumerate(many)}  # 1e-2 .. 1e4
    assert min(spread.values()) == pytest.approx(1e-2) and max(spread.values()) == pytest.approx(1e4)
    assert correlation_axis(many, saved, spread) == "log"
    few = many[:8]
    narrow = {s.label: 1.0 + 7 * i for i, s in enumerate(few)}  # 1 .. 50: linear
    assert correlation_axis(few, saved, narrow) == "linear"
    wide = {s.label: 10.0 ** (-2 + 6 * i / 7) for i, s in enumerate(few)}
    assert correlation_axis(few, saved, wide) == "log"
    assert correlation_axis(few, saved, dict(wide, **{few[0].label: -1.0})) == "linear"  # a value <= 0: never log


@pytest.mark.parametrize("values, log", [([1e-2, 1.0, 1e4], True), ([1.0, 100.0], False), ([1.0, 100.1], True),
                                         ([0.0, 1.0, 1e6], False), ([-1.0, 1e6], False), ([5.0], False),
                                         ([1.0, math.nan, 1e3], True), ([], False)])
def test_wants_log_rule(values, log):
    assert plots.wants_log(values) is log
