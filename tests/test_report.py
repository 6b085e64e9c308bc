"""Report: schema, save/load round trip, strict JSON, validation errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import armetrics as am
from armetrics.errors import ReportError
from armetrics.probe import Probe, ProbeResult
from armetrics.registry import _PROBES, register_probe
from armetrics.report import SCHEMA, Report, atomic_write_text


@pytest.fixture
def report(tiny_net, tiny_npz):
    return am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy"])


def test_schema_sections(report, tiny_net, tiny_npz):
    d = report.to_dict()
    assert d["schema"] == SCHEMA == "armetrics.report/1"
    assert d["model"]["num_parameters"] == sum(p.numel() for p in tiny_net.parameters())
    assert len(d["model"]["sha256"]) == 64
    data = am.load_data(tiny_npz)  # the identity of the images (what claims pair reports by)
    assert d["data"] == {"source": d["data"]["source"], "n": 64, "seed": 0, "num_classes": 10, "classes": [],
                         "content": data.content_id(), "fingerprint": data.fingerprint()}
    assert d["data"]["content"].startswith("npz:") and len(d["data"]["fingerprint"]) == 64
    assert d["environment"]["torch"] == torch.__version__
    p = d["probes"]["accuracy"]
    assert set(p) >= {"config", "summary", "layers", "distributions", "seconds"}


def test_roundtrip(report, tmp_path):
    path = report.save(tmp_path / "r.json")
    again = Report.load(path)
    assert again.to_dict() == report.to_dict()
    assert again.summary("accuracy") == report.summary("accuracy")
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in a report: not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_nonfinite_written_as_null(tiny_net, tmp_path):
    """NaN and +-inf that a probe returns (floats, numpy and torch scalars, inside lists)
    reach the report as null, in memory, in to_json() and in the saved file."""
    from armetrics.report import to_jsonable

    assert to_jsonable({"a": float("nan"), "b": float("inf"), "c": 1.5}) == {"a": None, "b": None, "c": 1.5}

    @register_probe("_test_nonfinite")
    class NonFinite(Probe):
        """Returns non-finite values."""

        needs_data = False

        def compute(self):
            return ProbeResult(summary={"nan": float("nan"), "inf": float("inf"), "ninf": np.float64(-np.inf),
                                        "one": 1.5},
                               layers=[{"name": "fc", "v": torch.tensor(float("nan")), "vs": [1.0, float("inf")]}])

    try:
        report = am.analyze(tiny_net, None, ["_test_nonfinite"])
    finally:
        _PROBES.pop("_test_nonfinite", None)
    summary = {"nan": None, "inf": None, "ninf": None, "one": 1.5}
    layers = [{"name": "fc", "v": None, "vs": [1.0, None]}]
    assert report.summary("_test_nonfinite") == summary
    for text in (report.to_json(), report.save(tmp_path / "r.json").read_text()):
        entry = _strict_json(text)["probes"]["_test_nonfinite"]
        assert entry["summary"] == summary
        assert entry["layers"] == layers
    assert Report.load(tmp_path / "r.json").summary("_test_nonfinite") == summary


def test_newer_schema_refused(report, tmp_path):
    d = report.to_dict()
    d["schema"] = "armetrics.report/2"
    p = tmp_path / "new.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ReportError, match="newer .* upgrade armetrics"):
        Report.load(p)


@pytest.mark.parametrize("text,match", [
    ("{}", "not an armetrics report"),
    ("[1, 2]", "not an armetrics report"),
    ("not json", "not JSON"),
    ('{"schema": "armetrics.report/1"}', "field 'armetrics_version'"),
])
def test_foreign_files_refused(tmp_path, text, match):
    p = tmp_path / "r.json"
    p.write_text(text)
    with pytest.raises(ReportError, match=match):
        Report.load(p)


def test_missing_probe_named(report):
    with pytest.raises(ReportError, match="has no probe 'margin'"):
        report.summary("margin")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    p.write_text("old")
    import os

    def fail(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]
