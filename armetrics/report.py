"""``Report``: the versioned JSON result of one analysis (schema ``armetrics.report/1``).

Non-finite floats (NaN, inf) are written as JSON ``null``: the file is strict JSON.

Writing (:func:`atomic_write`, used by :meth:`Report.save` and :func:`armetrics.compare`)
never destroys what the user owns:

- every file goes through a temporary file ``.NAME.XXXXXXXX.tmp`` in the target's own
  directory, and all of them are written (and fsynced) before any is renamed into place:
  a failure or Ctrl-C before the renames leaves every old file, and no temporary file;
- a target that exists and is not a regular file (a device such as ``/dev/null``, a
  FIFO, a socket, a directory) is refused, never replaced;
- a symbolic link is written *through*: the link stays, the file it points to gets the
  new content;
- a new file gets mode ``0o666 & ~umask`` (what ``open()`` would give); an existing
  file keeps its permission bits (and, where allowed, its owner and group);
- temporary files ``.NAME.*.tmp`` left by an earlier write of the same target that was
  killed (SIGKILL, power loss) are removed by the next write to that target.

A report can carry **side files** (:attr:`Report.files`, e.g. ``spectrum``'s
``save_values`` npz): bytes keyed by a suffix that replaces the report's own
(``r.json`` + ``.spectrum.npz`` -> ``r.spectrum.npz``). They are not part of the JSON;
:meth:`Report.save` writes them together with the report (side files renamed first,
the report last), so a run that fails before saving changes neither.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from . import interrupt
from .errors import ReportError, one_line
from .safeio import kind_of, read_bytes

SCHEMA_NAME = "armetrics.report"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
REQUIRED = {"schema": str, "armetrics_version": str, "created": str, "model": dict, "data": (dict, type(None)),
            "environment": dict, "probes": dict}
PROBE_REQUIRED = {"config": dict, "summary": dict, "layers": list, "distributions": dict, "seconds": (int, float, type(None))}
#: reports larger than this are refused by :meth:`Report.load` (real ones are a few MB at most)
MAX_REPORT_BYTES = 256 * 2**20
#: deepest nesting of objects/lists a report may have (real reports: about 6)
MAX_DEPTH = 32
#: a side file's suffix: a dot, then letters, digits, ``_``, ``-`` and dots (never a path)
SIDE_SUFFIX = re.compile(r"\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types; tensors/arrays become lists, non-finite floats None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist"):  # numpy / torch
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a report")


# --------------------------------------------------------------------------- safe writing
_TMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def side_path(report_path: str | Path, suffix: str) -> Path:
    """Where a report's side file with ``suffix`` goes: the report path with its last
    suffix replaced (``r.json`` + ``.spectrum.npz`` -> ``r.spectrum.npz``)."""
    try:
        return Path(report_path).with_suffix(suffix)
    except ValueError:
        raise ReportError(f"cannot name a side file of {one_line(str(report_path))}: give the report a file name") from None


def _shown(path: str | Path) -> str:
    return one_line(str(path))


def shown_path(path: "str | os.PathLike | None") -> str | None:
    """A path as pages, cards and tables show it: relative to the working directory
    when under it, else its file name — nothing armetrics writes for people to share
    carries an absolute path of the machine that made it. Non-paths (``robustbench:``
    names, ``<in-memory>``) and relative paths are returned as they are."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return p.name


