"""The comparison's headline figure: the paper's four quantities in small multiples.

``headline.png`` (drawn by :func:`plot_headline`, first on the comparison page) puts
side by side what Wen, Li & Jia (ICML 2020) claim adversarial training does, one
panel per claim, every model in its colour of the other figures:

- clean and robust accuracy against ε (claim 4; robust accuracy from the
  ``robust_accuracy`` probe) — x is ε when every model's ε is known, else the models in
  the comparison's order;
- the distribution of the logit margin ``z_y − max_{j≠y} z_j`` (claim 2, ``margin``);
- the distribution of the confidence ``max_j p_j`` (claim 3, ``confidence``);
- the standard deviation of each layer's singular values against depth (claim 1, the
  paper's statistic, ``spectrum``).

A panel whose probe no report has is left out; fewer than :data:`MIN_PANELS` panels:
no figure (None) — one panel alone would repeat another figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .plots import (Series, _depth_axis, _figure, _layer_rows, draw_hists, _log_axis, _log_ok, _num,
                    _save, clean_accuracy, literal_text, robust_accuracy, shown)
from .zoo import format_eps

NAME = "headline.png"
#: the headline figure is drawn when at least this many of its panels have data
MIN_PANELS = 2
CAPTION = ("The paper's claims at a glance: clean and robust accuracy vs ε (claim 4), the logit-margin and "
           "confidence distributions (claims 2 and 3), and the per-layer standard deviation of the singular "
           "values (claim 1); one colour per model, as in every figure.")


def _eps_axis(ax, series: Sequence[Series], eps: Mapping[str, float | None]) -> list[float]:
    """x positions of the models: their ε when all are known (ticks in the eps notation
    of the page, e.g. 8/255), else 0..n-1 labelled with the model names."""
    values = [eps.get(s.label) for s in series]
    if all(v is not None and math.isfinite(v) for v in values) and len(set(values)) == len(values):
        xs = [float(v) for v in values]
        ax.set_xticks(xs)
        ax.set_xticklabels([format_eps(v) for v in xs], fontsize=8)
        ax.set_xlabel("training ε")
        return xs
    xs = [float(i) for i in range(len(series))]
    ax.set_xticks(xs)
    ax.set_xticklabels([shown(s.label, 18) for s in series], rotation=30, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_xlabel("model (comparison order)")
    return xs


def _accuracy_panel(ax, series: Sequence[Series], eps: Mapping[str, float | None]) -> bool:
    clean = [clean_accuracy(s.report) for s in series]
    robust = [robust_accuracy(s.report) for s in series]
    if not any(math.isfinite(v) for v in clean + robust):
        return False
    xs = _eps_axis(ax, series, eps)
    for values, style, name in ((clean, "-", "clean"), (robust, "--", "robust")):
        pts = [(x, v) for x, v in zip(xs, values) if math.isfinite(v)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.35", linestyle=style, linewidth=1.2, label=name,
                    zorder=1)
        for s, x, v in zip(series, xs, values):
            if math.isfinite(v):
                ax.scatter([x], [v], color=s.colour, marker=s.marker, s=42, zorder=3, edgecolors="black",
                           linewidths=0.4, facecolors=s.colour if name == "clean" else "white")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="best", frameon=False, title="solid: clean, dashed: robust", title_fontsize=7)
    ax.set_title("4. accuracy vs ε", fontsize=10)
    return True


def _distribution_panel(ax, series: Sequence[Series], probe: str, key: str, xlabel: str, title: str,
                        zero_line: bool = False) -> bool:
    if not draw_hists(ax, series, probe, key, zero_line, fill=False, linewidth=1.5):
        return False
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples")
    ax.set_title(title, fontsize=10)
    return True


def _sigma_std_panel(ax, series: Sequence[Series]) -> bool:
    rows = {s.label: [r for r in _layer_rows(s.report, "spectrum") if math.isfinite(_num(r.get("std")))]
            for s in series}
    drawn = [s for s in series if rows[s.label]]
    if not drawn:
        return False
    values = []
    for s in drawn:
        ys = [_num(r.get("std")) for r in rows[s.label]]
        values += ys
        ax.plot(range(1, len(ys) + 1), ys, color=s.colour, marker=s.marker, markersize=3.5, linewidth=1.4,
                markevery=max(1, len(ys) // 12))
    if _log_ok(values):
        _log_axis(ax, values)
    _depth_axis(ax, [[str(r.get("name")) for r in rows[s.label]] for s in drawn], "layer")
    ax.set_ylabel("std of singular values")
    ax.set_title("1. spread of each layer's spectrum", fontsize=10)
    return True


@literal_text
def plot_headline(series: Sequence[Series], path: Any, eps: Mapping[str, float | None] | None = None) -> Path | None:
    """The four-panel headline figure (see the module docstring); ``eps``: each model's
    ε by label (None: unknown). None, writing nothing, when fewer than
    :data:`MIN_PANELS` panels have data."""
    eps = eps or {}
    fig, axes = _figure(1, 4, width=14.0, height=3.7)
    panels = [
        lambda ax: _accuracy_panel(ax, series, eps),
        lambda ax: _distribution_panel(ax, series, "margin", "logit_margin", "logit margin  z_y − max_{j≠y} z_j",
                                       "2. distance to the decision boundary", zero_line=True),
        lambda ax: _distribution_panel(ax, series, "confidence", "max_prob", "confidence  max_j p_j",
                                       "3. confidence"),
        lambda ax: _sigma_std_panel(ax, series),
    ]
    drawn = 0
    for ax, draw in zip(axes.flat, panels):
        if draw(ax):
            ax.grid(True, alpha=0.3)
            drawn += 1
        else:
            ax.set_visible(False)
    if drawn < MIN_PANELS:
        return None
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=s.colour, marker=s.marker, linestyle="-", linewidth=1.5) for s in series]
    fig.suptitle("What adversarial training did: the paper's four claims")
    return _save(fig, path, handles, [s.label for s in series])
