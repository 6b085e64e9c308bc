"""The report's per-sample side file ``<report>.samples.npz`` (format ``armetrics.samples/1``).

``analyze`` writes it by default (``samples=False``, ``--no-samples``: not), from the
values the data probes already computed in the shared pass (``ProbeResult.samples``):
no extra forward pass, a few numbers per sample, never features. :meth:`Report.save`
writes it together with the report (atomic, side file renamed first, report last).

Members (plain numeric arrays; the reader never unpickles):

- ``source_index`` int64 (n,): sample ``i`` of the run (position ``i`` of the data
  order) is image ``source_index[i]`` of the data source;
- ``label`` int64 (n,): its label;
- ``<probe>.index`` int64 (N,), ascending, in ``[0, n)``: the run positions of that
  probe's values (``smoothness`` measures only its first ``max_samples``);
- ``<probe>.<column>`` float64, bool or int64 of shape (N,), or (N, L) for one value per
  layer row (rows listed in the report, in the probe's layer-row order).

The report's JSON describes the file in its ``samples`` section (:func:`encode`) with
the file's SHA-256, so a side file of another run is refused; the ``data`` section
records the identity of the images (``content``: the source's content hash;
``fingerprint``: content, classes, selection order and labels). :func:`check_paired`
refuses to pair reports of different images, seeds or samples.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import DataError, PairingError, SamplesError, one_line
from .npz import _Npz, npz_bytes
from .probe import Samples
from .report import Report, side_path
from .safeio import read_bytes

SUFFIX = ".samples.npz"
FORMAT_NAME = "armetrics.samples"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
#: largest side file read (a run of 50,000 images with every probe: a few MB)
MAX_BYTES = 512 * 2**20
#: dtypes a column may have
DTYPES = ("float64", "bool", "int64")
#: a probe or column name inside the side file
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
#: most samples a side file may describe (armetrics.data.MAX_IMAGES)
MAX_SAMPLES = 10_000_000
#: most layer rows a 2-D column may have
MAX_ROWS = 100_000


@dataclass
class SampleSet:
    """A side file read back: ``n`` samples, their ``source_index`` and ``labels``
    (int64, (n,)), and each probe's :class:`~armetrics.probe.Samples`."""

    n: int
    source_index: np.ndarray
    labels: np.ndarray
    probes: dict[str, Samples]

    def get(self, probe: str, column: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(index, values)`` of one column, None when the file has no such column."""
        s = self.probes.get(probe)
        if s is None or column not in s.columns:
            return None
        return s.index, s.columns[column]


# --------------------------------------------------------------------------- writing
def encode(source_index: np.ndarray, labels: np.ndarray, per_probe: Mapping[str, Samples]) -> tuple[bytes, dict]:
    """The side file's bytes and the report's ``samples`` section describing them.
    ``source_index``, ``labels``: (n,) of the run's samples in data order."""
    source_index = np.asarray(source_index, dtype=np.int64)
    arrays: dict[str, np.ndarray] = {"source_index": source_index, "label": np.asarray(labels, dtype=np.int64)}
    probes: dict[str, Any] = {}
    for probe, s in per_probe.items():
        if s is None:
            continue
        arrays[f"{probe}.index"] = np.asarray(s.index, dtype=np.int64)
        columns = {}
        for name, values in s.columns.items():
            values = np.ascontiguousarray(values)
            if values.dtype.kind == "f":
                values = values.astype(np.float64)
            arrays[f"{probe}.{name}"] = values
            columns[name] = {"dtype": str(values.dtype), "units": s.units.get(name, "")}
        probes[probe] = {"n": int(len(s.index)), "rows": list(s.rows) if s.rows is not None else None,
                         "columns": columns}
    _check_names(arrays)
    data = npz_bytes(arrays)
    manifest = {"format": FORMAT, "suffix": SUFFIX, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "n": int(len(source_index)), "probes": probes}
    return data, manifest


def _check_names(arrays: Mapping[str, np.ndarray]) -> None:
    for key in arrays:
        if not all(NAME.fullmatch(part) for part in key.split(".", 1)):
            raise SamplesError(f"per-sample column {one_line(key)[:80]!r} is not a name of letters, digits, '_' "
                               f"and '-': rename the probe or column")


# --------------------------------------------------------------------------- reading
def where(report: Report) -> str:
    """How messages name a report: its file name when loaded from one, else its model's name."""
    path = getattr(report, "path", None)
    return one_line(Path(path).name if path is not None else f"the report of {report.model.get('name')}")


def manifest(report: Report) -> dict:
    """The report's ``samples`` section, checked; SamplesError when it has none."""
    m = report.data.get("samples")
    if not isinstance(m, dict):
        raise SamplesError(f"{where(report)} has no per-sample side file (made without samples, or by an older "
                           f"armetrics): analyze the model again with this armetrics (side files are on by default)")
    fmt = m.get("format")
    found = re.fullmatch(rf"{re.escape(FORMAT_NAME)}/(\d+)", fmt) if isinstance(fmt, str) else None
    if found is None:
        raise SamplesError(f"{where(report)}: samples.format {one_line(repr(fmt))[:60]} is not {FORMAT!r}: "
                           f"analyze the model again")
    if int(found.group(1)) > FORMAT_VERSION:
        raise SamplesError(f"{where(report)}: per-sample side file format {fmt[:40]} is newer than this armetrics "
                           f"reads ({FORMAT}): upgrade armetrics")
    return m


def side_name(report: Report, m: dict) -> str:
    """How messages name a report's side file: its file name, or "<report>'s side file"."""
    path = getattr(report, "path", None)
    suffix = m.get("suffix") if isinstance(m.get("suffix"), str) else SUFFIX
    return one_line(side_path(path, suffix).name) if path is not None else f"{where(report)}'s side file"


def side_bytes(report: Report, m: dict) -> bytes:
    """The side file's bytes: in ``report.files`` (a report made in this process) or
    beside the file the report was loaded from."""
    suffix = m.get("suffix") if isinstance(m.get("suffix"), str) else SUFFIX
    if suffix in report.files:
        return report.files[suffix]
    path = getattr(report, "path", None)
    if path is None:
        raise SamplesError(f"{where(report)} holds no per-sample side file in memory and was not loaded from a file: "
                           f"pass the report's path (or the Report that analyze returned)")
    side = side_path(path, suffix)
    if not side.exists():
        raise SamplesError(f"{where(report)} has no per-sample side file {one_line(side.name)} beside it (deleted, "
                           f"or the report was copied without it): copy it along, or analyze the model again")
    return read_bytes(side, "per-sample side file", SamplesError, limit=MAX_BYTES)


def load(report: Report) -> SampleSet:
    """The report's per-sample values, checked against its ``samples`` section (SHA-256,
    members, dtypes, shapes, indices). SamplesError (one line) when missing or foreign."""
    m = manifest(report)
    data = side_bytes(report, m)
    if len(data) > MAX_BYTES:
        raise SamplesError(f"{where(report)}: its per-sample side file is {len(data) / 2**20:.0f} MiB, more than the "
                           f"{MAX_BYTES // 2**20} MiB armetrics reads: analyze with fewer images (-n)")
    if hashlib.sha256(data).hexdigest() != m.get("sha256"):
        raise SamplesError(f"{where(report)}: its per-sample side file does not belong to it (SHA-256 differs from the "
                           f"one the report records): analyze the model again to write both together")
    return decode(data, m, side_name(report, m))


def decode(data: bytes, m: dict, name: str) -> SampleSet:
    """The :class:`SampleSet` in side-file bytes ``data`` described by the manifest ``m``,
    every member checked before it is read (no pickles, declared dtypes and lengths)."""
    n, probes = _int(m.get("n"), name, "n", high=MAX_SAMPLES), m.get("probes")
    if not isinstance(probes, dict):
        raise SamplesError(f"{name}: the report's samples.probes is not an object: analyze the model again")
    try:
        with _Npz(Path(name), None, data=data) as z:
            expected = _expected_members(n, probes, name)
            extra = sorted(set(z.members) - set(expected))
            missing = sorted(set(expected) - set(z.members))
            if extra or missing:
                what = f"holds {extra[0]!r}, which the report does not declare" if extra else f"lacks {missing[0]!r}"
                raise SamplesError(f"{name} {what}: analyze the model again to rewrite it")
            arrays = {key: _read_member(z, key, dtype, shape, name) for key, (dtype, shape) in expected.items()}
    except DataError as exc:
        raise SamplesError(f"{_problem(str(exc))}: analyze the model again to rewrite it") from None
    return _sample_set(n, probes, arrays, name)


def _problem(message: str) -> str:
    """A DataError message of the npz reader without its fix (which is about data files)."""
    return message.rsplit(": ", 1)[0] if ": " in message else message


def _int(v: Any, name: str, field: str, high: int = 10**9) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= high:
        raise SamplesError(f"{name}: the report's samples.{field} is not a count (got {one_line(repr(v))[:40]}): "
                           f"analyze the model again")
    return v


def _expected_members(n: int, probes: dict, name: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every member the manifest declares: key -> (dtype, shape)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {"source_index": ("int64", (n,)), "label": ("int64", (n,))}
    for probe, spec in probes.items():
        if not isinstance(spec, dict) or not NAME.fullmatch(str(probe)):
            raise SamplesError(f"{name}: the report's samples.probes.{one_line(str(probe))[:40]} is malformed: "
                               f"analyze the model again")
        count = _int(spec.get("n"), name, f"probes.{probe}.n", high=n)
        rows, columns = spec.get("rows"), spec.get("columns")
        if rows is not None and not (isinstance(rows, list) and len(rows) <= MAX_ROWS and all(isinstance(r, str) for r in rows)):
            raise SamplesError(f"{name}: the report's samples.probes.{probe}.rows is not a list of layer names: "
                               f"analyze the model again")
        if not isinstance(columns, dict):
            raise SamplesError(f"{name}: the report's samples.probes.{probe}.columns is not an object: analyze the model again")
        out[f"{probe}.index"] = ("int64", (count,))
        for col, cspec in columns.items():
            dtype = cspec.get("dtype") if isinstance(cspec, dict) else None
            if dtype not in DTYPES or not NAME.fullmatch(str(col)):
                raise SamplesError(f"{name}: column {one_line(str(probe))[:40]}.{one_line(str(col))[:40]} declares dtype "
                                   f"{one_line(repr(dtype))[:30]}, not one of {', '.join(DTYPES)}: analyze the model again")
            out[f"{probe}.{col}"] = (dtype, (count,) if rows is None else (count, len(rows)))
    return out


def _read_member(z: _Npz, key: str, dtype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """One member, its header checked against the declared dtype and shape before any data is read."""
    def check(mem) -> None:
        if str(mem.dtype.newbyteorder("=")) != dtype or mem.dtype.byteorder == ">":
            raise SamplesError(f"{name}: {key} has dtype {str(mem.dtype)[:30]}, not the {dtype} the report declares: "
                               f"analyze the model again to rewrite it")
        if mem.nbytes > MAX_BYTES:
            raise SamplesError(f"{name}: {key} declares {mem.nbytes / 2**20:.0f} MiB, more than the "
                               f"{MAX_BYTES // 2**20} MiB a side file may hold: analyze the model again to rewrite it")
        if tuple(mem.shape) != shape:
            raise SamplesError(f"{name}: {key} has shape {tuple(mem.shape)}, not the {shape} the report declares "
                               f"(one value per sample): analyze the model again to rewrite it")

    return z.read(z.header(key, check))


def _sample_set(n: int, probes: dict, arrays: dict[str, np.ndarray], name: str) -> SampleSet:
    """The checked arrays as a SampleSet; indices must be ascending, unique and in range."""
    out = {}
    for probe, spec in probes.items():
        index = arrays[f"{probe}.index"]
        if len(index) and (index[0] < 0 or index[-1] >= n or np.any(np.diff(index) <= 0)):
            raise SamplesError(f"{name}: {probe}.index is not ascending sample positions in 0..{n - 1}: "
                               f"analyze the model again to rewrite it")
        columns = {c: arrays[f"{probe}.{c}"] for c in spec["columns"]}
        units = {c: str(v.get("units", "")) for c, v in spec["columns"].items()}
        out[probe] = Samples(index=index, columns=columns, units=units, rows=spec.get("rows"))
    source_index, labels = arrays["source_index"], arrays["label"]
    if n and (source_index.min() < 0 or labels.min() < 0):
        raise SamplesError(f"{name}: negative source_index or label: analyze the model again to rewrite it")
    return SampleSet(n=n, source_index=source_index, labels=labels, probes=out)


# --------------------------------------------------------------------------- pairing
def check_paired(a: Report, sa: SampleSet, b: Report, sb: SampleSet) -> None:
    """PairingError unless reports ``a`` and ``b`` measured the same images, in the same
    order, with the same seeds: the data content, the seeds (data selection and run),
    then the selection itself (source indices and labels)."""
    na, nb = where(a), where(b)
    da, db = a.data.get("data") or {}, b.data.get("data") or {}
    if da.get("content") != db.get("content"):
        raise PairingError(f"{na} and {nb} were measured on different images (data {_source(da)} vs {_source(db)}): "
                           f"analyze every model on the same --data")
    seeds = [(da.get("seed"), (a.data.get("run") or {}).get("seed")), (db.get("seed"), (b.data.get("run") or {}).get("seed"))]
    if seeds[0] != seeds[1]:
        raise PairingError(f"{na} and {nb} were made with different seeds (data/run seed {seeds[0][0]}/{seeds[0][1]} "
                           f"vs {seeds[1][0]}/{seeds[1][1]}): analyze every model with the same --seed")
    if sa.n != sb.n or not np.array_equal(sa.source_index, sb.source_index) or not np.array_equal(sa.labels, sb.labels):
        raise PairingError(f"{na} and {nb} were measured on different samples of the same data (n={sa.n} vs n={sb.n}, "
                           f"or another selection): analyze every model with the same -n and --seed")
    if da.get("fingerprint") != db.get("fingerprint"):
        raise PairingError(f"{na} and {nb} were measured on differently prepared images (data fingerprints differ: "
                           f"preprocessing, corruption or classes): analyze every model with the same data options")


def _source(d: dict) -> str:
    content = d.get("content")
    shown = (content[:16] + "…") if isinstance(content, str) else "unknown content"
    return f"{one_line(str(d.get('source')))[:60]} {shown}"