def _realpath(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (ValueError, OSError) as exc:  # embedded NUL byte, ...
        raise ReportError(f"{_shown(path)} is not a usable file name ({exc}): choose another path") from None


def _existing(path: Path, real: Path) -> os.stat_result | None:
    """``os.stat`` of the file a write to ``path`` (resolved to ``real``) would replace,
    None if there is none; ReportError when it exists and is not a regular file."""
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportError(f"cannot write {_shown(path)} ({exc.strerror or exc}): choose a writable --out") from None
    kind = kind_of(st.st_mode)
    if kind is not None:
        raise ReportError(f"refusing to write {_shown(path)}: it is {kind}, not a regular file: "
                          f"choose a regular file path for the output")
    return st


def check_output_path(path: str | Path, inputs: Iterable[str | Path | None] = (), what: str = "output") -> None:
    """Raise ReportError unless ``path`` may be (over)written by armetrics: it must not
    resolve to one of ``inputs`` (the model file, the ``--arch`` .py file, the data file:
    the same file by :func:`os.path.samefile`, or the same :func:`os.path.realpath`), nor
    to an existing file inside an input *directory* (an ImageFolder's image), and it must
    not exist as anything but a regular file (a device, a FIFO, a socket, a directory).
    ``None`` and names of files that do not exist in ``inputs`` are ignored. Nothing is
    opened or created."""
    path = Path(path)
    real = _realpath(path)
    existing = _existing(path, real)
    for inp in inputs:
        if inp is None:
            continue
        try:
            inp_real = os.path.realpath(os.fspath(inp))
            same = inp_real == str(real)
            if not same and os.path.lexists(path) and os.path.exists(inp):
                same = os.path.samefile(path, inp)
            inside = existing is not None and os.path.isdir(inp_real) and real.is_relative_to(inp_real)
        except (OSError, ValueError, TypeError):
            continue
        if same:
            raise ReportError(f"{what} {_shown(path)} is the input file {_shown(inp)}: writing it would destroy the "
                              f"input: choose another output path")
        if inside:
            raise ReportError(f"{what} {_shown(path)} is a file of the input directory {_shown(inp)}: writing it "
                              f"would change the input: choose a path outside it")


@dataclass
class _Target:
    path: Path  # as given
    real: Path  # what is written (symlinks resolved)
    existing: os.stat_result | None
    data: bytes
    tmp: Path | None = None


def _stale_temps(real: Path) -> None:
    """Remove ``.NAME.*.tmp`` files (regular files only) left beside ``real`` by a killed write."""
    pattern = re.compile(rf"\.{re.escape(real.name)}\.[A-Za-z0-9_]+\.tmp")
    try:
        entries = list(os.scandir(real.parent))
    except OSError:
        return
    for entry in entries:
        if pattern.fullmatch(entry.name):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            except OSError:
                pass


def _write_temp(t: _Target) -> None:
    """Create ``t.tmp`` beside ``t.real`` (mode 0o666 & ~umask, or the existing file's
    permission bits) holding ``t.data``, fsynced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = t.real.parent / f".{t.real.name}.{''.join(secrets.choice(_TMP_CHARS) for _ in range(8))}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the kernel applies the umask, as for open()
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 41 random bits
        raise FileExistsError(f"no free temporary name beside {t.real}")
    t.tmp = tmp
    with os.fdopen(fd, "wb") as f:
        if t.existing is not None:
            os.fchmod(f.fileno(), stat.S_IMODE(t.existing.st_mode) & 0o777)
            own = os.fstat(f.fileno())
            if (own.st_uid, own.st_gid) != (t.existing.st_uid, t.existing.st_gid):
                try:  # root writing a user's file, or a file of another group: keep them
                    os.fchown(f.fileno(), t.existing.st_uid, t.existing.st_gid)
                except OSError:
                    pass
        f.write(t.data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(files: "Sequence[tuple[str | Path, str | bytes]] | Mapping[str | Path, str | bytes]") -> list[Path]:
    """Write every ``(path, content)`` (str is written as UTF-8), all or nothing.

    Each target is checked first (an existing non-regular file is refused; a symlink is
    written through to the file it points to), stale temporaries of earlier killed writes
    of it are removed, then every temporary file is written and fsynced, and only then are
    they renamed into place, in the order given (give side files first, the main file
    last). If a check or any write fails (or an interruption was requested,
    :mod:`armetrics.interrupt`), every temporary file is removed and nothing is renamed.
    Returns the paths as given. OSErrors become one-line ReportErrors."""
    items = list(files.items()) if isinstance(files, Mapping) else list(files)
    targets: list[_Target] = []
    seen: set[Path] = set()
    for path, content in items:
        path = Path(path)
        real = _realpath(path)
        if real in seen:
            raise ReportError(f"{_shown(path)} would be written twice by one save: choose another report name")
        seen.add(real)
        data = content.encode("utf-8", "backslashreplace") if isinstance(content, str) else bytes(content)
        targets.append(_Target(path, real, _existing(path, real), data))
    for t in targets:
        _stale_temps(t.real)
    current: _Target | None = None
    try:
        for t in targets:
            current = t
            _write_temp(t)
        interrupt.check()
        for t in targets:
            current = t
            os.replace(t.tmp, t.real)
            t.tmp = None
    except BaseException as exc:
        for t in targets:
            if t.tmp is not None:
                try:
                    os.unlink(t.tmp)
                except OSError:
                    pass
        if isinstance(exc, OSError):
            where = current.path if current is not None else "the output"
            raise ReportError(f"cannot write {_shown(where)} ({exc.strerror or exc}): choose a writable --out") from None
        raise
    for directory in {t.real.parent for t in targets}:  # make the renames durable (best effort)
        try:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
    return [t.path for t in targets]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write` of one file)."""
    atomic_write([(path, text)])


# --------------------------------------------------------------------------- the report
class Report:
    """One analysis: model, data, environment and the result of each probe.

    ``files``: side files by suffix (``{".spectrum.npz": b"..."}``), written by
    :meth:`save` beside the report; not part of the JSON, not read back by :meth:`load`.
    ``path``: the file :meth:`load` read the report from (None for a report made in this
    process), where readers of side files (:mod:`armetrics.samples`) look for them.
    """

    def __init__(self, data: dict[str, Any], files: Mapping[str, bytes] | None = None):
        validate(data)
        self.data = data
        self.path: Path | None = None
        self.files: dict[str, bytes] = {}
        for suffix, content in (files or {}).items():
            if not isinstance(suffix, str) or not SIDE_SUFFIX.fullmatch(suffix) or suffix == ".json":
                raise ReportError(f"side file suffix {one_line(repr(suffix))[:80]} is not a suffix such as '.spectrum.npz'")
            if not isinstance(content, (bytes, bytearray, memoryview)):
                raise ReportError(f"side file {suffix} must be bytes, got {type(content).__name__}")
            self.files[suffix] = bytes(content)

    # -- access ---------------------------------------------------------------
    @property
    def probes(self) -> list[str]:
        return list(self.data["probes"])

    def _probe(self, probe: str) -> dict[str, Any]:
        try:
            return self.data["probes"][probe]
        except KeyError:
            raise ReportError(f"report has no probe {probe!r}: it has {', '.join(self.probes) or 'none'}") from None

    def summary(self, probe: str) -> dict[str, float | None]:
        """The probe's scalar results (``None`` where not finite)."""
        return dict(self._probe(probe)["summary"])

    def layers(self, probe: str) -> list[dict[str, Any]]:
        return list(self._probe(probe)["layers"])

    def distributions(self, probe: str) -> dict[str, Any]:
        return dict(self._probe(probe)["distributions"])

    def config(self, probe: str) -> dict[str, Any]:
        return dict(self._probe(probe)["config"])

    def revision(self, probe: str) -> int:
        """The method revision of ``probe`` in this report (:attr:`armetrics.probe.Probe.revision`; 1 when absent)."""
        rev = self._probe(probe).get("revision", 1)
        return rev if isinstance(rev, int) and not isinstance(rev, bool) else 1

    @property
    def model(self) -> dict[str, Any]:
        return self.data["model"]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1, allow_nan=False) + "\n"

    def __repr__(self) -> str:
        return f"Report(model={self.model.get('name')!r}, probes={self.probes})"

    # -- io -------------------------------------------------------------------
    def output_paths(self, path: str | Path) -> list[Path]:
        """Every file :meth:`save` (``path``) writes, in the order it renames them: the
        side files, then the report itself."""
        return [side_path(path, suffix) for suffix in self.files] + [Path(path)]

    def inputs(self) -> list[str]:
        """The files this report names as its inputs: the model file (``model.source``),
        the ``--arch`` file (``model.arch`` of the form ``FILE.py:callable``) and the data
        file (``data.source``) — whether they exist or not."""
        model, data = self.data.get("model") or {}, self.data.get("data") or {}
        out = [v for v in (model.get("source"), data.get("source")) if isinstance(v, str) and v]
        arch = model.get("arch")
        if isinstance(arch, str) and ":" in arch:
            file = arch.rsplit(":", 1)[0]
            if file.endswith(".py"):
                out.append(file)
        return out

    def save(self, path: str | Path, inputs: Iterable[str | Path | None] = ()) -> Path:
        """Write the report (and its side files) to ``path`` atomically, all or nothing
        (:func:`atomic_write`). Refused with ReportError, before anything is written, when
        a file to write is not a regular file or is one of this report's own input files
        (:meth:`inputs`) or of ``inputs`` (:func:`check_output_path`)."""
        if not isinstance(path, (str, os.PathLike)):
            raise ReportError(f"a report path must be a str or Path, got {type(path).__name__}: e.g. report.save('r.json')")
        paths = self.output_paths(path)
        protect = [*self.inputs(), *inputs]
        for p in paths:
            check_output_path(p, protect)
        atomic_write([*zip(paths[:-1], self.files.values()), (paths[-1], self.to_json())])
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        if not isinstance(path, (str, os.PathLike)):
            raise ReportError(f"a report path must be a str or Path, got {type(path).__name__}: pass the .json file armetrics analyze wrote")
        path = Path(path)
        try:
            raw = read_bytes(path, "report", ReportError, limit=MAX_REPORT_BYTES)
        except ValueError as exc:  # a NUL byte in the name
            raise ReportError(f"cannot read report {_shown(path)} ({exc}): check the path") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReportError(f"cannot read report {_shown(path)} ({exc}): check the file") from None
        try:
            data = json.loads(text, parse_constant=_nonfinite, parse_float=_float)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise ReportError(f"{_shown(path)} is not JSON ({one_line(str(exc))[:160]}): pass a report written "
                              f"by armetrics analyze") from None
        try:
            report = cls(data)
        except ReportError as exc:
            raise ReportError(f"{_shown(path)}: {exc}") from None
        report.path = path
        return report


