"""Issue 10: every bad input gives one line `error: ...`, exit 1, no traceback, and
writes or overwrites nothing; fuzzed inputs never escape as unhandled exceptions;
interrupted runs leave the old report intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import armetrics as am
from armetrics.errors import ArmetricsError, ConfigError, ReportError
from armetrics_testkit import CHECKPOINTS, EXAMPLES, TINY_ARCH, make_tiny_net

CKPT = str(CHECKPOINTS / "small_cnn_eps0.pt")
ARCH = f"{EXAMPLES / 'models.py'}:small_cnn"


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _write(p: Path, data: bytes) -> str:
    p.write_bytes(data)
    return str(p)


def _html(tmp: Path) -> list[str]:
    return [_write(tmp / "m.pt", b"<!DOCTYPE html><html><title>Google Drive - Virus scan warning</title></html>"), "--arch", ARCH]


def _truncated(tmp: Path) -> list[str]:
    data = Path(CKPT).read_bytes()
    return [_write(tmp / "m.pt", data[: len(data) // 3]), "--arch", ARCH]


def _zip(tmp: Path) -> list[str]:
    p = tmp / "m.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("weights.txt", "1 2 3")
    return [str(p), "--arch", ARCH]


def _malicious(tmp: Path) -> list[str]:
    p = tmp / "m.pt"
    torch.save({"state_dict": _Payload(str(tmp / "PWNED"))}, p)
    return [str(p), "--arch", ARCH]


def _wrong_arch(tmp: Path) -> list[str]:
    p = tmp / "m.pt"
    torch.save(make_tiny_net().state_dict(), p)
    return [str(p), "--arch", ARCH]


def _tiny(tmp: Path, num_classes: int = 10) -> list[str]:
    p = tmp / "tiny.pt"
    torch.save(make_tiny_net(num_classes).state_dict(), p)
    return [str(p), "--arch", TINY_ARCH, "--arch-kwargs", json.dumps({"num_classes": num_classes})]


def _wrong_classes(tmp: Path) -> list[str]:
    return _tiny(tmp, 7) + ["--data", "cifar10-sample", "-n", "16"]


def _input_size(tmp: Path) -> list[str]:
    p = tmp / "lin.pt"
    torch.save(torch.nn.Linear(12, 10).state_dict(), p)
    return [str(p), "--arch", "torch.nn:Linear", "--arch-kwargs", '{"in_features": 12, "out_features": 10}', "-n", "8"]


def _no_images(tmp: Path) -> list[str]:
    (tmp / "empty" / "cat").mkdir(parents=True)
    return [CKPT, "--arch", ARCH, "--data", str(tmp / "empty")]


def _corrupt_image(tmp: Path) -> list[str]:
    for c in ("cat", "dog"):
        (tmp / "imgs" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp / "imgs" / c / "a.png")
    (tmp / "imgs" / "cat" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return [CKPT, "--arch", ARCH, "--data", str(tmp / "imgs"), "--probes", "accuracy"]


def _labels_out_of_range(tmp: Path) -> list[str]:
    p = tmp / "d.npz"
    np.savez(p, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.array([0, 1, 2, 12]))
    return [CKPT, "--arch", ARCH, "--data", str(p)]


CASES = {
    "empty file": (lambda t: [_write(t / "m.pt", b""), "--arch", ARCH], "is empty"),
    "html page as .pt": (_html, "HTML page"),
    "truncated checkpoint": (_truncated, "truncated or corrupt"),
    "zip not torch": (_zip, "not a torch archive"),
    "malicious pickle": (_malicious, "--trust-pickle"),
    "wrong architecture": (_wrong_arch, "does not fit the architecture"),
    "wrong number of classes": (_wrong_classes, "outputs 7 classes but the data has 10"),
    "input size rejected": (_input_size, "rejected input of shape"),
    "no images": (_no_images, "contains no images"),
    "corrupt image": (_corrupt_image, "cannot decode image"),
    "labels out of range": (_labels_out_of_range, "out of range"),
    "-n 0": (lambda t: [CKPT, "--arch", ARCH, "-n", "0"], "-n must be an integer of at least 1"),
    "unknown probe": (lambda t: [CKPT, "--arch", ARCH, "--probes", "acc"], "unknown probe 'acc'"),
    "unknown option": (lambda t: [CKPT, "--arch", ARCH, "--set", "accuracy.bins=3"], "has no option 'bins'"),
    "malformed --set": (lambda t: [CKPT, "--arch", ARCH, "--set", "accuracy"], "malformed --set"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_matrix(case, tmp_path, cli_inproc):
    make, match = CASES[case]
    args = make(tmp_path)
    out = tmp_path / "report.json"
    out.write_text("previous report")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    proc = cli_inproc("analyze", *args, "--out", str(out), "--quiet")
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.read_text() == "previous report"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a file was written"
    assert not (tmp_path / "PWNED").exists()


def test_nonfinite_weights_flagged_not_crashing(tmp_path, cli_inproc, tiny_net_factory):
    net = tiny_net_factory()
    with torch.no_grad():
        net.conv.weight[0, 0, 0, 0] = float("inf")
    p = tmp_path / "nan.pt"
    torch.save(net.state_dict(), p)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.zeros((8, 8, 8, 3), np.uint8), y=np.arange(8))
    out = tmp_path / "r.json"
    proc = cli_inproc("analyze", str(p), "--arch", TINY_ARCH, "--data", str(npz), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "non-finite weights in conv.weight" in proc.stdout
    assert am.Report.load(out).model["nonfinite_parameters"] == ["conv.weight"]


def test_newer_schema_report_refused(tmp_path):
    r = tmp_path / "r.json"
    r.write_text(json.dumps({"schema": "armetrics.report/7", "probes": {}}))
    with pytest.raises(ReportError, match="newer than this armetrics reads"):
        am.Report.load(r)


# ------------------------------------------------------------------------- fuzzing
FUZZ = settings(max_examples=int(os.environ.get("ARMETRICS_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _valid_checkpoint_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(make_tiny_net().state_dict(), buf)
    return buf.getvalue()


VALID = _valid_checkpoint_bytes()


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=512).map(lambda b: b"PK\x03\x04" + b),
    st.binary(max_size=512).map(lambda b: b"\x80\x02" + b),
    st.binary(max_size=512).map(lambda b: len(b).to_bytes(8, "little") + b"{" + b),
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255), st.integers(1, len(VALID))).map(
        lambda t: (VALID[: t[0]] + bytes([t[1]]) + VALID[t[0] + 1:])[: t[2]]),
))
def test_fuzz_checkpoint_loader(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("fuzz") / "m.pt"
    p.write_bytes(data)
    try:
        am.load_model(p, arch=TINY_ARCH)
    except ArmetricsError as exc:
        assert "\n" not in str(exc)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def _report_like():
    """Mostly-valid reports with random holes and random values, to reach deep checks."""
    base = {"schema": "armetrics.report/1", "armetrics_version": "0", "created": "x", "model": {},
            "data": None, "environment": {}, "probes": {"p": {"config": {}, "summary": {"a": 1.0}, "layers": [],
                                                            "distributions": {}, "seconds": 0.1}}}
    keys = st.sampled_from(["schema", "model", "data", "environment", "probes", "created"])
    return st.tuples(st.dictionaries(keys, JSON, max_size=3), st.dictionaries(
        st.sampled_from(["config", "summary", "layers", "distributions", "seconds"]), JSON, max_size=2)).map(
        lambda t: {**base, **t[0], "probes": {"p": {**base["probes"]["p"], **t[1]}}} if "probes" not in t[0] else {**base, **t[0]})


@FUZZ
@given(doc=st.one_of(JSON, _report_like(), st.text(max_size=200)))
def test_fuzz_report_loader(tmp_path_factory, doc):
    p = tmp_path_factory.mktemp("fuzz") / "r.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    try:
        r = am.Report.load(p)
    except ReportError as exc:
        assert "\n" not in str(exc)
        return
    for name in r.probes:  # a report that loads must be usable
        r.summary(name)
        r.layers(name)


@FUZZ
@given(items=st.lists(st.text(max_size=30), max_size=4))
def test_fuzz_set_parsing(items):
    from armetrics.engine import make_probes
    from armetrics.options import parse_sets

    try:
        make_probes(["accuracy"], parse_sets(items))
    except ConfigError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------ no loss on interruption
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_analyze_keeps_old_report(tmp_path, sig):
    """Interrupt a run in its data pass: exit 130, one line, the old report untouched,
    no temporary file left."""
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    old = out_dir / "small_cnn_eps0.json"
    old.write_text("old report")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "armetrics", "analyze", CKPT, "--arch", ARCH, "--batch-size", "1",
         "--out-dir", str(out_dir), "--probes", "margin", "--set", "margin.input=true"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # a test runner started in the background of a non-interactive shell passes SIGINT
        # on as ignored, and an ignored SIGINT stays ignored: give the child the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stderr.readline()  # "analyzing ...": torch is imported, the model is loading
    assert line.startswith("analyzing"), line
    time.sleep(1.0)
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a run behind
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted (no report was written or changed)"]
    assert old.read_text() == "old report"
    assert [p.name for p in out_dir.iterdir()] == ["small_cnn_eps0.json"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_swallowed_interrupt_still_stops_the_run(monkeypatch, tmp_path, capsys, tiny_net_factory):
    """A Ctrl-C that lands in a __del__ is printed as "Exception ignored" and Python goes
    on; the handler the CLI installs also records it, so the next batch stops the run and
    nothing is written."""
    from armetrics import cli, interrupt

    monkeypatch.setattr(interrupt, "_requested", False)

    class LandsInDel:
        def __del__(self):
            interrupt.request()

    LandsInDel()  # the KeyboardInterrupt raised in __del__ is swallowed here
    assert interrupt._requested
    net = tiny_net_factory()
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 256, (8, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 10, 8))
    with pytest.raises(KeyboardInterrupt):
        am.analyze(net, am.load_data(npz, batch_size=4), ["accuracy"])
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", CKPT, "--arch", ARCH, "--probes", "spectrum", "--out", str(out)])
    assert exit_info.value.code == 130 and not out.exists()
    assert "interrupted" in capsys.readouterr().err


# ------------------------------------------------------------------------- determinism
def _strip(d: dict) -> dict:
    d = dict(d)
    d.pop("created")
    d.pop("run")
    d["probes"] = {k: {**v, "seconds": None} for k, v in d["probes"].items()}
    return d


def test_same_seed_identical_different_seed_differs(tmp_path, tiny_net_factory):
    net = tiny_net_factory()
    npz = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 10, 48))
    opts = {"smoothness": {"max_samples": 6, "iters": 2, "pgd_steps": 1, "bootstrap": 20}}
    probes = ["margin", "confidence", "smoothness"]

    def run(seed, n=None):
        return am.analyze(net, am.load_data(npz, n=n, seed=seed, batch_size=16), probes, options=opts, seed=seed).to_dict()

    assert _strip(run(3)) == _strip(run(3))
    a, b = run(0), run(1)
    # all 48 images either way: data statistics agree, the random directions do not
    assert a["probes"]["margin"]["summary"]["logit_margin_mean"] == pytest.approx(b["probes"]["margin"]["summary"]["logit_margin_mean"], rel=1e-12)
    assert a["probes"]["smoothness"]["summary"]["ratio_random_median"] != b["probes"]["smoothness"]["summary"]["ratio_random_median"]
    # a subset: the seed chooses which images
    c, d = run(0, n=20), run(1, n=20)
    assert c["probes"]["margin"]["summary"]["logit_margin_mean"] != d["probes"]["margin"]["summary"]["logit_margin_mean"]
