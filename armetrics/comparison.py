"""Many reports -> one table, figures and an HTML page (and, optionally, how each
summary key ranks models like the RobustBench leaderboard does).

``compare(reports, out)`` writes into ``out``:

- ``summary.csv``: one row per report — ``model`` (a unique label: the model's name;
  where names repeat, qualified by threat model ``Name (L2)``, else dataset and threat
  model ``Name (cifar100/Linf)``, else sha256 prefix ``Name [1a2b3c4d]``, else a counter
  ``Name #2``), ``source``,
  ``sha256`` (first 12 hex digits), ``eps``, ``eps_from``, ``data_source``, ``data_n``,
  ``data_seed``, ``data_note`` — then one column ``<probe>.<key>`` per summary key of
  every probe (the union over reports; blank where a report lacks it or the value is
  not finite). With ``against="leaderboard"`` also ``leaderboard.clean_accuracy`` and
  ``leaderboard.robust_accuracy`` (fractions);
- one PNG per figure whose probe some report has (see :mod:`armetrics.plots`), and
  ``headline.png``, the paper's four quantities side by side (:mod:`armetrics.headline`);
- ``claims.json``: the verdicts on the paper's claims when they are judged (a report with
  ε = 0, or ``reference=``; :mod:`armetrics.compare_claims`), which also lead the page;
- ``index.html``: the tables and figures (linked relatively: keep the folder together;
  no external CSS/JS, opens offline), rendered by :mod:`armetrics.html_page`;
- with ``against="leaderboard"``: ``correlation.csv`` and ``correlation.png``, one Spearman
  correlation per (dataset, threat model) group of leaderboard models, never pooled
  (robust accuracies under Linf, L2 or corruptions are not comparable); a note names the
  groups and their sizes;
- ``.armetrics-compare.json``: the manifest of what this comparison wrote (name and
  sha256 of each file).

Nothing in ``out`` that armetrics did not write is ever replaced or removed: every file is
first rendered in memory; a name about to be written that exists in ``out`` but is not
listed in the manifest with its current sha256 (a user's own file, or one changed since)
makes ``compare`` refuse, before writing anything, with one line naming it. Files of an
earlier comparison that this one does not write are removed only when the manifest lists
them with their current content. All files are written by one
:func:`armetrics.report.atomic_write` (temporary files, then renames; ``index.html``
last).

Every value taken from a report is escaped in ``index.html``; CSV cells that are strings
starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return are prefixed with
``'`` so that spreadsheets do not run them as formulas (numbers stay numbers).

Model order (rows, colours, legends): by ε when known, then by robust accuracy, then
input order. ε comes from the report's ``model.eps`` (a number or ``"8/255"``), else
from the leaderboard for ``robustbench:`` sources, else from the model name:
``eps8`` / ``eps_8`` / ``eps8_255`` mean 8/255, ``eps0.5`` means 0.5. Robust accuracy
is the ``robust_accuracy`` probe's, else the leaderboard's. Both ascending, so the
order runs from the least to the most robust model; models whose ε (robust accuracy)
is unknown come after those whose ε (robust accuracy) is known.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import __version__
from .errors import ConfigError, ReportError, one_line
from .report import Report, atomic_write, shown_path, to_jsonable
from .zoo import check_against, lookup, parse_eps

FIXED_COLUMNS = ("model", "source", "sha256", "eps", "eps_from", "data_source", "data_n", "data_seed", "data_note")
LEADERBOARD_COLUMNS = ("leaderboard.clean_accuracy", "leaderboard.robust_accuracy")
#: what the last comparison in a folder wrote: {"files": {name: sha256}}
MANIFEST = ".armetrics-compare.json"
#: CSV cells (strings) starting with one of these are prefixed with ' (no formula injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
MIN_MODELS_FOR_CORRELATION = 3


@dataclass
class Entry:
    """One report in a comparison."""

    report: Report
    origin: str  # file path, or "report #i" for an in-memory Report
    index: int
    label: str = ""
    eps: float | None = None
    eps_from: str = ""
    leaderboard: dict[str, Any] | None = None
    data_note: str = ""

    @property
    def robust_accuracy(self) -> float | None:
        v = (self.report.data["probes"].get("robust_accuracy") or {}).get("summary", {}).get("robust_accuracy")
        if _finite(v):
            return float(v)
        if self.leaderboard and _finite(self.leaderboard.get("robust_accuracy")):
            return float(self.leaderboard["robust_accuracy"])
        return None


@dataclass
class Comparison:
    """What :func:`compare` wrote."""

    out: Path
    models: list[str]
    summary_csv: Path
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)
    correlation_csv: Path | None = None
    notes: list[str] = field(default_factory=list)
    claims: Any = None  # the armetrics.claims.ClaimsResult shown first on the page (None: not evaluated)
    claims_json: Path | None = None


def _or_nan(v: Any) -> float:
    return float(v) if _finite(v) else math.nan


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- loading and checks
def _expand(items: Iterable[Report | str | Path]) -> list[tuple[Report, str]]:
    if isinstance(items, (str, Path, Report)):
        items = [items]
    if not isinstance(items, Iterable) or isinstance(items, (bytes, dict)):
        raise ReportError(f"reports must be a list of Report objects, report files or directories, got {type(items).__name__}")
    out: list[tuple[Report, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, Report):
            out.append((item, f"report #{i + 1} ({item.model.get('name')})"))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ReportError(f"reports[{i}] is a {type(item).__name__}, not a Report, a report file or a directory of reports")
        path = Path(item)
        if path.is_dir():
            files = sorted(f for f in path.glob("*.json") if not f.name.startswith("."))  # not the manifest
            if not files:
                raise ReportError(f"{path} is a directory without .json reports: pass report files")
            out += [(Report.load(f), str(f)) for f in files]
        else:
            out.append((Report.load(path), one_line(str(path))))
    return out


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (for error messages)."""
    text = one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_compatible(entries: Sequence[Entry]) -> None:
    """Raise ReportError when reports differ in schema, or in the config or method revision of a probe they share."""
    schemas = {e.report.data["schema"] for e in entries}
    if len(schemas) > 1:
        raise ReportError(f"reports have different schemas ({', '.join(sorted(schemas))}): "
                          f"re-run `armetrics analyze` for all of them with one armetrics version")
    first: dict[str, Entry] = {}
    for e in entries:
        for probe in e.report.probes:
            if probe not in first:
                first[probe] = e
                continue
            ra, rb = first[probe].report.revision(probe), e.report.revision(probe)
            if ra != rb:
                old = first[probe].origin if ra < rb else e.origin
                raise ReportError(
                    f"reports ran probe {one_line(probe)[:60]!r} with different method revisions ({ra} in "
                    f"{first[probe].origin} vs {rb} in {e.origin}): re-run `armetrics analyze` for {old} "
                    f"with this armetrics")
            # as JSON values: an in-memory report's tuple equals the list it is saved as
            a, b = to_jsonable(first[probe].report.config(probe)), to_jsonable(e.report.config(probe))
            diff = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
            if diff:
                k = one_line(diff[0])[:60]
                shown = ", ".join(f"{one_line(k)[:60]}={_short(a.get(k, '<unset>'))} in {first[probe].origin} vs "
                                  f"{_short(b.get(k, '<unset>'))} in {e.origin}" for k in diff[:3])
                more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
                name = one_line(probe)[:60]
                raise ReportError(
                    f"reports ran probe {name!r} with different options: {shown}{more}: re-run "
                    f"`armetrics analyze` with the same --set {name}.{k}=..., or compare them separately")


