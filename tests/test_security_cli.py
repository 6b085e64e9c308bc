"""Issue 15, the command line and the API boundary: outputs never replace inputs, sweeps
never reuse a stale report, no hang on a half-configured distributed environment, every
bad argument is one line naming the input and the fix (never "unexpected X"), and the
Python API raises armetrics' typed errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import armetrics as am
from armetrics.errors import ArmetricsError, ConfigError, DataError, ReportError
from armetrics_testkit import TESTS_DIR, TINY_ARCH, make_tiny_net


def _tiny_files(tmp: Path) -> tuple[Path, Path]:
    """A tiny checkpoint and a matching 3x8x8 .npz data file."""
    ckpt = tmp / "tiny.pt"
    torch.save(make_tiny_net().state_dict(), ckpt)
    rng = np.random.default_rng(0)
    npz = tmp / "d.npz"
    np.savez(npz, x=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8), y=np.arange(16) % 10)
    return ckpt, npz


def _one_line_error(proc, match: str, code: int = 1) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert match in lines[0], lines[0]
    assert "unexpected" not in lines[0] and "Traceback" not in proc.stderr


# ----------------------------------------------------------------- outputs never replace inputs
def _arch_file(tmp: Path) -> Path:
    nets = tmp / "nets.py"
    nets.write_text(f"import sys\nsys.path.insert(0, {str(TESTS_DIR)!r})\n"
                    "from armetrics_testkit import make_tiny_net\n")
    return nets


@pytest.mark.parametrize("target", ["model", "arch", "data"])
def test_out_onto_an_input_is_refused(tmp_path, cli_inproc, target):
    ckpt, npz = _tiny_files(tmp_path)
    nets = _arch_file(tmp_path)
    victim = {"model": ckpt, "arch": nets, "data": npz}[target]
    before = victim.read_bytes()
    proc = cli_inproc("analyze", str(ckpt), "--arch", f"{nets}:make_tiny_net", "--data", str(npz),
                      "--probes", "accuracy", "--out", str(victim))
    _one_line_error(proc, str(victim))
    assert victim.read_bytes() == before


def test_out_onto_an_image_of_the_data_folder_is_refused(tmp_path, cli_inproc):
    from PIL import Image

    ckpt, _ = _tiny_files(tmp_path)
    for c in range(10):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), c, np.uint8)).save(tmp_path / "imgs" / f"c{c}" / "a.png")
    victim = tmp_path / "imgs" / "c3" / "a.png"
    before = victim.read_bytes()
    proc = cli_inproc("analyze", str(ckpt), "--arch", TINY_ARCH, "--data", str(tmp_path / "imgs"),
                      "--probes", "accuracy", "--out", str(victim))
    _one_line_error(proc, "input directory")
    assert victim.read_bytes() == before


def test_out_through_a_symlink_to_an_input_is_refused(tmp_path, cli_inproc):
    ckpt, npz = _tiny_files(tmp_path)
    link = tmp_path / "r.json"
    link.symlink_to(ckpt)
    before = ckpt.read_bytes()
    proc = cli_inproc("analyze", str(ckpt), "--arch", TINY_ARCH, "--probes", "spectrum", "--out", str(link))
    _one_line_error(proc, "r.json")
    assert ckpt.read_bytes() == before and link.is_symlink()


def test_out_onto_a_fifo_is_refused(tmp_path, cli_inproc):
    ckpt, _ = _tiny_files(tmp_path)
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    proc = cli_inproc("analyze", str(ckpt), "--arch", TINY_ARCH, "--probes", "spectrum", "--out", str(fifo))
    _one_line_error(proc, "FIFO")
    assert fifo.is_fifo()


def test_sweep_report_onto_a_model_is_refused(tmp_path, cli_inproc, tiny_net_factory):
    """--out-dir next to the models: a model named like a report stays a model."""
    ckpt, _ = _tiny_files(tmp_path)
    evil = tmp_path / "victim.json"  # a checkpoint whose report would be tmp_path/victim.json: itself
    torch.save(tiny_net_factory().state_dict(), evil)
    before = evil.read_bytes()
    proc = cli_inproc("analyze", str(ckpt), str(evil), "--arch", TINY_ARCH, "--probes", "spectrum",
                      "--out-dir", str(tmp_path), "--quiet")
    assert proc.returncode == 1
    assert evil.read_bytes() == before
    assert "victim.json" in proc.stdout and "failed" in proc.stdout
    assert (tmp_path / "tiny.json").exists()  # the other model's report is written
    assert "unexpected" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------- sweeps never reuse stale results
def _sweep(cli_inproc, *args):
    proc = cli_inproc("analyze", *args, "--probes", "accuracy", "--quiet")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def test_sweep_redoes_a_model_when_the_data_content_changes(tmp_path, cli_inproc):
    ckpt, npz = _tiny_files(tmp_path)
    out = tmp_path / "reports"
    args = (str(ckpt), "--arch", TINY_ARCH, "--data", str(npz), "--out-dir", str(out))
    assert "ok" in _sweep(cli_inproc, *args)
    assert "skipped" in _sweep(cli_inproc, *args)
    with np.load(npz) as f:
        x, y = f["x"].copy(), f["y"]
    x[0, 0, 0, 0] ^= 1  # one pixel, same path, same size
    np.savez(npz, x=x, y=y)
    assert "skipped" not in _sweep(cli_inproc, *args)


def test_sweep_redoes_a_model_when_the_arch_code_changes(tmp_path, cli_inproc):
    ckpt, npz = _tiny_files(tmp_path)
    nets = _arch_file(tmp_path)
    out = tmp_path / "reports"
    args = (str(ckpt), "--arch", f"{nets}:make_tiny_net", "--data", str(npz), "--out-dir", str(out))
    _sweep(cli_inproc, *args)
    assert "skipped" in _sweep(cli_inproc, *args)
    nets.write_text(nets.read_text() + "# a changed definition\n")
    assert "skipped" not in _sweep(cli_inproc, *args)


def test_sweep_report_names_are_unique_per_model_path(tmp_path, cli_inproc, tiny_net_factory):
    from armetrics.sweep import report_names

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        torch.save(tiny_net_factory().state_dict(), tmp_path / d / "model.pt")
    a, b = str(tmp_path / "a" / "model.pt"), str(tmp_path / "b" / "model.pt")
    names = report_names([a, b])
    assert names[a] != names[b]
    assert report_names([b, a]) == names  # the same name for a path whatever the order
    out = tmp_path / "reports"
    cli_inproc("analyze", a, b, "--arch", TINY_ARCH, "--probes", "spectrum", "--out-dir", str(out), "--quiet")
    reports = {am.Report.load(p).model["source"] for p in out.glob("*.json")}
    assert reports == {a, b}


def test_interrupted_sweep_names_the_report_it_wrote(tmp_path, cli_inproc, monkeypatch):
    from armetrics import sweep

    ckpt, _ = _tiny_files(tmp_path)
    other = tmp_path / "other.pt"
    other.write_bytes(ckpt.read_bytes())
    real = sweep.analyze_one
    calls = []

    def second_is_interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "analyze_one", second_is_interrupted)
    out = tmp_path / "reports"
    proc = cli_inproc("analyze", str(ckpt), str(other), "--arch", TINY_ARCH, "--probes", "spectrum",
                      "--out-dir", str(out), "--quiet")
    assert proc.returncode == 130
    line = proc.stderr.strip().splitlines()[-1]
    assert "tiny.json was written before the interruption" in line and "no report was written" not in line
    assert (out / "tiny.json").exists() and not (out / "other.json").exists()


# ----------------------------------------------------------------- no hang
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_env(timeout: str | None = None) -> dict:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "PYTHONWARNINGS": "ignore"}
    if timeout:
        env["ARMETRICS_DIST_TIMEOUT"] = timeout
    return env


def test_distributed_environment_without_peers_times_out(tmp_path):
    ckpt, _ = _tiny_files(tmp_path)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "armetrics", "analyze", str(ckpt), "--arch", TINY_ARCH,
                           "--probes", "spectrum"], env=_dist_env("2"), capture_output=True, text=True, timeout=120)
    assert time.monotonic() - t < 60
    _one_line_error(proc, "could not join the torch.distributed process group within 2 s")
    assert "WORLD_SIZE=2" in proc.stderr and "torchrun" in proc.stderr


def test_sigterm_ends_a_run_waiting_for_peers(tmp_path):
    ckpt, _ = _tiny_files(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "armetrics", "analyze", str(ckpt), "--arch", TINY_ARCH,
                             "--probes", "spectrum"], env=_dist_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8)  # imports done, waiting in the rendezvous (60 s timeout)
        assert proc.poll() is None
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - t < 20
    finally:
        proc.kill()
    assert proc.returncode != 0


def test_distributed_environment_missing_variables(tmp_path, cli_inproc, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    ckpt, _ = _tiny_files(tmp_path)
    _one_line_error(cli_inproc("analyze", str(ckpt), "--arch", TINY_ARCH, "--probes", "spectrum"),
                    "RANK, MASTER_ADDR, MASTER_PORT are not set")


# ----------------------------------------------------------------- messages
MESSAGES = {
    "--device nope": (["--device", "nope"], "--device 'nope' is not a device"),
    "--seed -1": (["--seed", "-1"], "--seed must be an integer of at least 0"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size must be an integer of at least 1"),
    "logit_range=inf": (["--probes", "margin", "--set", "margin.logit_range=inf"], "finite"),
    "confidence.bins=1e9": (["--probes", "confidence", "--set", "confidence.bins=1000000000"], "between 1 and"),
    "--std nan": (["--mean", "0.5,0.5,0.5", "--std", "nan,1,1"], "--std"),
    "--arch-kwargs list": (["--arch-kwargs", "[1]"], "--arch-kwargs must be a JSON object"),
    "--arch-kwargs deep": (["--arch-kwargs", "[" * 100_000], "nested too deeply"),
    "5000-character value": (["--set", "accuracy.per_class=" + "9" * 5000], "for accuracy.per_class"),
}


@pytest.mark.parametrize("case", list(MESSAGES))
def test_bad_argument_messages(case, tmp_path, cli_inproc):
    ckpt, npz = _tiny_files(tmp_path)
    extra, match = MESSAGES[case]
    args = ["analyze", str(ckpt), "--arch", TINY_ARCH, "--data", str(npz), "--probes", "accuracy", *extra]
    proc = cli_inproc(*args)
    _one_line_error(proc, match)
    assert len(proc.stderr) < 1100  # values echoed in a message are cut


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --device cuda is valid here")
def test_device_cuda_without_a_gpu(tmp_path, cli_inproc):
    ckpt, _ = _tiny_files(tmp_path)
    _one_line_error(cli_inproc("analyze", str(ckpt), "--arch", TINY_ARCH, "--probes", "spectrum", "--device", "cuda"),
                    "no usable CUDA GPU")


def test_newline_in_a_file_name_stays_one_line(tmp_path, cli_inproc):
    bad = tmp_path / "evil\nerror: all is fine.pt"
    bad.write_bytes(b"")
    proc = cli_inproc("analyze", str(bad), "--arch", TINY_ARCH, "--probes", "spectrum")
    _one_line_error(proc, "evil\\nerror: all is fine.pt")


def test_third_party_warnings_only_with_debug(tmp_path, cli):
    noisy = tmp_path / "noisy.py"
    noisy.write_text(f"import sys, warnings\nsys.path.insert(0, {str(TESTS_DIR)!r})\n"
                     "from armetrics_testkit import make_tiny_net\n"
                     "def make():\n    warnings.warn('third-party noise', FutureWarning)\n"
                     "    import logging\n    logging.getLogger('PIL.TiffImagePlugin').error('logged noise')\n"
                     "    return make_tiny_net()\n")
    ckpt, _ = _tiny_files(tmp_path)
    args = ["analyze", str(ckpt), "--arch", f"{noisy}:make", "--probes", "spectrum", "--quiet"]
    env = {"PYTHONWARNINGS": "default"}  # as a user's shell has it
    quiet = cli(*args, env=env)
    assert quiet.returncode == 0 and "third-party noise" not in quiet.stderr and "logged noise" not in quiet.stderr
    loud = cli(*args, "--debug", env=env)
    assert loud.returncode == 0 and "third-party noise" in loud.stderr and "logged noise" in loud.stderr


# ----------------------------------------------------------------- the Python API boundary
@pytest.fixture(scope="module")
def net(tiny_net_factory):
    return tiny_net_factory().eval()


API_CALLS = {
    "analyze probes=None": (lambda net, npz: am.analyze(net, npz, probes=None), ConfigError, "probes must be"),
    "analyze probes=[5]": (lambda net, npz: am.analyze(net, npz, probes=[5]), ConfigError, "probe names"),
    "analyze device='nope'": (lambda net, npz: am.analyze(net, npz, ["accuracy"], device="nope"), ConfigError, "not a device"),
    "analyze data=tensor": (lambda net, npz: am.analyze(net, torch.zeros(2, 3, 8, 8), ["accuracy"]), DataError, "got Tensor"),
    "analyze model=tensor": (lambda net, npz: am.analyze(torch.zeros(2), npz, ["accuracy"]), ConfigError, "nn.Module"),
    "analyze seed=-1": (lambda net, npz: am.analyze(net, npz, ["spectrum"], seed=-1), ConfigError, "seed"),
    "analyze seed='0'": (lambda net, npz: am.analyze(net, npz, ["spectrum"], seed="0"), ConfigError, "seed"),
    "analyze options=5": (lambda net, npz: am.analyze(net, npz, ["accuracy"], options=5), ConfigError, "options must"),
    "analyze options={p: 3}": (lambda net, npz: am.analyze(net, npz, ["margin"], options={"margin": 3}), ConfigError, "options['margin']"),
    "analyze option nan": (lambda net, npz: am.analyze(net, npz, ["margin"], options={"margin": {"logit_range": float("nan")}}), ConfigError, "finite"),
    "analyze progress='yes'": (lambda net, npz: am.analyze(net, npz, ["accuracy"], progress="yes"), ConfigError, "progress"),
    "analyze out_path=3": (lambda net, npz: am.analyze(net, npz, ["spectrum"], out_path=3), ConfigError, "out_path"),
    "Report.load(5)": (lambda net, npz: am.Report.load(5), ReportError, "str or Path"),
    "Report.save(None)": (lambda net, npz: am.analyze(net, npz, ["spectrum"]).save(None), ReportError, "str or Path"),
    "compare(None)": (lambda net, npz: am.compare(None, "cmp"), ReportError, "reports must be"),
    "compare([5])": (lambda net, npz: am.compare([5], "cmp"), ReportError, "reports[0]"),
    "compare out=5": (lambda net, npz: am.compare([am.analyze(net, npz, ["spectrum"])], 5), ConfigError, "out must be"),
    "get_probe(5)": (lambda net, npz: am.get_probe(5), ConfigError, "probe name must be a string"),
    "list_probes(5)": (lambda net, npz: am.list_probes(5), ConfigError, "pattern must be a string"),
}


@pytest.mark.parametrize("case", list(API_CALLS))
def test_api_raises_typed_one_line_errors(case, net, tmp_path):
    _, npz = _tiny_files(tmp_path)
    call, error, match = API_CALLS[case]
    with pytest.raises(error, match=match.replace("[", r"\[").replace("(", r"\(")) as info:
        call(net, str(npz))
    assert "\n" not in str(info.value) and isinstance(info.value, ArmetricsError)
