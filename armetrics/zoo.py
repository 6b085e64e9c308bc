"""The RobustBench zoo and its leaderboard, offline.

Two sources, joined:

- the models the installed ``robustbench`` package can build (its ``model_zoo``;
  importing it takes ~15 s), through :mod:`armetrics._robustbench`;
- RobustBench's leaderboard records (``model_info/`` at commit 78fcc9e, MIT licence)
  shipped as ``armetrics/_data/robustbench-model-info.json`` — read without importing
  robustbench, so :func:`lookup` and leaderboard correlation are fast. One record per
  (dataset, threat model, model): a file that repeats a key is refused
  (:func:`index_leaderboard`); it is built by :mod:`armetrics._leaderboard_build`.

Leaderboard accuracies are published as percent strings (``"59.53"``); here they are
fractions in [0, 1], like every accuracy in an armetrics report. The *robust accuracy*
of a record is ``external`` when present (an evaluation stronger than AutoAttack, e.g.
for models that fool it), else ``autoattack_acc``, else (threat model
``corruptions``) ``corruptions_acc``; ``robust_metric`` names which one was used.
``eps`` is the radius of the threat model as a float (``"8/255"`` -> 0.0314); a
decimal within 0.1/255 of a multiple of 1/255 is read as that multiple (some records
publish 8/255 as ``"0.031"``).
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
import warnings
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError

LEADERBOARD_FILE = "robustbench-model-info.json"
#: leaderboard fields holding robust accuracy, in order of preference
ROBUST_FIELDS = ("external", "autoattack_acc", "corruptions_acc")


def parse_percent(text: Any) -> float | None:
    """``"59.53"`` (percent) -> 0.5953; None for missing or unparsable values."""
    if text is None or isinstance(text, bool):
        return None
    try:
        return float(str(text).strip().rstrip("%")) / 100.0
    except ValueError:
        return None


def parse_eps(value: Any) -> float | None:
    """``"8/255"`` -> 8/255, ``"0.5"`` -> 0.5, a number -> itself; None if absent/unparsable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        return None


def format_eps(eps: float | None) -> str:
    """A radius in [0, 1] pixel units as text: ``"8/255"`` for a positive multiple of
    1/255 (to 1e-6 of a 255th), else ``f"{eps:g}"`` (``"0"``, ``"0.5"``); ``"–"`` for
    None or a non-finite value."""
    if eps is None or not math.isfinite(eps):
        return "–"
    k = eps * 255
    if math.isfinite(k) and abs(k - round(k)) < 1e-6 and round(k) >= 1:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _snap_255(eps: float | None) -> float | None:
    """``0.031`` -> 8/255: a rounded multiple of 1/255 (within 0.1/255) becomes exact."""
    if eps is None:
        return None
    k = round(eps * 255)
    return k / 255 if k >= 1 and abs(eps * 255 - k) < 0.1 else eps


def _text(value: Any) -> str | None:
    """Leaderboard text without its HTML markup (``"GitHub,<br>Sep 2019"`` -> ``"GitHub, Sep 2019"``)."""
    if value is None:
        return None
    text = html.unescape(re.sub(r"<[^>]*>", " ", str(value)))
    return re.sub(r"\s+", " ", text).replace(" ,", ",").strip() or None


