"""Data-parallel analyze under torchrun (gloo) and model sweeps on Ray equal the
single-process results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import armetrics as am

DATA_PROBES = "accuracy,margin,confidence,smoothness"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip(report: dict) -> dict:
    """A report without what legitimately differs between runs (time, run stats)."""
    d = dict(report)
    d.pop("created")
    d.pop("run")
    d.pop("environment")
    d["probes"] = {k: {**v, "seconds": None} for k, v in d["probes"].items()}
    return d


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_net_factory):
    p = tmp_path / "tiny.pt"
    torch.save(tiny_net_factory().state_dict(), p)
    return p


def test_torchrun_two_ranks_equal_one_process(tmp_path, tiny_ckpt, tiny_npz, tiny_arch):
    common = [str(tiny_ckpt), "--arch", tiny_arch, "--data", str(tiny_npz),
              "--batch-size", "16", "--probes", DATA_PROBES, "--quiet",
              "--set", "smoothness.directions=2", "--set", "smoothness.iters=3"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "armetrics", "analyze", *common, "--out", str(tmp_path / "one.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                          "-m", "armetrics", "analyze", *common, "--out", str(tmp_path / "two.json")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one.json").read_text())
    b = json.loads((tmp_path / "two.json").read_text())
    assert b["run"]["world_size"] == 2 and b["run"]["samples"] == 64 == a["run"]["samples"]
    assert strip(a) == strip(b)
    assert two.stdout.count("model tiny") == 1, "only rank 0 prints"


def _sweep(cli_args, out_dir, executor, timeout=600, **popen):
    args = [sys.executable, "-m", "armetrics", "analyze", *cli_args, "--out-dir", str(out_dir), "--quiet",
            "--executor", executor]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(args, env=env, **popen)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def test_ray_sweep_equals_local_and_resumes(tmp_path, tiny_npz, tiny_net_factory, tiny_arch):
    pytest.importorskip("ray")
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        p = tmp_path / f"m{seed}.pt"
        net = tiny_net_factory()
        torch.nn.init.normal_(net.fc.weight, std=0.5 + seed)
        torch.save(net.state_dict(), p)
        models.append(str(p))
    args = [*models, "--arch", tiny_arch, "--data", str(tiny_npz), "--probes", "accuracy,confidence"]
    local = _sweep(args, tmp_path / "local", "local")
    assert local.returncode == 0, local.stderr

    # a Ray sweep interrupted after its first report, then restarted
    out = tmp_path / "ray"
    proc = _sweep(args, out, "ray", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*.json")) and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    first = {p.name for p in out.glob("*.json")}
    assert first, "no report was written before the interruption"
    assert not list(out.glob(".*tmp")), "half-written file left behind"
    for p in out.glob("*.json"):
        am.Report.load(p)  # complete and valid
    again = _sweep(args, out, "ray")
    assert again.returncode == 0, again.stderr
    skipped = again.stdout.count("skipped")
    assert skipped >= len(first) and again.stdout.count(" ok ") + skipped == 3
    for name in ("m0.json", "m1.json", "m2.json"):
        a = json.loads((tmp_path / "local" / name).read_text())
        b = json.loads((out / name).read_text())
        assert strip(a) == strip(b)
        assert a["run"]["fingerprint"] == b["run"]["fingerprint"]


def test_ray_missing_says_how_to_install(tmp_path, tiny_npz, monkeypatch, capsys, tiny_net_factory, tiny_arch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from armetrics.cli import main

    p = tmp_path / "m.pt"
    torch.save(tiny_net_factory().state_dict(), p)
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(p), "--arch", tiny_arch, "--data", str(tiny_npz),
              "--out-dir", str(tmp_path / "o"), "--executor", "ray"])
    assert exc.value.code == 1
    assert "pip install 'armetrics[ray]'" in capsys.readouterr().err