def _data_key(report: Report) -> tuple | None:
    d = report.data.get("data")
    if not d:
        return None
    return (d.get("source"), d.get("n"), d.get("seed"))


def _note_data(entries: Sequence[Entry]) -> str | None:
    """Mark entries whose data selection (source, n, seed) differs from the most common
    one (every entry when no selection is the most common); return a page note."""
    keys = [_data_key(e.report) for e in entries]
    present = [k for k in keys if k is not None]
    if len(set(present)) <= 1:
        return None
    counts = {k: present.count(k) for k in set(present)}
    top = max(counts.values())
    common = next(k for k in present if counts[k] == top) if list(counts.values()).count(top) == 1 else None
    for e, k in zip(entries, keys):
        if k is None or k == common:
            continue
        e.data_note = one_line(f"different data: source={k[0]} n={k[1]} seed={k[2]}")
        if common is not None:
            e.data_note += one_line(f" (most reports: source={common[0]} n={common[1]} seed={common[2]})")
    return ("The reports were computed on different data selections (source, n or seed): their data-"
            "dependent numbers are not measured on the same images; rows marked in data_note differ.")


# --------------------------------------------------------------------------- eps and order
_EPS_INT = re.compile(r"eps[_-]?(\d+)(?:[_/-]255)?(?![\d.])", re.IGNORECASE)
_EPS_DEC = re.compile(r"eps[_-]?(\d*\.\d+)", re.IGNORECASE)