def _record(raw: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard record with parsed numbers."""
    metric = next((f for f in ROBUST_FIELDS if parse_percent(raw.get(f)) is not None), None)
    return {
        "dataset": raw.get("dataset"),
        "threat_model": raw.get("threat_model"),
        "name": raw.get("model"),
        "architecture": _text(raw.get("architecture")),
        "venue": _text(raw.get("venue")),
        "eps": _snap_255(parse_eps(raw.get("eps"))),
        "eps_text": raw.get("eps"),
        "clean_accuracy": parse_percent(raw.get("clean_acc")),
        "autoattack_accuracy": parse_percent(raw.get("autoattack_acc")),
        "robust_accuracy": parse_percent(raw.get(metric)) if metric else None,
        "robust_metric": metric,
        "additional_data": raw.get("additional_data"),
        "unreliable": raw.get("unreliable"),
        "link": raw.get("link"),
    }


def duplicate_keys(raws: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    """The ``(dataset, threat_model, model)`` keys that more than one raw record has, in
    first-seen order."""
    seen: set = set()
    dups: list = []
    for raw in raws:
        key = (raw.get("dataset"), raw.get("threat_model"), raw.get("model"))
        if key in seen and key not in dups:
            dups.append(key)
        seen.add(key)
    return dups


def index_leaderboard(text: str, origin: str = LEADERBOARD_FILE) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Parsed records of a leaderboard file's text by ``(dataset, threat_model, name)``.
    DataError naming the key when two records share one (a wrong build: one of them
    belongs to another dataset, and keeping either would show wrong numbers)."""
    raws = json.loads(text)["models"]
    dups = duplicate_keys(raws)
    if dups:
        more = f" (and {len(dups) - 1} more)" if len(dups) > 1 else ""
        raise DataError(f"{origin}: the leaderboard key {'/'.join(map(str, dups[0]))} has more than one record{more}: "
                        f"rebuild the file with python -m armetrics._leaderboard_build (armetrics/_data/README.md)")
    out = {}
    for raw in raws:
        rec = _record(raw)
        out[(rec["dataset"], rec["threat_model"], rec["name"])] = rec
    return out


@functools.lru_cache(maxsize=1)
def _leaderboard() -> dict[tuple[str, str, str], dict[str, Any]]:
    """The shipped leaderboard, indexed (read once)."""
    text = resources.files("armetrics").joinpath("_data", LEADERBOARD_FILE).read_text(encoding="utf-8")
    return index_leaderboard(text)


def leaderboard(dataset: str | None = None, threat_model: str | None = None) -> list[dict[str, Any]]:
    """The shipped leaderboard records (copies), optionally of one dataset / threat model."""
    return [dict(r) for (ds, tm, _), r in _leaderboard().items()
            if (dataset is None or ds == dataset) and (threat_model is None or tm == threat_model)]


def lookup(source: str, dataset: str = "cifar10", threat_model: str = "Linf") -> dict[str, Any] | None:
    """The leaderboard record of a model source ``robustbench:DATASET/THREAT/NAME`` (or
    ``robustbench:NAME`` with the given defaults); None for other sources or models
    the leaderboard does not list."""
    if not isinstance(source, str) or not source.startswith("robustbench:"):
        return None
    from ._robustbench import parse_name  # does not import robustbench
    from .errors import LoadError

    try:
        key = parse_name(source, dataset, threat_model)
    except LoadError:
        return None
    rec = _leaderboard().get(key)
    return dict(rec) if rec is not None else None


def zoo(dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str | Path = "models") -> list[dict[str, Any]]:
    """The models of robustbench's zoo for ``dataset``/``threat_model`` (either may be
    ``all``: every dataset / threat model of its ``model_dicts``, in its order), left-joined
    with the leaderboard, sorted by name within each dataset and threat model.

    Each row: ``name``, ``source``, ``dataset``, ``threat_model``, ``architecture``,
    ``venue``, ``eps``, ``clean_accuracy``, ``robust_accuracy`` (fractions, None when the
    leaderboard has no record), ``robust_metric``, ``additional_data``, ``on_leaderboard``,
    ``preprocessing`` (RobustBench's, None for CIFAR), ``weights_present`` (every weight
    file robustbench would read is in ``model_dir``), ``weight_paths``, ``weight_sources``
    (where robustbench downloads each file from; None where it records none) and
    ``missing_weights`` (``{"path", "source"}`` of each file not in ``model_dir``).
    Imports robustbench (slow, offline); never downloads.
    """
    from . import _robustbench

    board = _leaderboard()
    rows = []
    with warnings.catch_warnings():  # robustbench's import-time deprecation chatter
        warnings.simplefilter("ignore")
        for ds, tm in _robustbench.zoo_pairs(dataset, threat_model):
            for name in _robustbench.zoo_names(ds, tm):
                rec = board.get((ds, tm, name))
                row = {"name": name, "source": f"robustbench:{ds}/{tm}/{name}", "dataset": ds, "threat_model": tm,
                       "on_leaderboard": rec is not None}
                for key in ("architecture", "venue", "eps", "clean_accuracy", "robust_accuracy", "robust_metric",
                            "additional_data"):
                    row[key] = rec.get(key) if rec else None
                row.update(_robustbench.entry_files(name, model_dir, ds, tm))
                rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`zoo` rows (accuracies in percent); ``dataset`` and
    ``threat`` columns first when the rows span more than one of them."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    def eps(v):
        if v is None:
            return "-"
        frac = Fraction(v).limit_denominator(255)
        return f"{frac.numerator}/255" if frac.denominator == 255 and abs(float(frac) - v) < 1e-9 else f"{v:g}"

    header = ("name", "architecture", "eps", "clean%", "robust%", "weights", "venue")
    body = [(r["name"], r["architecture"] or "-", eps(r["eps"]), pct(r["clean_accuracy"]), pct(r["robust_accuracy"]),
             "yes" if r["weights_present"] else "no", r["venue"] or "-") for r in rows]
    right = {2, 3, 4}
    if len({(r.get("dataset"), r.get("threat_model")) for r in rows}) > 1:  # --dataset/--threat-model all
        header = ("dataset", "threat", *header)
        body = [(r.get("dataset") or "-", r.get("threat_model") or "-", *line) for r, line in zip(rows, body)]
        right = {i + 2 for i in right}
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    lines = []
    for row in [header, *body]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def check_against(against: str | None) -> str | None:
    """Validate ``compare(..., against=)``: None or ``"leaderboard"``."""
    if against not in (None, "leaderboard"):
        raise ConfigError(f"unknown --against {against!r}: the only reference is 'leaderboard'")
    return against