def _nonfinite(_constant: str) -> None:
    """``NaN``/``Infinity`` (not strict JSON, never written by armetrics) read as null."""
    return None


def _float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # 1e999 is inf: null, as armetrics writes it


# --------------------------------------------------------------------------- validation
def validate(data: Any) -> None:
    """Raise ReportError unless ``data`` is a report of a schema this version reads.

    Beyond the schema and the required sections, every field ``compare``, ``plots`` and the
    CLI read is type-checked, so that a crafted report is refused with one line naming
    the field instead of crashing them:

    - the whole document: JSON values only (objects with string keys, lists, strings,
      numbers within float range, booleans, null), nested at most :data:`MAX_DEPTH`
      deep (strings may hold anything, also lone surrogates from undecodable file names:
      writers escape them);
    - ``model``: ``source``, ``name``, ``arch``, ``sha256``, ``format`` strings or null;
      ``eps`` a number, a string or null; ``num_parameters`` an integer or null;
      ``notes``, ``nonfinite_parameters`` lists of strings;
    - ``data`` (or null): ``source`` a string; ``n``, ``seed``, ``num_classes`` integers
      or null; ``classes`` a list of strings;
    - each probe: ``config`` values JSON scalars or lists (no objects); ``summary`` values
      numbers or null; ``layers`` objects with a string ``name`` whose fields are scalars
      or lists; ``distributions`` objects with numeric (or null) lists ``edges`` and
      ``counts``, ``len(counts) == len(edges) - 1``, numeric ``underflow``/``overflow``;
      ``details`` an object or null; ``seconds`` a number or null;
    - ``run``, when present, an object; ``samples``, when present, an object with string
      ``format``, ``sha256``, a side-file ``suffix``, integer ``n``/``bytes`` and an
      object ``probes`` (the side file itself is checked when read, :mod:`armetrics.samples`).
    """
    if not isinstance(data, dict):
        raise ReportError("not an armetrics report (expected a JSON object)")
    schema = data.get("schema")
    m = re.fullmatch(rf"{re.escape(SCHEMA_NAME)}/(\d+)", schema) if isinstance(schema, str) else None
    if m is None:
        shown = one_line(repr(schema))
        raise ReportError(f"not an armetrics report (schema {shown[:80]}{'...' if len(shown) > 80 else ''}, "
                          f"expected {SCHEMA!r})")
    if int(m.group(1)) > SCHEMA_VERSION:
        raise ReportError(
            f"report schema {schema[:40]} is newer than this armetrics reads ({SCHEMA}): upgrade armetrics"
        )
    if int(m.group(1)) < 1:
        raise ReportError(f"unknown report schema {schema[:40]}")
    for key, typ in REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise ReportError(f"malformed report: field {key!r} is missing or not a {_tname(typ)}")
    _check_json(data, "", 0)
    _check_fields(data["model"], "model", {"source": _STR, "name": _STR, "arch": _STR, "sha256": _STR, "format": _STR,
                                           "eps": _EPS, "num_parameters": _INT, "notes": _STRS,
                                           "nonfinite_parameters": _STRS})
    if data["data"] is not None:
        if not isinstance(data["data"].get("source"), str):
            raise ReportError("malformed report: field 'data.source' is missing or not a string")
        _check_fields(data["data"], "data", {"n": _INT, "seed": _INT, "num_classes": _INT, "classes": _STRS,
                                             "content": _STR, "fingerprint": _STR})
    if "run" in data and not isinstance(data["run"], (dict, type(None))):
        raise ReportError("malformed report: field 'run' is not an object")
    if data.get("samples") is not None:
        _check_samples(data["samples"])
    for name, probe in data["probes"].items():
        _check_probe(name, probe)