def eps_from_name(name: str) -> float | None:
    """``small_cnn_eps8`` -> 8/255 (an integer after ``eps`` counts 255ths), ``eps0.5`` -> 0.5."""
    m = _EPS_DEC.search(name)
    if m:
        eps = float(m.group(1))
        return eps if math.isfinite(eps) else None
    m = _EPS_INT.search(name)
    if m and len(m.group(1)) <= 12:  # int() of thousands of digits is refused (and no eps)
        return int(m.group(1)) / 255.0
    return None


def _resolve_eps(e: Entry) -> None:
    model = e.report.model
    eps = parse_eps(model.get("eps"))
    if eps is not None and math.isfinite(eps):
        e.eps, e.eps_from = eps, "report"
        return
    rec = lookup(str(model.get("source", "")))
    if rec and rec.get("eps") is not None:
        e.eps, e.eps_from = rec["eps"], "leaderboard"
        return
    for text in (model.get("name"), Path(str(model.get("source", ""))).stem):
        eps = eps_from_name(str(text or ""))
        if eps is not None:
            e.eps, e.eps_from = eps, "name"
            return


def order(entries: Sequence[Entry]) -> list[Entry]:
    """ε ascending (known first), then robust accuracy ascending (known first), then input
    order: from the least to the most robust model."""
    def key(e: Entry):
        ra = e.robust_accuracy
        return (e.eps is None, e.eps if e.eps is not None else 0.0, ra is None, ra or 0.0, e.index)

    return sorted(entries, key=key)


def dataset_and_threat(e: Entry) -> tuple[str | None, str | None]:
    """(dataset, threat model) of an entry: its leaderboard record's, else those named in a
    ``robustbench:DATASET/THREAT/NAME`` source (control characters escaped: they end up
    in labels); None where unknown."""
    if e.leaderboard:
        return e.leaderboard.get("dataset"), e.leaderboard.get("threat_model")
    source = str(e.report.model.get("source") or "")
    if source.startswith("robustbench:"):
        from ._robustbench import parse_name  # does not import robustbench
        from .errors import LoadError

        try:
            ds, tm, _ = parse_name(source)
            return one_line(ds)[:40], one_line(tm)[:40]
        except LoadError:
            pass
    return None, None


def _refine(labels: list[str], new: Sequence[str | None]) -> list[str]:
    """Replace each group of equal labels by ``new`` where ``new`` is known for the whole
    group and not the same for all of it (a qualifier that tells them apart, at least in part)."""
    out = list(labels)
    for label in {x for x in labels if labels.count(x) > 1}:
        group = [i for i, x in enumerate(labels) if x == label]
        cand = [new[i] for i in group]
        if None not in cand and len(set(cand)) > 1:
            for i, c in zip(group, cand):
                out[i] = c
    return out


def _counters(labels: list[str]) -> list[str]:
    """Equal labels numbered ``#1``, ``#2``, ... (the last resort)."""
    out = list(labels)
    for label in {x for x in labels if labels.count(x) > 1}:
        for k, i in enumerate([i for i, x in enumerate(labels) if x == label], 1):
            out[i] = f"{label} #{k}"
    return out


