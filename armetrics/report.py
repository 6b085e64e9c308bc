"""``Report``: the versioned JSON result of one analysis (schema ``armetrics.report/1``).

Non-finite floats (NaN, inf) are written as JSON ``null``: the file is strict JSON.
Saving is atomic (temporary file in the same directory, then ``os.replace``), so a
crash or Ctrl-C leaves the old file or none, never a partial one.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import ReportError

SCHEMA_NAME = "armetrics.report"
SCHEMA_VERSION = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_VERSION}"
REQUIRED = {"schema": str, "armetrics_version": str, "created": str, "model": dict, "data": (dict, type(None)),
            "environment": dict, "probes": dict}
PROBE_REQUIRED = {"config": dict, "summary": dict, "layers": list, "distributions": dict, "seconds": (int, float, type(None))}


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


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename: all or nothing."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ReportError(f"cannot write {path} ({exc.strerror}): choose a writable --out") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ReportError(f"cannot write {path} ({exc.strerror}): choose a writable --out") from None
        raise


class Report:
    """One analysis: model, data, environment and the result of each probe."""

    def __init__(self, data: dict[str, Any]):
        validate(data)
        self.data = data

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
    def save(self, path: str | Path) -> Path:
        atomic_write_text(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Report":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ReportError(f"report {path} does not exist: check the path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"cannot read report {path} ({exc}): check the file") from None
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise ReportError(f"{path} is not JSON ({exc}): pass a report written by armetrics analyze") from None
        try:
            return cls(data)
        except ReportError as exc:
            raise ReportError(f"{path}: {exc}") from None


def validate(data: Any) -> None:
    """Raise ReportError unless ``data`` is a report of a schema this version reads."""
    if not isinstance(data, dict):
        raise ReportError("not an armetrics report (expected a JSON object)")
    schema = data.get("schema")
    m = re.fullmatch(rf"{re.escape(SCHEMA_NAME)}/(\d+)", schema) if isinstance(schema, str) else None
    if m is None:
        raise ReportError(f"not an armetrics report (schema {schema!r}, expected {SCHEMA!r})")
    if int(m.group(1)) > SCHEMA_VERSION:
        raise ReportError(
            f"report schema {schema} is newer than this armetrics reads ({SCHEMA}): upgrade armetrics"
        )
    if int(m.group(1)) < 1:
        raise ReportError(f"unknown report schema {schema}")
    for key, typ in REQUIRED.items():
        if not isinstance(data.get(key), typ):
            raise ReportError(f"malformed report: field {key!r} is missing or not a {_tname(typ)}")
    for name, probe in data["probes"].items():
        if not isinstance(probe, dict):
            raise ReportError(f"malformed report: probe {name!r} is not an object")
        for key, typ in PROBE_REQUIRED.items():
            if not isinstance(probe.get(key), typ) or isinstance(probe.get(key), bool):
                raise ReportError(f"malformed report: probe {name!r} field {key!r} is missing or not a {_tname(typ)}")
        for k, v in probe["summary"].items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ReportError(f"malformed report: {name}.summary.{k} is not a number")
        if not all(isinstance(layer, dict) and isinstance(layer.get("name"), str) for layer in probe["layers"]):
            raise ReportError(f"malformed report: every layer of probe {name!r} needs a string 'name'")


def _tname(typ) -> str:
    if isinstance(typ, tuple):
        return "/".join(t.__name__ for t in typ if t is not type(None))
    return typ.__name__