def _check_samples(section: Any) -> None:
    """The ``samples`` section (the per-sample side file's description): the fields
    :meth:`Report.save` and :mod:`armetrics.samples` rely on before reading the file."""
    if not isinstance(section, dict):
        raise ReportError("malformed report: field 'samples' is not an object")
    for key in ("format", "sha256"):
        if not isinstance(section.get(key), str):
            raise ReportError(f"malformed report: field 'samples.{key}' is missing or not a string")
    suffix = section.get("suffix")
    if not isinstance(suffix, str) or not SIDE_SUFFIX.fullmatch(suffix) or suffix == ".json":
        raise ReportError("malformed report: field 'samples.suffix' is not a side-file suffix such as '.samples.npz'")
    _check_fields(section, "samples", {"n": _INT, "bytes": _INT})
    if not isinstance(section.get("probes"), dict):
        raise ReportError("malformed report: field 'samples.probes' is missing or not an object")


def _check_probe(name: str, probe: Any) -> None:
    where = f"probes.{_key(name)}"
    if not isinstance(probe, dict):
        raise ReportError(f"malformed report: probe {_key(name)!r} is not an object")
    for key, typ in PROBE_REQUIRED.items():
        if not isinstance(probe.get(key), typ) or isinstance(probe.get(key), bool):
            raise ReportError(f"malformed report: probe {_key(name)!r} field {key!r} is missing or not a {_tname(typ)}")
    for k, v in probe["config"].items():
        if isinstance(v, dict) or (isinstance(v, (list, tuple)) and not _flat_or_nested_scalars(v)):
            raise ReportError(f"malformed report: {where}.config.{_key(k)} is not a JSON scalar or list of scalars")
    for k, v in probe["summary"].items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ReportError(f"malformed report: {_key(name)}.summary.{_key(k)} is not a number")
    for i, layer in enumerate(probe["layers"]):
        if not (isinstance(layer, dict) and isinstance(layer.get("name"), str)):
            raise ReportError(f"malformed report: every layer of probe {_key(name)!r} needs a string 'name' "
                              f"({where}.layers[{i}])")
        for k, v in layer.items():
            if isinstance(v, dict) or (isinstance(v, (list, tuple)) and not _flat_or_nested_scalars(v)):
                raise ReportError(f"malformed report: {where}.layers[{i}].{_key(k)} is not a scalar or a list of scalars")
    for k, hist in probe["distributions"].items():
        at = f"{where}.distributions.{_key(k)}"
        if not isinstance(hist, dict):
            raise ReportError(f"malformed report: {at} is not an object with 'edges' and 'counts'")
        for part in ("edges", "counts"):
            values = hist.get(part)
            if not isinstance(values, (list, tuple)) or not all(v is None or _is_number(v) for v in values):
                raise ReportError(f"malformed report: {at}.{part} is missing or not a list of numbers")
        if len(hist["counts"]) != len(hist["edges"]) - 1:
            raise ReportError(f"malformed report: {at} has {len(hist['counts'])} counts for {len(hist['edges'])} "
                              f"edges (counts must be one fewer than edges)")
        for part in ("underflow", "overflow"):
            if hist.get(part) is not None and not _is_number(hist[part]):
                raise ReportError(f"malformed report: {at}.{part} is not a number")
    if probe.get("details") is not None and not isinstance(probe["details"], dict):
        raise ReportError(f"malformed report: {where}.details is not an object")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flat_or_nested_scalars(values: Any) -> bool:
    return all(_flat_or_nested_scalars(v) if isinstance(v, (list, tuple)) else not isinstance(v, dict) for v in values)