def _disambiguate(name: str, dup: Sequence[Entry]) -> list[str]:
    """Labels for entries of one name: by threat model (``Name (L2)``), then dataset and
    threat model (``Name (cifar100/Linf)``), then the checkpoint's sha256 prefix
    (``Name [1a2b3c4d]``), then a counter, each only for those the previous left equal."""
    places = [dataset_and_threat(e) for e in dup]
    labels = [name] * len(dup)
    labels = _refine(labels, [f"{name} ({tm})" if tm else None for _, tm in places])
    labels = _refine(labels, [f"{name} ({ds}/{tm})" if ds and tm else None for ds, tm in places])
    shas = [one_line(str(e.report.model.get("sha256") or "")[:8]) for e in dup]
    labels = _refine(labels, [f"{lab} [{sha}]" if sha else None for lab, sha in zip(labels, shas)])
    return _counters(labels)


def _labels(entries: Sequence[Entry]) -> None:
    """A unique label per entry: the model name, qualified where names repeat (:func:`_disambiguate`)."""
    names = [one_line(str(e.report.model.get("name") or "model")) for e in entries]  # no terminal escapes
    labels = list(names)
    for name in {n for n in names if names.count(n) > 1}:
        idx = [i for i, n in enumerate(names) if n == name]
        for i, label in zip(idx, _disambiguate(name, [entries[i] for i in idx])):
            labels[i] = label
    for e, label in zip(entries, _counters(labels)):  # a name that equals another's qualified label
        e.label = label


# --------------------------------------------------------------------------- table
def summary_columns(entries: Sequence[Entry]) -> list[str]:
    """``<probe>.<key>`` for every summary key, in first-seen order."""
    cols: list[str] = []
    seen = set()
    for e in entries:
        for probe in e.report.probes:
            for key in e.report.summary(probe):
                col = f"{probe}.{key}"
                if col not in seen:
                    seen.add(col)
                    cols.append(col)
    return cols


def value(entry: Entry, column: str) -> float | int | None:
    """The finite summary value ``<probe>.<key>`` of an entry (ints stay ints), else None."""
    probe, _, key = column.partition(".")
    if column.startswith("leaderboard."):
        v = (entry.leaderboard or {}).get(key)
    else:
        v = (entry.report.data["probes"].get(probe) or {}).get("summary", {}).get(key)
    return v if _finite(v) else None


def _cell(v: Any) -> str:
    """A CSV cell: numbers as numbers (full precision; a negative number stays a number),
    None and non-finite as blank, strings neutralised against formula injection."""
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, (int, bool)):
        return str(v)
    return csv_text(str(v))


def csv_text(text: str) -> str:
    """``text`` with a ``'`` in front when a spreadsheet would read it as a formula (it
    starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return); carriage returns
    become newlines (which the CSV writer quotes: a bare CR would end the row)."""
    if text.startswith(FORMULA_START):
        text = "'" + text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _rows(entries: Sequence[Entry], columns: Sequence[str], against: str | None) -> list[dict[str, Any]]:
    rows = []
    for e in entries:
        m, d = e.report.model, e.report.data.get("data") or {}
        row: dict[str, Any] = {
            "model": e.label, "source": shown_path(m.get("source")), "sha256": str(m.get("sha256") or "")[:12] or None,
            "eps": e.eps, "eps_from": e.eps_from or None, "data_source": shown_path(d.get("source")),
            "data_n": d.get("n"),
            "data_seed": d.get("seed"), "data_note": e.data_note or None,
        }
        if against:
            for col in LEADERBOARD_COLUMNS:
                row[col] = value(e, col)
        for col in columns:
            row[col] = value(e, col)
        rows.append(row)
    return rows


def _csv(header: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([csv_text(str(h)) for h in header])
    for row in rows:
        w.writerow([_cell(row.get(h)) for h in header])
    return buf.getvalue()


# --------------------------------------------------------------------------- the output folder
def _sha256_of(path: Path) -> str | None:
    """sha256 of a regular file (symlinks followed), None for anything else or unreadable."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except (OSError, ValueError):
        return None


def read_manifest(out: Path) -> dict[str, str] | None:
    """``{file name: sha256}`` of what the last comparison in ``out`` wrote; empty when
    there is no manifest, None when ``out/.armetrics-compare.json`` exists but is not a
    manifest (then it is not armetrics' file either)."""
    path = out / MANIFEST
    if not os.path.lexists(path):
        return {}
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 20:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        return None
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, str)}


