"""The comparison page: ``index.html`` of :func:`armetrics.comparison.compare`.

:func:`render_html` turns the ordered entries, the summary table and the figures of a
comparison into one self-contained page (inline CSS, no JS, figures linked by relative
file name). Every value taken from a report is HTML-escaped here; the page is built from
sections, findings first: header and notes, the verdicts on the paper's claims (when
judged), the headline figure, the other figures, models, probe options, the summary
table (folded), the correlation; each section a list of HTML lines.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .zoo import format_eps
from .comparison import FIXED_COLUMNS, MIN_MODELS_FOR_CORRELATION, Entry  # comparison imports this module lazily

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.2em auto;max-width:1400px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.k,th.k{text-align:left}tr.probe th{text-align:left;background:#e9eef5}
.scroll{overflow-x:auto}.note{background:#fff6dd;border-left:4px solid #e0b000;padding:0.4em 0.8em;margin:0.5em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:0.9em;color:#444}
.swatch{display:inline-block;width:0.9em;height:0.9em;border-radius:2px;margin-right:0.4em;vertical-align:-0.1em}
code{font-size:0.9em}
tr.check td{color:#555;font-size:0.95em}tr.check td.claim{padding-left:1.6em}
table.verdicts{font-size:0.8em;line-height:1.25}table.verdicts td{padding:2px 6px}
td.wrap{white-space:normal;min-width:10em;max-width:34em}td.claim{max-width:24em}
h2.findings{margin-top:0.8em}figure.headline{margin:0.6em 0}figure.headline img{max-width:100%}
.v{font-weight:600;padding:1px 6px;border-radius:3px}.v-reproduced{background:#d8f0d8}.v-partly{background:#fbeec0}
.v-not{background:#f7d4d4}.v-inconclusive{background:#e6e6e6}
details{margin:1em 0}summary{cursor:pointer;font-weight:600}
"""

esc = html.escape


def _fmt(v: Any) -> str:
    """A table cell of the page, HTML-escaped."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.3e}"
    return html.escape(str(v))



def _hex_colours(n: int) -> list[str]:
    """``#rrggbb`` of the model colours the figures use (one per model, in order)."""
    from .plots import colours

    return ["#%02x%02x%02x" % tuple(int(255 * c) for c in col[:3]) for col in colours(n)]


def _swatch(hx: str) -> str:
    return f"<span class=\"swatch\" style=\"background:{hx}\"></span>"