def _STR(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _INT(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _EPS(v: Any) -> bool:
    """A number, null, or a short string such as "8/255" (no huge exponent: ``Fraction("1e-99999999")``
    would compute 10**99999999)."""
    if isinstance(v, str):
        return len(v) <= 64 and not re.search(r"[eE][-+]?_?0*\d{4}", v)
    return v is None or _is_number(v)


def _STRS(v: Any) -> bool:
    return v is None or (isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v))


_EXPECTED = {_STR: "a string or null", _INT: "an integer or null", _EPS: "a number, a short string such as \"8/255\" or null",
             _STRS: "a list of strings"}


def _check_fields(section: dict, where: str, checks: dict) -> None:
    for key, ok in checks.items():
        if key in section and not ok(section[key]):
            raise ReportError(f"malformed report: field '{where}.{key}' is not {_EXPECTED[ok]} "
                              f"(got {type(section[key]).__name__})")


def _key(name: Any) -> str:
    """A key as shown in an error: one line, at most 60 characters."""
    text = one_line(str(name))
    return text if len(text) <= 60 else text[:57] + "..."


_BIG = int(sys.float_info.max)  # ints beyond it overflow float(): refused


def _check_json(obj: Any, where: str, depth: int) -> None:
    """JSON values only; numbers within float range; nesting at most MAX_DEPTH. (Paths
    for the message are only built where needed.)"""
    if depth > MAX_DEPTH:
        raise ReportError(f"malformed report: {where or 'the report'} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ReportError(f"malformed report: {where or 'the report'} has a non-string key {_key(repr(k))}")
            cls = v.__class__
            if v is None or cls is float or cls is bool or (cls is int and -_BIG <= v <= _BIG):
                continue
            _check_json(v, f"{where}.{_key(k)}" if where else _key(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            cls = v.__class__
            if v is None or cls is float or cls is bool or (cls is int and -_BIG <= v <= _BIG):
                continue
            _check_json(v, f"{where}[{i}]", depth + 1)
    else:
        _check_scalar(obj, where)


def _check_scalar(obj: Any, where: str) -> None:
    if isinstance(obj, (str, bool, float)) or obj is None:
        pass
    elif isinstance(obj, int):
        try:
            float(obj)
        except OverflowError:
            raise ReportError(f"malformed report: {where} is an integer too large for a number") from None
    else:
        raise ReportError(f"malformed report: {where} holds a {type(obj).__name__}, not a JSON value")


def _tname(typ) -> str:
    if isinstance(typ, tuple):
        return "/".join(t.__name__ for t in typ if t is not type(None))
    return typ.__name__