def _ours(out: Path, name: str, manifest: dict[str, str]) -> bool:
    """Whether ``out/name`` is a file an earlier comparison wrote and nobody changed since."""
    return name in manifest and _sha256_of(out / name) == manifest[name]


def _plan_output(out: Path, files: dict[str, bytes], known: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Check that writing ``files`` into ``out`` replaces only armetrics' own files;
    return the new manifest and the stale files of an earlier comparison to remove.
    ReportError naming the first file that is not armetrics' (nothing written)."""
    if not out.is_dir():
        return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}, []
    manifest = read_manifest(out)
    if manifest is None:
        raise ReportError(f"compare --out {one_line(str(out))} holds a {MANIFEST} that armetrics did not write: "
                          f"move it away, or choose an empty or another --out directory")
    for name in files:
        if os.path.lexists(out / name) and not _ours(out, name, manifest):
            raise ReportError(
                f"compare --out {one_line(str(out))} already holds {name}, which no earlier armetrics compare "
                f"wrote there (or which was changed since): move it away, or choose an empty or another --out directory")
    new = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    stale = [name for name in known if name not in files and _ours(out, name, manifest)]
    for name in stale:  # listed until removed: a crash before the removal leaves them armetrics'
        new[name] = manifest[name]
    return new, stale


# --------------------------------------------------------------------------- correlation
CORRELATION_COLUMNS = ("key", "dataset", "threat_model", "models", "n", "spearman_rho", "p_value", "note")


def on_leaderboard(e: Entry) -> bool:
    """Whether an entry has a leaderboard record with a robust accuracy."""
    return bool(e.leaderboard) and _finite(e.leaderboard.get("robust_accuracy"))


def leaderboard_groups(entries: Sequence[Entry]) -> dict[tuple[str, str], list[Entry]]:
    """The entries with a leaderboard robust accuracy by (dataset, threat model): most
    models first, then by name. Robust accuracies of different groups are not comparable
    (another attack, radius or test set), so each group is correlated on its own."""
    groups: dict[tuple[str, str], list[Entry]] = {}
    for e in entries:
        if on_leaderboard(e):
            groups.setdefault((str(e.leaderboard.get("dataset")), str(e.leaderboard.get("threat_model"))), []).append(e)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _spearman(pairs: Sequence[tuple[float, float]]) -> tuple[float, float, str]:
    """(ρ, p-value, note) of (key value, robust accuracy) pairs; NaN with the reason when undefined."""
    from scipy.stats import spearmanr

    if len(pairs) < MIN_MODELS_FOR_CORRELATION:
        return math.nan, math.nan, (f"fewer than {MIN_MODELS_FOR_CORRELATION} models with this key and a "
                                    f"leaderboard robust accuracy")
    if len({x for x, _ in pairs}) == 1:
        return math.nan, math.nan, "the key has the same value for every model"
    if len({y for _, y in pairs}) == 1:
        return math.nan, math.nan, "every model has the same leaderboard robust accuracy"
    res = spearmanr([x for x, _ in pairs], [y for _, y in pairs])
    return float(res.statistic), float(res.pvalue), ""


