"""The GPU path (issue 20, part 5): every registered probe, and the CLI once, run with
``device="cuda"`` and agree with the same run on the CPU.

Skipped without CUDA. ``ARMETRICS_TEST_DEVICE`` names another device to compare with the
CPU (``cpu`` exercises this file's plumbing on a machine without a GPU; ``mps``).

What "agree" means: TF32 is switched off for the test (cuDNN / cuBLAS would otherwise
round convolutions and matmuls to 10-bit mantissas), so float32 sums differ from the CPU's
only in their order: values from one forward pass (logits, margins, confidence terms,
accuracy) agree to 1e-4 relative. Quantiles come from a sketch with relative bucket
width 2 x 0.5 %: a value on a bucket edge may land in the next bucket, so quantiles get
2 %. Iterative attacks (FAB, PGD bisection) amplify rounding a little: input-space
distances get 1 %. Random draws come from per-sample generators on the run's device, and
CUDA's generator (Philox) draws other numbers than the CPU's (Mersenne Twister) for the
same seed: values that depend on them (smoothness's random directions and PGD, the
random PGD start of robust_accuracy) are compared as estimates of the same quantity.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os

import pytest
import torch

import armetrics as am
from armetrics_testkit import TINY_ARCH, make_tiny_net

DEVICE = os.environ.get("ARMETRICS_TEST_DEVICE", "cuda")


def _available(device: str) -> bool:
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return True


pytestmark = pytest.mark.skipif(not _available(DEVICE), reason=f"needs a {DEVICE} device (torch.cuda.is_available() is false)")

#: small options so each probe runs in seconds
OPTIONS = {
    "margin": {"input": True, "steps": 30},
    "smoothness": {"max_samples": 16, "bootstrap": 50},
    "robust_accuracy": {"restarts": 2},
    "spectrum": {"method": "fft"},
}
#: (probe, fnmatch pattern of summary keys) -> relative tolerance; first match wins, default 1e-4
TOLERANCES = [
    ("margin", "input_margin_*_failed", 0.0),
    ("margin", "input_margin_*", 1e-2),
    ("margin", "*_median", 2e-2), ("margin", "*_q[0-9][0-9]", 2e-2),
    ("confidence", "*", 1e-4),
    ("smoothness", "ratio_worst*", 3e-2), ("smoothness", "logit_ratio_worst*", 3e-2),
    ("smoothness", "n", 0.0),
    ("smoothness", "*", 0.35),  # random directions / PGD: other draws, same quantity
    ("robust_accuracy", "robust*", None),  # compared by count below
    ("robust_accuracy", "attack_success_rate", None),
]
#: summary keys that are not measurements (seconds, convergence diagnostics)
IGNORED = ("power_rel_change_max", "*seconds*")


def _tolerance(probe: str, key: str) -> float | None:
    for p, pattern, tol in TOLERANCES:
        if p == probe and fnmatch.fnmatch(key, pattern):
            return tol
    return 1e-4


@pytest.fixture
def exact_float32():
    """TF32 off for the test (restored afterwards)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run(device: str, data) -> am.Report:
    net = make_tiny_net()
    with torch.no_grad():  # non-trivial BN statistics (as the tiny_net fixture)
        g = torch.Generator().manual_seed(1)
        net.bn.running_mean.copy_(torch.rand(4, generator=g) - 0.5)
        net.bn.running_var.copy_(0.5 + 1.5 * torch.rand(4, generator=g))
    probes = am.list_probes()
    return am.analyze(net.eval(), data, probes, options={p: OPTIONS[p] for p in probes if p in OPTIONS},
                      seed=0, device=device, progress=False)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _compare(probe: str, cpu: dict, dev: dict) -> list[str]:
    """The summary keys of ``probe`` on which the device's run and the CPU's disagree."""
    bad = []
    for key, want in cpu.items():
        got, tol = dev.get(key), _tolerance(probe, key)
        if tol is None or any(fnmatch.fnmatch(key, p) for p in IGNORED):
            continue
        if _missing(want) or _missing(got) or not isinstance(want, (int, float)):
            if _missing(want) != _missing(got) or (not _missing(want) and want != got):
                bad.append(f"{probe}.{key}: cpu {want}, {DEVICE} {got}")
        elif not math.isclose(got, want, rel_tol=tol, abs_tol=1e-6 if tol else 0.0):
            bad.append(f"{probe}.{key}: cpu {want}, {DEVICE} {got} (rel tol {tol})")
    return bad


