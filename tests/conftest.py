"""Shared fixtures. Import-time helpers live in ``armetrics_testkit.py`` (a plain module
with a unique name); test modules never import this file (pytest imports it itself) and
there is no importable ``tests`` package (robustbench installs a top-level ``tests``
package into site-packages)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from armetrics_testkit import CHECKPOINTS, EXAMPLES, ROOT, TINY_ARCH, TinyNet, make_tiny_net

torch.set_num_threads(1)  # tests use tiny tensors: one thread is faster and avoids oversubscription


@pytest.fixture(scope="session", autouse=True)
def architecture_index(tmp_path_factory):
    """The user's architecture index, for this session: one candidate (torchvision's
    ResNet-18), so that a checkpoint loaded without --arch, here or in a CLI subprocess,
    never builds the whole index (minutes). tests/test_signature.py builds its own."""
    from armetrics import signature

    d = tmp_path_factory.mktemp("architecture-index")
    old = os.environ.get("ARMETRICS_CACHE_DIR")
    os.environ["ARMETRICS_CACHE_DIR"] = str(d)
    signature.build_index(sources=["torchvision"], only="torchvision.models:resnet18".__eq__)
    yield d
    if old is None:
        os.environ.pop("ARMETRICS_CACHE_DIR", None)
    else:
        os.environ["ARMETRICS_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """``examples/`` in the repository."""
    return EXAMPLES


@pytest.fixture(scope="session")
def checkpoints_dir() -> Path:
    """``examples/checkpoints/``: the shipped example checkpoints and their cards."""
    return CHECKPOINTS


@pytest.fixture(scope="session")
def tiny_net_factory():
    """``make_tiny_net(num_classes=10)``: a fresh, seeded TinyNet (3x8x8 inputs)."""
    return make_tiny_net


@pytest.fixture(scope="session")
def tiny_arch() -> str:
    """The ``--arch`` spec that builds ``make_tiny_net`` (``armetrics_testkit.TINY_ARCH``)."""
    return TINY_ARCH


@pytest.fixture
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
    return net


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """64 random 3x8x8 uint8 images with labels 0..9, as an .npz data source."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    y[:10] = np.arange(10)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="session")
def example_model():
    """The shipped standard (eps=0) example checkpoint, loaded."""
    import armetrics as am

    return am.load_model(CHECKPOINTS / "small_cnn_eps0.pt", arch=f"{EXAMPLES / 'models.py'}:small_cnn")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m armetrics ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "armetrics", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    """Run the CLI in a subprocess (real exit codes, real stderr)."""
    return run_cli


@pytest.fixture
def cli_inproc(capsys):
    """Run ``armetrics.cli.main(args)`` in this process (fast); same result shape as ``cli``."""
    from armetrics.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


class _Counting(nn.Module):
    """Wraps a model and counts its forward calls (``.calls``) and, apart, its forward-mode
    (dual-input, JVP) calls (``.jvp_calls``); the wrapped model is ``inner``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.jvp_calls = 0

    def forward(self, x):
        import torch.autograd.forward_ad as fwAD

        if fwAD.unpack_dual(x).tangent is not None:
            self.jvp_calls += 1
        else:
            self.calls += 1
        return self.inner(x)


@pytest.fixture
def counting():
    """``counting(model)`` -> the model wrapped to count forward calls (``.calls``)."""
    return _Counting