def correlation(entries: Sequence[Entry], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Spearman ρ between each summary column and the leaderboard robust accuracy, per
    (dataset, threat model) group (:func:`leaderboard_groups`), over the group's entries
    that have the key: groups in that order, within a group strongest |ρ| first,
    undefined (NaN) ones last."""
    out = []
    for (dataset, threat), group in leaderboard_groups(entries).items():
        rows = []
        for col in columns:
            pairs = [(value(e, col), e.leaderboard["robust_accuracy"]) for e in group if value(e, col) is not None]
            rho, p, note = _spearman(pairs)
            rows.append({"key": col, "dataset": dataset, "threat_model": threat, "models": len(group),
                         "n": len(pairs), "spearman_rho": rho, "p_value": p, "note": note})
        rows.sort(key=lambda r: (not math.isfinite(r["spearman_rho"]),
                                 -abs(r["spearman_rho"]) if math.isfinite(r["spearman_rho"]) else 0))
        out += rows
    return out


def groups_note(entries: Sequence[Entry]) -> str | None:
    """The page note naming the correlation's groups and their sizes."""
    groups = leaderboard_groups(entries)
    if not groups:
        return None
    text = ", ".join(f"{ds}/{tm} ({len(g)} model{'s' if len(g) != 1 else ''})" for (ds, tm), g in groups.items())
    if len(groups) == 1:
        return f"Leaderboard correlation over one (dataset, threat model) group: {text}."
    return (f"Leaderboard correlations are computed per (dataset, threat model) group, never pooled (robust "
            f"accuracies under different threat models or test sets are not comparable): {text}.")


# --------------------------------------------------------------------------- main
def _load_entries(reports: Sequence[Report | str | Path], out: Any, against: str | None) -> tuple[list[Entry], list[str]]:
    """Check the arguments, load and check the reports, resolve ε and leaderboard records,
    order and label them; return the entries and the page notes so far."""
    check_against(against)
    if not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"out must be a directory path (str or Path), got {type(out).__name__}: e.g. compare(reports, out='cmp/')")
    loaded = _expand(reports)
    if not loaded:
        raise ConfigError("compare needs at least one report: pass report files written by `armetrics analyze`")
    entries = [Entry(r, origin, i) for i, (r, origin) in enumerate(loaded)]
    check_compatible(entries)
    notes = []
    data_note = _note_data(entries)
    if data_note:
        notes.append(data_note)
    for e in entries:
        e.leaderboard = lookup(str(e.report.model.get("source", "")))
        _resolve_eps(e)
    entries = order(entries)
    _labels(entries)
    return entries, notes


def _draw_figures(entries: Sequence[Entry], series: Any) -> dict[str, bytes]:
    """Every figure some report has data for, drawn into memory: ``{file name: PNG}``."""
    from . import plots
    from .headline import NAME, plot_headline

    files = {}
    buf = io.BytesIO()
    if plot_headline(series, buf, eps={e.label: e.eps for e in entries}) is not None:
        files[NAME] = buf.getvalue()
    for name, draw in plots.FIGURES.items():
        buf = io.BytesIO()
        if name == "accuracy_robust.png":
            drawn = draw(series, buf, leaderboard={e.label: e.leaderboard for e in entries if e.leaderboard})
        else:
            drawn = draw(series, buf)
        if drawn is not None:
            files[name] = buf.getvalue()
    return files