def test_every_probe_runs_on_the_device_and_agrees_with_the_cpu(tiny_npz, exact_float32):
    data = am.load_data(tiny_npz, n=48, batch_size=16)
    cpu, dev = _run("cpu", data), _run(DEVICE, data)
    assert dev.to_dict()["environment"]["device"].startswith(torch.device(DEVICE).type)
    bad = []
    for probe in am.list_probes():
        bad += _compare(probe, cpu.summary(probe), dev.summary(probe))
    for a, b in zip(cpu.layers("spectrum"), dev.layers("spectrum")):  # weights only: the same numbers
        assert a["name"] == b["name"] and math.isclose(a["sigma_max"], b["sigma_max"], rel_tol=1e-5)
    for a, b in zip(cpu.layers("smoothness"), dev.layers("smoothness")):
        assert a["name"] == b["name"] and math.isclose(a["ratio_worst"], b["ratio_worst"], rel_tol=3e-2), (a, b)
    rc, rd = cpu.summary("robust_accuracy"), dev.summary("robust_accuracy")
    assert rc["correct"] == rd["correct"] and abs(rc["robust"] - rd["robust"]) <= max(2, 0.2 * rc["correct"])
    assert not bad, "\n".join(bad)


def test_pgd_early_exit_on_the_device_equals_the_cpu_given_the_same_starts(exact_float32):
    """The attack itself (random starts drawn on the CPU and moved, so both devices start
    from the same points): the same samples broken, the same points to float rounding."""
    from armetrics.attacks import pgd

    with torch.random.fork_rng():  # the same weights whatever ran before, and the global RNG left alone
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(),
                                  torch.nn.Linear(32, 4)).eval()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)

    def attack(device):
        m = copy.deepcopy(net).to(device)
        gens = [torch.Generator().manual_seed(i) for i in range(32)]  # CPU generators, also for CUDA tensors
        stop = lambda out, t: out.argmax(1) != t  # noqa: E731
        xa = pgd(m, x.to(device), y.to(device), 0.5, norm="L2", steps=10, generator=gens, stop=stop)
        with torch.no_grad():
            return xa.cpu(), (m(xa).argmax(1) != y.to(device)).cpu()

    (xa_c, broken_c), (xa_d, broken_d) = attack("cpu"), attack(DEVICE)
    same = broken_c == broken_d  # a sample within rounding of the boundary may go either way
    assert int((~same).sum()) <= 1 and 0 < int(broken_c.sum()) < 32
    assert torch.allclose(xa_c[same], xa_d[same], atol=1e-4)


def test_cli_runs_on_the_device(cli, tiny_npz, tmp_path, exact_float32):
    ckpt = tmp_path / "tiny.pt"
    torch.save(make_tiny_net().state_dict(), ckpt)
    reports = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / f"{device.replace(':', '_')}.json"
        proc = cli("analyze", str(ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz), "-n", "32",
                   "--probes", "accuracy,margin,confidence,spectrum", "--device", device, "--quiet", "--out", str(out),
                   env={"NVIDIA_TF32_OVERRIDE": "0"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        reports[device] = json.loads(out.read_text())
    assert reports[DEVICE]["environment"]["device"].startswith(torch.device(DEVICE).type)
    for probe in ("accuracy", "margin", "confidence", "spectrum"):
        bad = _compare(probe, reports["cpu"]["probes"][probe]["summary"], reports[DEVICE]["probes"][probe]["summary"])
        assert not bad, "\n".join(bad)
