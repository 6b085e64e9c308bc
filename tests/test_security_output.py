"""Issue 15, the output side: writing reports, side files and comparisons never destroys
what the user owns; every value from a report is escaped (HTML) or neutralised (CSV) and
type-checked when loaded; text from reports is drawn literally; spectrum options are
bounded; a fuzz of type-confused reports through ``Report.load`` + ``compare``.

Every payload is generated here (no committed binaries)."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import socket
import stat
import struct
import time
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import armetrics as am
from armetrics.comparison import MANIFEST, compare
from armetrics.errors import ConfigError, DataError, ReportError
from armetrics.report import Report, atomic_write, check_output_path

MARKUP = "<script>alert(1)</script>\"'&"


# --------------------------------------------------------------------------- report builders
def base_report(name: str = "model_a", **model) -> dict:
    """A small valid report with a spectrum (layers, histograms), margin and confidence
    part, so that compare draws figures from it."""
    layer = {"name": "conv", "type": "Conv2d", "weight_shape": [4, 3, 3, 3], "sigma_max": 2.0, "sigma_min": 0.5,
             "mean": 1.0, "std": 0.4, "cv": 0.4, "condition_number": 4.0, "stable_rank": 2.0, "effective_rank": 3.0,
             "q05": 0.6, "q25": 0.8, "q50": 1.0, "q75": 1.3, "q95": 1.8, "count": 4}
    fc = {**layer, "name": "fc", "type": "Linear", "weight_shape": [10, 16], "sigma_max": 3.0}
    hist = {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [1, 2, 1], "underflow": 0, "overflow": 0}
    return {
        "schema": "armetrics.report/1", "armetrics_version": "0", "created": "2025-01-01T00:00:00Z",
        "model": {"source": f"{name}.pt", "name": name, "sha256": "ab" * 32, "arch": "nets.py:make", **model},
        "data": {"source": "cifar10-sample", "n": 100, "seed": 0, "num_classes": 10},
        "environment": {},
        "probes": {
            "spectrum": {"config": {"method": "reshape", "bins": 3}, "summary": {"cv_mean": 0.4, "sigma_max_max": 3.0},
                         "layers": [layer, fc], "distributions": {"conv": hist, "fc": hist}, "seconds": 0.0},
            "margin": {"config": {"bins": 3}, "summary": {"logit_margin_mean": -1.5},
                       "layers": [], "distributions": {"logit_margin": {"edges": [-2.0, 0.0, 2.0, 4.0], "counts": [3, 5, 2]}},
                       "seconds": 0.0},
            "confidence": {"config": {"bins": 2}, "summary": {"accuracy": 0.5, "ece": 0.1}, "layers": [],
                           "distributions": {"max_prob": hist},
                           "details": {"reliability": [{"confidence": 0.3, "accuracy": 0.2, "count": 4},
                                                       {"confidence": 0.8, "accuracy": 0.9, "count": 6}]},
                           "seconds": 0.0},
        },
    }


def save_json(doc: dict, path: Path) -> Path:
    path.write_text(json.dumps(doc))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "\r" not in text, text
    return text


# =========================================================================== 1. overwrite / destroy
def test_fifo_socket_and_directory_targets_are_refused_and_stay(tmp_path):
    rep = Report(base_report())
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    with pytest.raises(ReportError, match="FIFO") as err:
        rep.save(fifo)
    one_line(err.value)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # not replaced by a regular file
    sock_path = tmp_path / "s.json"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        with pytest.raises(ReportError, match="socket"):
            rep.save(sock_path)
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        sock.close()
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ReportError, match="directory"):
        rep.save(tmp_path / "d.json")
    assert (tmp_path / "d.json").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a device is refused by the check (never written in a test: a regression would replace it)
    with pytest.raises(ReportError, match="character device"):
        check_output_path("/dev/null")


def test_symlink_is_written_through_not_replaced(tmp_path):
    real = tmp_path / "elsewhere" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "r.json"
    link.symlink_to(real)
    Report(base_report()).save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert Report.load(real).model["name"] == "model_a"
    assert listing(tmp_path) == ["elsewhere", "r.json"] and listing(real.parent) == ["real.json"]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        Report(base_report()).save(tmp_path / "r.json")
        res = compare([Report(base_report())], tmp_path / "cmp")
    finally:
        os.umask(old)
    written = [tmp_path / "r.json", res.summary_csv, res.html, *res.figures.values()]
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path.name
    old = os.umask(umask)
    try:
        atomic_write([(tmp_path / "a.csv", "x"), (tmp_path / "b.bin", b"y")])
    finally:
        os.umask(old)
    assert all(stat.S_IMODE(os.stat(tmp_path / n).st_mode) == mode for n in ("a.csv", "b.bin"))


def test_existing_file_keeps_its_mode(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("old")
    os.chmod(p, 0o640)
    old = os.umask(0o077)
    try:
        Report(base_report()).save(p)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640 and Report.load(p)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_renames_nothing_and_leaves_no_temporary(tmp_path, monkeypatch, failure):
    rep = Report(base_report(), files={".spectrum.npz": b"new values"})
    (tmp_path / "r.json").write_text("old report")
    (tmp_path / "r.spectrum.npz").write_bytes(b"old values")
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the report's temporary file, after the side file's
            raise failure
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(ReportError if isinstance(failure, OSError) else KeyboardInterrupt) as err:
        rep.save(tmp_path / "r.json")
    if isinstance(failure, OSError):
        assert "No space left" in one_line(err.value)
    assert (tmp_path / "r.json").read_text() == "old report"
    assert (tmp_path / "r.spectrum.npz").read_bytes() == b"old values"  # the side file was not renamed either
    assert listing(tmp_path) == ["r.json", "r.spectrum.npz"]


def test_stale_temporaries_of_the_target_are_removed(tmp_path):
    stale = tmp_path / ".r.json.k1ll3d_x.tmp"
    stale.write_text("left by a write killed with SIGKILL")
    keep = [tmp_path / ".other.json.abcd1234.tmp", tmp_path / "r.json.tmp", tmp_path / ".r.json.a.b.tmp"]
    for p in keep:
        p.write_text("not a temporary of r.json")
    Report(base_report()).save(tmp_path / "r.json")
    assert not stale.exists()
    assert all(p.exists() for p in keep)
    side = tmp_path / ".r.spectrum.npz.abcd1234.tmp"  # and those of its side files
    side.write_text("left by a killed write")
    Report(base_report(), files={".spectrum.npz": b"v"}).save(tmp_path / "r.json")
    assert not side.exists() and all(p.exists() for p in keep)


def test_outputs_resolving_to_an_input_are_refused(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    arch = tmp_path / "nets.py"
    arch.write_text("def make(): ...")
    data = tmp_path / "d.npz"
    data.write_bytes(b"data")
    inputs = [str(model), str(arch), str(data), None, "robustbench:Standard"]
    (tmp_path / "sub").mkdir()
    os.link(data, tmp_path / "hard.npz")
    (tmp_path / "link.json").symlink_to(arch)
    for out in (model, tmp_path / "sub" / ".." / "m.pt", tmp_path / "hard.npz", tmp_path / "link.json"):
        with pytest.raises(ReportError, match="is the input file") as err:
            check_output_path(out, inputs)
        one_line(err.value)
    check_output_path(tmp_path / "r.json", inputs)  # a new file: fine
    # Report.save refuses to overwrite the files the report names as its inputs
    doc = base_report()
    doc["model"].update(source=str(model), arch=f"{arch}:make")
    doc["data"]["source"] = str(data)
    rep = Report(doc, files={".npz": b"values"})
    assert rep.output_paths(tmp_path / "d.json") == [tmp_path / "d.npz", tmp_path / "d.json"]
    for target in (model, arch, tmp_path / "d.json"):  # d.json's side file d.npz is the data file
        with pytest.raises(ReportError, match="is the input file"):
            rep.save(target)
    with pytest.raises(ReportError, match="is the input file"):
        Report(base_report()).save(tmp_path / "x.json", inputs=[tmp_path / "x.json"])
    assert model.read_bytes() == b"weights" and data.read_bytes() == b"data" and arch.read_text() == "def make(): ..."
    assert not (tmp_path / "d.json").exists()


# =========================================================================== 2. side files
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_failed_run_leaves_the_old_report_and_its_values(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old report")
    (tmp_path / "r.spectrum.npz").write_bytes(b"old values")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "bad.npz", x=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), y=np.arange(8) + 5)
    torch.manual_seed(0)
    with pytest.raises(DataError, match="out of range"):  # spectrum ran first; the data pass fails
        am.analyze(Net(), am.load_data(tmp_path / "bad.npz"), ["spectrum", "accuracy"],
                   options={"spectrum": {"save_values": True}}, out_path=out)
    assert out.read_text() == "old report"
    assert (tmp_path / "r.spectrum.npz").read_bytes() == b"old values"
    assert listing(tmp_path) == ["bad.npz", "r.json", "r.spectrum.npz"]


def test_successful_save_writes_report_and_values_together(tmp_path):
    out = tmp_path / "r.json"
    torch.manual_seed(0)
    rep = am.analyze(Net(), None, ["spectrum"], options={"spectrum": {"save_values": True, "input_size": "3,8,8"}},
                     out_path=out)
    details = rep.to_dict()["probes"]["spectrum"]["details"]
    assert details["values_path"] == str(tmp_path / "r.spectrum.npz")
    assert list(rep.files) == [".spectrum.npz"] and "files" not in rep.to_dict()  # bytes beside the JSON, not in it
    assert listing(tmp_path) == []  # nothing written during the run
    assert rep.output_paths(out) == [tmp_path / "r.spectrum.npz", out]
    rep.save(out)
    values = np.load(tmp_path / "r.spectrum.npz")
    assert sorted(values.files) == ["conv", "fc"]
    for row in rep.layers("spectrum"):
        assert values[row["name"]].max() == pytest.approx(row["sigma_max"])
    again = Report.load(out)
    assert again.to_dict() == rep.to_dict() and again.files == {}
    before = (tmp_path / "r.spectrum.npz").read_bytes()
    again.save(out)  # a loaded report has no side files: the npz is left alone
    assert (tmp_path / "r.spectrum.npz").read_bytes() == before


def test_side_file_suffix_cannot_be_a_path():
    for bad in ("/../../etc/passwd", "npz", ".a/b", ".json", "..x"):
        with pytest.raises(ReportError):
            Report(base_report(), files={bad: b"x"})


# =========================================================================== 3. compare --out
def test_compare_refuses_a_users_file_before_writing_anything(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "summary.csv").write_text("my own table")
    with pytest.raises(ReportError, match=r"summary\.csv.*another --out") as err:
        compare([Report(base_report())], out)
    one_line(err.value)
    assert listing(out) == ["summary.csv"] and (out / "summary.csv").read_text() == "my own table"
    (out / "summary.csv").unlink()
    (out / MANIFEST).write_text("not a manifest")  # a file of the manifest's name armetrics did not write
    with pytest.raises(ReportError, match="did not write"):
        compare([Report(base_report())], out)
    assert listing(out) == [MANIFEST]


def test_compare_replaces_and_removes_only_its_own_files(tmp_path):
    out = tmp_path / "cmp"
    first = compare([Report(base_report("a")), Report(base_report("b"))], out)
    assert {"spectrum_layers.png", "spectrum_distribution.png", "margin_hist.png"} <= set(first.figures)
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    for name in ("summary.csv", "index.html", *first.figures):
        assert manifest[name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    compare([Report(base_report("a")), Report(base_report("b"))], out)  # re-running in place is fine
    (out / "spectrum_layers.png").write_bytes(b"the user edited this figure")  # no longer armetrics'
    (out / "notes.txt").write_text("mine")
    doc = base_report("c")
    del doc["probes"]["spectrum"]
    res = compare([Report(doc)], out)  # draws no spectrum figures
    assert "spectrum_layers.png" not in res.figures
    assert not (out / "spectrum_distribution.png").exists()  # armetrics' stale figure: removed
    assert (out / "spectrum_layers.png").read_bytes() == b"the user edited this figure"  # changed: kept
    assert (out / "notes.txt").read_text() == "mine"
    # the changed file blocks a comparison that would write it
    with pytest.raises(ReportError, match="spectrum_layers.png"):
        compare([Report(base_report("a"))], out)


def test_compare_writes_nothing_when_a_figure_fails(tmp_path, monkeypatch):
    from armetrics import plots

    out = tmp_path / "cmp"
    compare([Report(base_report("a"))], out)
    before = {n: (out / n).read_bytes() for n in listing(out)}

    def boom(series, path):
        raise RuntimeError("drawing failed")

    monkeypatch.setitem(plots.FIGURES, "margin_hist.png", boom)
    with pytest.raises(RuntimeError):
        compare([Report(base_report("b"))], out)
    assert {n: (out / n).read_bytes() for n in listing(out)} == before  # summary.csv not rewritten either


def test_manifest_is_not_read_as_a_report(tmp_path):
    folder = tmp_path / "both"
    Report(base_report("a")).save(folder.mkdir() or folder / "a.json")
    compare([folder], folder)  # the comparison written into the reports' own folder
    assert (folder / MANIFEST).is_file()
    assert compare([folder], folder).models == ["a"]


# =========================================================================== 4. markup / CSV injection, validation
class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]


def test_every_report_value_is_escaped_in_the_page(tmp_path):
    doc = base_report(MARKUP, source=MARKUP, arch=MARKUP, sha256=MARKUP, eps=MARKUP, notes=[MARKUP])
    doc["data"]["source"] = MARKUP
    doc["probes"]["spectrum"]["config"] = {"method": MARKUP, MARKUP: [MARKUP, 1]}
    doc["probes"]["spectrum"]["summary"][MARKUP] = 1.0
    doc["probes"]["spectrum"]["layers"][0]["name"] = MARKUP
    doc["probes"][MARKUP] = {"config": {"x": MARKUP}, "summary": {MARKUP: 2.0}, "layers": [{"name": MARKUP}],
                             "distributions": {}, "seconds": None}
    other = base_report("b")
    other["data"]["source"] = "other"  # different data: a note quoting both sources
    other["probes"]["spectrum"]["config"] = doc["probes"]["spectrum"]["config"]
    res = compare([Report(doc), Report(other)], tmp_path / "cmp")
    page = res.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "alert(1)</" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;" in page
    tags = _Tags()
    tags.feed(page)
    assert "script" not in tags.tags
    assert all(not v or "<" not in v for _, _, v in tags.attrs)
    # markup where a number belongs is refused when the report is loaded, with the field named
    for field in ("n", "seed", "num_classes"):
        bad = base_report()
        bad["data"][field] = MARKUP
        with pytest.raises(ReportError, match=rf"data\.{field}"):
            Report(bad)
        with pytest.raises(ReportError, match=rf"data\.{field}"):
            compare([save_json(bad, tmp_path / f"bad_{field}.json")], tmp_path / f"out_{field}")


def test_csv_cells_cannot_be_formulas_and_numbers_stay_numbers(tmp_path):
    rows_of = {}
    board = json.loads(resources.files("armetrics").joinpath("_data", "robustbench-model-info.json").read_text())
    names = [r["model"] for r in board["models"] if r["dataset"] == "cifar10" and r["threat_model"] == "Linf"][:3]
    reps = []
    for i, (lead, name) in enumerate(zip(("=", "+", "@"), names)):
        doc = base_report(f"{lead}HYPERLINK(\"http://x\")", source=f"robustbench:cifar10/Linf/{name}",
                          sha256="-" + "a" * 63)
        doc["data"]["source"] = "\tcmd|' /C calc'!A0" if i == 0 else "\rx"
        doc["probes"]["margin"]["summary"] = {"=cmd()": -1.5 - i, "-2+3": float(i), "n": -(i + 1)}
        reps.append(Report(doc))
    res = compare(reps, tmp_path / "cmp", against="leaderboard")
    for path in (res.summary_csv, res.correlation_csv):
        with open(path, newline="") as f:
            table = list(csv.reader(f))
        rows_of[path.name] = table
        for row in table:
            for cell in row:
                assert not cell.startswith(("=", "+", "@", "\t", "\r")), (path.name, cell)
                if cell.startswith("-"):
                    float(cell)  # only numbers may start with '-'
    header = rows_of["summary.csv"][0]
    assert "'margin.=cmd()" not in header and "margin.=cmd()" in header  # the column name starts with 'm'
    assert "'margin.-2+3" not in header
    body = [dict(zip(header, r)) for r in rows_of["summary.csv"][1:]]
    assert len(body) == 3  # a carriage return in a cell does not start a row
    assert sorted(r["model"][:2] for r in body) == ["'+", "'=", "'@"]
    assert sorted(float(r["margin.=cmd()"]) for r in body) == [-3.5, -2.5, -1.5]  # negative numbers: numbers
    assert sorted(int(r["margin.n"]) for r in body) == [-3, -2, -1]
    assert all(r["sha256"] == "'-" + "a" * 11 for r in body)
    corr_keys = [r[0] for r in rows_of["correlation.csv"][1:]]
    assert set(corr_keys) == {"margin.=cmd()", "margin.-2+3", "margin.n", "spectrum.cv_mean",
                              "spectrum.sigma_max_max", "confidence.accuracy", "confidence.ece"}
    # a key that itself starts with a formula character is neutralised in the header and in correlation.csv
    doc = base_report("p")
    doc["probes"]["=x"] = {"config": {}, "summary": {"k": 1.0}, "layers": [], "distributions": {}, "seconds": 0}
    res = compare([Report(doc)], tmp_path / "cmp2")
    assert "'=x.k" in res.summary_csv.read_text().splitlines()[0].split(",")


def _set(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


DEEP: list = []
for _ in range(40):
    DEEP = [DEEP]

#: (where, bad value, text the error must contain)
CONFUSED = [
    (("model", "name"), 5, "model.name"),
    (("model", "name"), ["a"], "model.name"),
    (("model", "source"), {"x": 1}, "model.source"),
    (("model", "arch"), 1.5, "model.arch"),
    (("model", "sha256"), [], "model.sha256"),
    (("model", "eps"), [8], "model.eps"),
    (("model", "eps"), "1e-99999999", "model.eps"),  # Fraction() would compute 10**99999999
    (("model", "num_parameters"), "many", "model.num_parameters"),
    (("model", "notes"), "a note", "model.notes"),
    (("data", "source"), 3, "data.source"),
    (("data", "source"), None, "data.source"),
    (("data", "n"), [1, 2], "data.n"),
    (("data", "seed"), 1.5, "data.seed"),
    (("data", "num_classes"), True, "data.num_classes"),
    (("data", "classes"), [1, 2], "data.classes"),
    (("run",), [], "run"),
    (("probes", "margin", "summary", "logit_margin_mean"), "1.0", "summary.logit_margin_mean"),
    (("probes", "margin", "summary", "logit_margin_mean"), [1.0], "summary.logit_margin_mean"),
    (("probes", "margin", "summary", "logit_margin_mean"), 10**400, "summary.logit_margin_mean"),
    (("probes", "margin", "config", "bins"), {"a": 1}, "config.bins"),
    (("probes", "margin", "config", "bins"), [{"a": 1}], "config.bins"),
    (("probes", "margin", "seconds"), "fast", "seconds"),
    (("probes", "margin", "details"), [1], "details"),
    (("probes", "spectrum", "layers", 0, "name"), 7, "name"),
    (("probes", "spectrum", "layers", 0, "sigma_max"), {"v": 1}, "layers[0].sigma_max"),
    (("probes", "spectrum", "layers", 1), "fc", "layer"),
    (("probes", "spectrum", "distributions", "conv", "edges"), "0,1,2", "distributions.conv.edges"),
    (("probes", "spectrum", "distributions", "conv", "counts"), [[1, 2], [3]], "distributions.conv.counts"),
    (("probes", "spectrum", "distributions", "conv", "counts"), [1, 2], "2 counts for 4 edges"),
    (("probes", "spectrum", "distributions", "conv", "counts"), ["1", "2", "3"], "distributions.conv.counts"),
    (("probes", "spectrum", "distributions", "conv", "overflow"), "many", "distributions.conv.overflow"),
    (("probes", "spectrum", "distributions", "fc"), [0, 1], "distributions.fc"),
    (("probes", "confidence", "details", "deep"), DEEP, "nested more than"),
]


@pytest.mark.parametrize("where,bad,words", CONFUSED, ids=[f"{'.'.join(map(str, w))}={type(b).__name__}"
                                                           for w, b, _ in CONFUSED])
def test_type_confused_report_is_refused_naming_the_field(tmp_path, where, bad, words):
    doc = _set(base_report(), where, bad)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError) as err:
        Report.load(path)
    assert words in one_line(err.value) and str(path) in str(err.value)
    with pytest.raises(ReportError):
        compare([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nonfinite_literals_read_as_null(tmp_path):
    text = json.dumps(base_report()).replace('"ece": 0.1', '"ece": NaN').replace('"accuracy": 0.5', '"accuracy": 1e999')
    text = text.replace('"sigma_max_max": 3.0', '"sigma_max_max": -Infinity')
    rep = Report.load(_write(tmp_path / "r.json", text))
    assert rep.summary("confidence") == {"accuracy": None, "ece": None}
    assert rep.summary("spectrum")["sigma_max_max"] is None
    json.loads(rep.to_json())  # strict JSON again
    compare([rep], tmp_path / "cmp")


def test_undecodable_names_are_written_escaped(tmp_path):
    """A file name that is not UTF-8 decodes to lone surrogates; reports keep them (JSON
    escapes them), the outputs show them escaped instead of failing to encode."""
    name = b"model_\xff.pt".decode("utf-8", "surrogateescape")
    doc = base_report(name, source=name)
    doc["data"]["source"] = name
    doc["probes"]["margin"]["summary"][name] = 1.0
    rep = Report.load(_write(tmp_path / "r.json", Report(doc).to_json()))
    assert rep.model["name"] == name
    res = compare([rep], tmp_path / "cmp")
    assert "\\udcff" in res.html.read_text(encoding="utf-8") and "\\udcff" in res.summary_csv.read_text(encoding="utf-8")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# =========================================================================== 5. plots: literal text, many reports
def test_mathtext_in_report_text_is_drawn_literally(tmp_path):
    docs = []
    for name in (r"$\frac{$", "$x^$", r"a$b\sqrt{"):
        doc = base_report(name)
        doc["probes"]["spectrum"]["layers"][0]["name"] = r"$\frac{$"
        doc["probes"]["spectrum"]["distributions"][r"$\frac{$"] = doc["probes"]["spectrum"]["distributions"].pop("conv")
        doc["probes"]["robust_accuracy"] = {"config": {"attack": r"$\frac{$", "norm": "$^$", "eps": 1e308},
                                            "summary": {"robust_accuracy": 0.3, "accuracy": 0.6}, "layers": [],
                                            "distributions": {}, "seconds": 0.0}
        docs.append(Report(doc))
    res = compare(docs, tmp_path / "cmp")
    assert {"spectrum_layers.png", "spectrum_distribution.png", "accuracy_robust.png", "reliability.png"} <= set(res.figures)
    assert res.models == [r"$\frac{$", "$x^$", r"a$b\sqrt{"]


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_many_reports_and_huge_names_stay_quick_and_bounded(tmp_path):
    reps = []
    for i in range(34):
        doc = base_report(f"m{i:02d}_" + ("x" * 20000 if i == 0 else ""))
        doc["probes"]["spectrum"]["layers"][0]["name"] = "L" * 5000
        doc["probes"]["spectrum"]["distributions"]["L" * 5000] = doc["probes"]["spectrum"]["distributions"]["conv"]
        doc["probes"]["confidence"]["summary"]["accuracy"] = i / 40
        reps.append(Report(doc))
    t = time.perf_counter()
    res = compare(reps, tmp_path / "cmp")
    seconds = time.perf_counter() - t
    assert len(res.models) == 34 and seconds < 40, seconds
    for name, path in res.figures.items():
        width, height = _png_size(path)
        assert width < 4000 and height < 20000, (name, width, height)


# =========================================================================== 6. spectrum option bounds
def spectrum(**options):
    (probe,) = am.engine.make_probes(["spectrum"], {"spectrum": options})
    return probe


def test_power_k_beyond_every_layer_is_refused_quickly():
    """conv: 3x8x8 -> 4x8x8, min(192, 256) singular values; fc: 256 -> 10, 10."""
    torch.manual_seed(0)
    t = time.perf_counter()
    with pytest.raises(ConfigError, match=r"spectrum\.k=100000 .*at most 192\b.*spectrum\.k=192") as err:
        am.analyze(Net(), None, ["spectrum"], options={"spectrum": {"method": "power", "k": "100000",
                                                                     "input_size": "3,8,8"}})
    one_line(err.value)
    assert time.perf_counter() - t < 10


def test_power_k_is_clamped_per_layer_and_recorded():
    torch.manual_seed(0)
    rep = am.analyze(Net(), None, ["spectrum"], options={"spectrum": {"method": "power", "k": 40, "input_size": "3,8,8"}})
    rows = {r["name"]: r for r in rep.layers("spectrum")}
    assert rows["conv"]["k"] == 40 and rows["conv"]["count"] == 40 and rows["conv"]["complete"] is False
    assert rows["fc"]["k"] == 10 and rows["fc"]["count"] == 10 and rows["fc"]["complete"] is True  # rank of a 10x256 matrix


@pytest.mark.parametrize("options,match", [
    ({"bins": 10001}, "spectrum.bins"),
    ({"bins": 10**12}, "spectrum.bins"),
    ({"k": 0}, "spectrum.k"),
    ({"input_size": "3,100000,100000"}, "spectrum.input_size"),
    ({"input_size": "100000000,1,1"}, "spectrum.input_size"),
    ({"input_size": "3,0,32"}, "spectrum.input_size"),
    ({"input_size": "3,32"}, "spectrum.input_size"),
])
def test_unbounded_spectrum_options_are_refused(options, match):
    with pytest.raises(ConfigError, match=match) as err:
        spectrum(**options)
    one_line(err.value)


@pytest.mark.parametrize("options", [{"bins": float("nan")}, {"bins": float("inf")}, {"k": float("inf")},
                                     {"k": float("nan")}, {"bins": True}, {"input_size": (3, float("inf"), 8)}])
def test_nonfinite_spectrum_options_are_refused(options):
    from armetrics.probes.spectrum import Spectrum

    with pytest.raises(ConfigError):
        Spectrum(**options)


def test_spectrum_bounds_accept_real_sizes():
    assert spectrum(bins=10000).bins == 10000
    assert spectrum(input_size="3,224,224").input_size == (3, 224, 224)
    assert spectrum(input_size="3,512,512").input_size == (3, 512, 512)


# =========================================================================== 7. fuzz
FUZZ = settings(max_examples=int(os.environ.get("ARMETRICS_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

#: places in the base report a mutation may hit
TARGETS = [
    ("model", "name"), ("model", "source"), ("model", "eps"), ("model", "sha256"), ("model", "arch"),
    ("data",), ("data", "source"), ("data", "n"), ("data", "seed"),
    ("probes", "spectrum", "config", "method"), ("probes", "spectrum", "summary", "cv_mean"),
    ("probes", "spectrum", "layers"), ("probes", "spectrum", "layers", 0), ("probes", "spectrum", "layers", 0, "name"),
    ("probes", "spectrum", "layers", 0, "sigma_max"), ("probes", "spectrum", "layers", 1, "q50"),
    ("probes", "spectrum", "distributions", "conv"), ("probes", "spectrum", "distributions", "conv", "edges"),
    ("probes", "spectrum", "distributions", "conv", "counts"),
    ("probes", "margin", "distributions", "logit_margin", "counts"), ("probes", "margin", "summary"),
    ("probes", "confidence", "details"), ("probes", "confidence", "details", "reliability"),
    ("probes", "confidence", "details", "reliability", 0, "count"), ("probes", "confidence", "summary", "ece"),
    ("probes", "margin", "config", "bins"), ("probes", "margin", "seconds"),
]
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([10**400, -(10**309)])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([MARKUP, r"$\frac{$", "=1+2", "-1", "8/255", "1e-99999999", "\ud800", "x" * 5000, "", "NaN"])
           | st.text(max_size=12))
NASTY = st.recursive(SCALARS, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6) | st.sampled_from(
    ["name", "edges", "counts", "<b>"]), c, max_size=4), max_leaves=12) | st.sampled_from(
    [list(range(20001)), [1.0] * 20000, DEEP, [[1, 2], [3]], {"edges": [0, 1], "counts": [1]},
     {"edges": [0, 1e308, float("inf")], "counts": [1e308, 1e308]}])

#: well-typed but extreme values: they pass validation, so they reach compare and the plots
WEIRD = (st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e308, -1e308, 5e-324, 0.0, 2**1000])
         | st.sampled_from([MARKUP, r"$\frac{$", "=cmd()", "\x1b[2J", "a\nb", "x" * 3000])
         | st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.none(), max_size=60))


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(TARGETS), WEIRD | NASTY), min_size=1, max_size=3))
def test_fuzz_type_confused_reports_load_and_compare(tmp_path_factory, mutations):
    doc = base_report("fuzzed")
    for where, value in mutations:
        try:
            doc = _set(doc, where, value)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed the parent
            pass
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "r.json"
    try:
        path.write_text(json.dumps(doc, allow_nan=True), encoding="utf-8", errors="surrogatepass")
    except ValueError:
        return
    try:
        rep = Report.load(path)
    except ReportError as exc:
        one_line(exc)
        return
    try:
        compare([rep, Report(base_report("other"))], folder / "out")
    except ReportError as exc:
        one_line(exc)