def _correlation_files(entries: Sequence[Entry], columns: Sequence[str], series: Any,
                       notes: list[str]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The leaderboard correlation per (dataset, threat model) group: its rows and
    ``correlation.csv`` / ``correlation.png`` (in memory); notes name the groups and the
    models left out."""
    from . import plots

    missing = [e.label for e in entries if not on_leaderboard(e)]
    if missing:
        notes.append("Not on the leaderboard (no robustbench:DATASET/THREAT/NAME source with a robust accuracy), "
                     "left out of the correlation: " + ", ".join(missing) + ".")
    note = groups_note(entries)
    if note:
        notes.append(note)
    corr_rows = correlation(entries, columns)
    files = {"correlation.csv": _csv(CORRELATION_COLUMNS, corr_rows).encode("utf-8", "backslashreplace")}
    by_label = {e.label: e for e in entries}
    buf = io.BytesIO()
    drawn = plots.plot_correlation(
        series, buf, corr_rows,
        values=lambda s, key: _or_nan(value(by_label[s.label], key)),
        robust=lambda s: _or_nan((by_label[s.label].leaderboard or {}).get("robust_accuracy")),
        group=lambda s: dataset_and_threat(by_label[s.label]) if on_leaderboard(by_label[s.label]) else None)
    if drawn is not None:
        files["correlation.png"] = buf.getvalue()
    return corr_rows, files


def _write_output(out: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (``index.html`` last) and the manifest into ``out``, replacing only
    armetrics' own files; then remove the stale files of an earlier comparison."""
    from . import plots

    known = ["summary.csv", "index.html", "headline.png", "claims.json", *plots.FIGURES, "correlation.png",
             "correlation.csv"]
    manifest, stale = _plan_output(out, files, known)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {one_line(str(out))} ({exc.strerror}): choose a writable --out directory") from None
    files = dict(files)
    page = files.pop("index.html")
    text = json.dumps({"written_by": f"armetrics {__version__} compare", "files": manifest}, indent=1) + "\n"
    atomic_write([*((out / n, data) for n, data in files.items()), (out / MANIFEST, text), (out / "index.html", page)])
    for name in stale:
        try:
            (out / name).unlink()
        except OSError:
            pass


def compare(reports: Sequence[Report | str | Path], out: str | Path, against: str | None = None,
            claims: bool | None = None, reference: str | None = None) -> Comparison:
    """Compare reports (Report objects, report paths, or directories of reports): write
    ``summary.csv``, figures and ``index.html`` into ``out`` (created if needed); with
    ``against="leaderboard"`` also ``correlation.csv`` / ``correlation.png``.

    ``claims``: judge the paper's claims (:func:`armetrics.claims.evaluate`) with the
    ``reference`` model (a label, model name or report file name; default: the one
    model with ε = 0) against the others in ε order, lead the page with the verdicts
    and write ``claims.json``. None (default): when a reference can be identified and
    the reports carry their per-sample side files, else a note says why not; True: an
    error instead of the note; False: never.

    Raises ReportError for unreadable, foreign or newer-schema reports and for reports
    that ran a shared probe with different options; ConfigError for an unknown
    ``against``. Reports on different data selections are allowed and noted.
    """
    if claims is not None and not isinstance(claims, bool):
        raise ConfigError(f"claims must be True, False or None, got {claims!r}")
    if reference is not None and not isinstance(reference, str):
        raise ConfigError(f"reference must be a model name, got {type(reference).__name__}")
    entries, notes = _load_entries(reports, out, against)
    out = Path(out)
    columns = summary_columns(entries)
    header = list(FIXED_COLUMNS) + (list(LEADERBOARD_COLUMNS) if against else []) + columns
    rows = _rows(entries, columns, against)
    # (backslashreplace: a lone surrogate, e.g. from an undecodable file name, is written as \udcff)
    files: dict[str, bytes] = {"summary.csv": _csv(header, rows).encode("utf-8", "backslashreplace")}

    from . import plots
    from .html_page import render_html

    # every figure is drawn into memory first: nothing is written before the folder is checked
    series = plots.make_series([e.label for e in entries], [e.report for e in entries])
    files.update(_draw_figures(entries, series))
    corr_rows = None
    if against == "leaderboard":
        corr_rows, corr_files = _correlation_files(entries, columns, series, notes)
        files.update(corr_files)

    figure_names = [n for n in files if n.endswith(".png")]
    unknown = [e.label for e in entries if e.eps is None]
    if unknown and len(unknown) < len(entries):
        notes.append("ε unknown (ordered after the others): " + ", ".join(unknown) + ".")
    from .compare_claims import judge

    verdicts = None if claims is False else judge(entries, reference, required=claims is True, notes=notes)
    if verdicts is not None:
        files["claims.json"] = (json.dumps(verdicts.to_dict(), indent=1) + "\n").encode()
    files["index.html"] = render_html(entries, header, rows, {n: out / n for n in figure_names}, corr_rows,
                                      notes, verdicts).encode("utf-8", "backslashreplace")
    _write_output(out, files)  # only armetrics' own files are replaced; stale ones are removed
    return Comparison(out=out, models=[e.label for e in entries], summary_csv=out / "summary.csv",
                      html=out / "index.html", figures={n: out / n for n in figure_names},
                      correlation_csv=out / "correlation.csv" if "correlation.csv" in files else None, notes=notes,
                      claims=verdicts, claims_json=out / "claims.json" if verdicts is not None else None)