# --------------------------------------------------------------------------- sections
def _head(n_models: int, has_correlation: bool, notes: Sequence[str]) -> list[str]:
    """The document start, title, the line about how the page was made, and the notes."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>armetrics comparison</title><style>{CSS}</style></head><body>",
             f"<h1>armetrics comparison of {n_models} model{'s' if n_models != 1 else ''}</h1>",
             f"<p>Written by armetrics {esc(__version__)} on {esc(when)}. Models are ordered by ε, then robust "
             f"accuracy; the same colour marks a model in every figure. Numbers: <a href=\"summary.csv\">summary.csv</a>"
             + (", <a href=\"correlation.csv\">correlation.csv</a>" if has_correlation else "") + ".</p>"]
    parts += [f"<p class=\"note\">{esc(note)}</p>" for note in notes]
    return parts


def _models_table(entries: Sequence[Entry], rows: Sequence[dict[str, Any]], hexes: Sequence[str]) -> list[str]:
    """One row per model: label (with its colour), source, sha256, ε, data selection, note."""
    parts = ["<h2>Models</h2><div class=\"scroll\"><table><tr><th class=\"k\">model</th><th class=\"k\">source</th>"
             "<th>sha256</th><th>ε</th><th class=\"k\">ε from</th><th class=\"k\">data</th><th>n</th><th>seed</th>"
             "<th class=\"k\">note</th></tr>"]
    for e, row, hx in zip(entries, rows, hexes):
        parts.append(
            f"<tr><td class=\"k\">{_swatch(hx)}{esc(e.label)}</td>"
            f"<td class=\"k\"><code>{esc(str(row['source']))}</code></td><td><code>{esc(str(row['sha256'] or '–'))}</code></td>"
            f"<td>{esc(format_eps(e.eps))}</td><td class=\"k\">{esc(e.eps_from or '–')}</td>"
            f"<td class=\"k\">{esc(str(row['data_source'] or '–'))}</td><td>{_fmt(row['data_n'])}</td>"
            f"<td>{_fmt(row['data_seed'])}</td><td class=\"k\">{esc(e.data_note)}</td></tr>")
    parts.append("</table></div>")
    return parts


def _summary_table(entries: Sequence[Entry], header: Sequence[str], rows: Sequence[dict[str, Any]],
                   hexes: Sequence[str]) -> list[str]:
    """One row per summary key (grouped under its probe), one column per model: wide
    tables read badly the other way."""
    parts = ["<details><summary>Summary: every summary key of every model</summary>"
             "<div class=\"scroll\"><table><tr><th class=\"k\">key</th>"
             + "".join(f"<th>{_swatch(hx)}{esc(e.label)}</th>" for e, hx in zip(entries, hexes)) + "</tr>"]
    fixed = set(FIXED_COLUMNS)
    current = None
    for col in header:
        if col in fixed:
            continue
        probe, _, key = col.partition(".")
        if probe != current:
            current = probe
            parts.append(f"<tr class=\"probe\"><th colspan=\"{len(entries) + 1}\">{esc(probe)}</th></tr>")
        parts.append(f"<tr><td class=\"k\">{esc(key)}</td>" + "".join(f"<td>{_fmt(r.get(col))}</td>" for r in rows)
                     + "</tr>")
    parts.append("</table></div></details>")
    return parts


def _options_table(entries: Sequence[Entry]) -> list[str]:
    """Each probe's options (the same in every report that ran it); nothing without probes."""
    configs: dict[str, dict] = {}
    for e in entries:
        for p in e.report.probes:
            configs.setdefault(p, e.report.config(p))
    if not configs:
        return []
    parts = ["<h2>Probe options</h2><p>Every report that ran a probe ran it with these options.</p>"
             "<table><tr><th class=\"k\">probe</th><th class=\"k\">options</th></tr>"]
    for p, cfg in configs.items():
        text = ", ".join(f"{k}={v!r}" for k, v in cfg.items()) or "(defaults, none)"
        parts.append(f"<tr><td class=\"k\">{esc(p)}</td><td class=\"k\"><code>{esc(text)}</code></td></tr>")
    parts.append("</table>")
    return parts


def _figure(name: str, caption: str, kind: str = "") -> str:
    cls = f" class=\"{kind}\"" if kind else ""
    return (f"<figure{cls}><img src=\"{esc(name)}\" alt=\"{esc(caption or name)}\">"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _headline(figures: dict[str, Path]) -> list[str]:
    """The headline figure (the paper's four quantities side by side), when drawn."""
    from .headline import CAPTION, NAME

    return [_figure(NAME, CAPTION, "headline")] if NAME in figures else []


def _figures(figures: dict[str, Path]) -> list[str]:
    """Every other figure with its caption, or a line saying why there is none."""
    from .headline import NAME
    from .plots import CAPTIONS

    if not figures:
        return ["<p>No figures: none of the reports has a probe with something to draw "
                "(spectrum, margin, confidence, smoothness, robust_accuracy).</p>"]
    rest = [n for n in figures if n != NAME]
    return ["<h2>Figures</h2>", *(_figure(n, CAPTIONS.get(n, "")) for n in rest)] if rest else []


def _verdict_badge(verdict: str) -> str:
    kind = {"reproduced": "reproduced", "partly": "partly", "not reproduced": "not"}.get(verdict, "inconclusive")
    return f"<span class=\"v v-{kind}\">{esc(verdict)}</span>"


def _verdicts(result: Any) -> list[str]:
    """The verdict table on the paper's claims: claim, statistic, reference and most
    robust value, difference with its 95% interval, verdict; robustness checks indented
    under their claim (their reasoning: :func:`_verdict_notes`)."""
    if result is None:
        return []
    from ._claim_text import diff_cell, num

    models = result.models
    ref, top = (esc(models[0]["label"]), esc(models[-1]["label"])) if models else ("reference", "robust")
    parts = ["<h2>Does adversarial training regularize as Wen, Li &amp; Jia (2020) claim?</h2>",
             f"<p>Reference <b>{ref}</b> against the most robust model <b>{top}</b> on the same images; "
             "differences are robust − reference with paired 95% bootstrap intervals over the images. "
             "Rules and what a verdict means: <code>docs/claims.md</code>; all numbers: "
             "<a href=\"claims.json\">claims.json</a>.</p>",
             "<div class=\"scroll\"><table class=\"verdicts\"><tr><th class=\"k\">claim</th><th class=\"k\">statistic</th>"
             f"<th>{ref}</th><th>{top}</th><th>difference [95% CI]</th><th class=\"k\">verdict</th></tr>"]
    for v in result.verdicts:
        name = f"{v.claim}. {v.title}" if "." not in v.claim else v.claim + (" (check)" if v.check else "")
        layers = f" ({sum(r['claimed'] for r in v.layers)}/{len(v.layers)} layers)" if v.layers else ""
        row = '<tr class="check">' if v.check else "<tr>"
        parts.append(f"{row}<td class=\"k claim wrap\">{esc(name)}</td>"
                     f"<td class=\"k wrap\">{esc(v.statistic)}</td><td>{esc(num(v.reference))}</td>"
                     f"<td>{esc(num(v.robust))}</td><td>{esc(diff_cell(v))}</td>"
                     f"<td class=\"k\">{_verdict_badge(v.verdict)}{esc(layers)}</td></tr>")
    parts.append("</table></div>")
    return parts


def _verdict_notes(result: Any) -> list[str]:
    """Below the headline figure: claim 1's reasoning (the paper's scale statistics vs
    the scale-free checks) and, folded, how each verdict came about."""
    if result is None:
        return []
    parts = []
    one = next((v for v in result.verdicts if v.claim == "1"), None)
    if one is not None and one.note:
        parts.append(f"<p><b>Claim 1:</b> {esc(one.note)}</p>")
    notes = [f"<li><b>{esc(v.claim)}</b>: {esc(v.note)}</li>" for v in result.verdicts if v.note and v.claim != "1"]
    notes += [f"<li>{esc(n)}</li>" for n in result.notes]
    if notes:
        parts += ["<details><summary>How each verdict came about</summary><ul>", *notes, "</ul></details>"]
    return parts


def _correlation_table(corr_rows: Sequence[dict[str, Any]] | None) -> list[str]:
    """Spearman ρ of each key with the leaderboard robust accuracy, one table per
    (dataset, threat model) group with its size (only with a correlation)."""
    if corr_rows is None:
        return []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in corr_rows:
        groups.setdefault((r.get("dataset"), r.get("threat_model")), []).append(r)
    parts = ["<h2>Rank correlation with leaderboard robust accuracy</h2><p>Spearman ρ between each summary "
             "key and the RobustBench leaderboard's robust accuracy over the models that have both, computed "
             "separately for each (dataset, threat model) group: robust accuracies of different groups are not "
             "comparable, so they are never pooled. Undefined (–) for fewer than "
             f"{MIN_MODELS_FOR_CORRELATION} models or constant values.</p>"]
    if not groups:
        parts.append("<p>No model of this comparison has a leaderboard robust accuracy.</p>")
    for (dataset, threat), rows in groups.items():
        size = rows[0].get("models", max(r["n"] for r in rows))
        parts.append(f"<h3>{esc(str(dataset))} / {esc(str(threat))}: {size} model{'s' if size != 1 else ''}</h3>"
                     "<div class=\"scroll\"><table><tr><th class=\"k\">key</th><th>n</th><th>Spearman ρ</th>"
                     "<th>p-value</th><th class=\"k\">note</th></tr>")
        for r in rows:
            parts.append(f"<tr><td class=\"k\">{esc(r['key'])}</td><td>{_fmt(r['n'])}</td>"
                         f"<td>{_fmt(r['spearman_rho'])}</td><td>{_fmt(r['p_value'])}</td>"
                         f"<td class=\"k\">{esc(r['note'])}</td></tr>")
        parts.append("</table></div>")
    return parts


# --------------------------------------------------------------------------- page
def render_html(entries: Sequence[Entry], header: Sequence[str], rows: Sequence[dict[str, Any]],
                figures: dict[str, Path], corr_rows: Sequence[dict[str, Any]] | None, notes: Sequence[str],
                claims: Any = None) -> str:
    """The self-contained comparison page (figures linked by relative file name), findings
    first: verdicts on the paper's claims (``claims``: a ClaimsResult, or None), the
    headline figure, the other figures, then models, options, the folded summary."""
    hexes = _hex_colours(len(entries))
    parts = [*_head(len(entries), corr_rows is not None, notes),
             *_verdicts(claims),
             *_headline(figures),
             *_verdict_notes(claims),
             *_figures(figures),
             *_models_table(entries, rows, hexes),
             *_options_table(entries),
             *_summary_table(entries, header, rows, hexes),
             *_correlation_table(corr_rows),
             "</body></html>\n"]
    return "\n".join(parts)
