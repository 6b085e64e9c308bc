"""The cost estimate (armetrics.estimation, ``analyze --estimate``) and the per-probe
progress bars: the machinery, driven by a fake clock, never real timings."""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import pytest
import torch

import armetrics as am
from armetrics import estimation, progress
from armetrics.errors import ConfigError
from armetrics.probe import Batch, Probe, ProbeResult, Range
from armetrics.registry import _PROBES, register_probe
from armetrics_testkit import TINY_ARCH, make_tiny_net


class FakeClock:
    """A clock that moves only when a fake probe works."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class FakeCost(Probe):
    """Costs exactly fixed + per_sample * k fake seconds per batch of k processed samples."""

    name = "fake_cost"

    def __init__(self, *, fixed: Annotated[float, "seconds per batch", Range(0)] = 0.5,
                 per_sample: Annotated[float, "seconds per sample", Range(0)] = 0.1,
                 max_samples: Annotated[int | None, "the first N samples only", Range(1)] = None,
                 every: Annotated[int, "update every N-th batch only", Range(1)] = 1,
                 batch_size: Annotated[int, "the run's batch size (for every)", Range(1)] = 1):
        super().__init__()
        self.add_state("n", 0, "sum")

    def wants_batch(self, offset: int, size: int) -> bool:
        return (offset // self.batch_size) % self.every == 0 and (self.max_samples is None or offset < self.max_samples)

    def update(self, batch: Batch) -> None:
        k = self.samples_in_batch(batch.offset, len(batch.y))
        CLOCK.now += self.fixed + self.per_sample * k
        self.n += k

    def compute(self) -> ProbeResult:
        return ProbeResult(summary={"n": self.n})


class GlobalRandom(Probe):
    """Draws from torch's global RNG in every update (what an estimate must not disturb)."""

    name = "global_random"

    def __init__(self):
        super().__init__()
        self.add_state("total", 0.0, "sum")

    def update(self, batch: Batch) -> None:
        self.total += float(torch.rand(len(batch.y)).sum())

    def compute(self) -> ProbeResult:
        return ProbeResult(summary={"total": self.total})


class Advancing(Probe):
    """Reports its progress per sample from inside update (``batch.advance``), twice as
    much as it has, to show the bar is capped at the batch's samples."""

    name = "advancing"
    seen: list = []

    def update(self, batch: Batch) -> None:
        for _ in range(len(batch.y)):
            batch.advance(2)
        Advancing.seen.append(len(batch.y))

    def compute(self) -> ProbeResult:
        return ProbeResult(summary={})


@pytest.fixture
def data(tiny_npz):
    return am.load_data(tiny_npz, n=64, batch_size=24)  # batches of 24, 24, 16


def _net():
    return make_tiny_net().eval()


def fake_estimate(data, **options):
    return am.estimate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10)), data,
                       [FakeCost(batch_size=data.batch_size, **options)], clock=CLOCK)


# --------------------------------------------------------------------------- the estimate
def test_a_linear_cost_is_predicted_exactly(data):
    est = fake_estimate(data, fixed=0.5, per_sample=0.1)
    assert est.samples == {"fake_cost": 64}
    assert est.seconds["fake_cost"] == pytest.approx(3 * 0.5 + 0.1 * 64, rel=1e-9)
    fit = est.fits["fake_cost"]
    assert fit.fixed == pytest.approx(0.5) and fit.per_sample == pytest.approx(0.1)
    assert est.forward_seconds == 0 and est.data_seconds == 0  # the fake clock moves in the probe only
    assert est.total == pytest.approx(7.9)
    assert str(est).startswith("estimate: fake_cost 7.9s, shared forward 0.0s, total 7.9s (timed on ")
    assert est.note is None


def test_a_cheap_probe_is_timed_on_1_sample_and_the_largest_slice(data):
    est = fake_estimate(data, fixed=0.001, per_sample=0.0001)
    assert est.fits["fake_cost"].sizes == (1, 16)  # the first batch has 24 > max_slice
    assert est.slice_size == 16
    assert est.seconds["fake_cost"] == pytest.approx(3 * 0.001 + 64 * 0.0001, rel=1e-6)


def test_an_expensive_probe_is_timed_on_one_sample(data):
    # the warm-up (5 s) is itself the point; a second slice would cost more than 10% of 8 * 5 s
    est = fake_estimate(data, fixed=0.0, per_sample=5.0, max_samples=8)
    assert est.fits["fake_cost"].sizes == (1,)
    assert est.seconds["fake_cost"] == pytest.approx(8 * 5.0)
    # 64 samples: 10% of 64 * 5 s leaves room for a slice of 5 after the 1-sample run
    est = fake_estimate(data, fixed=0.0, per_sample=5.0)
    assert est.fits["fake_cost"].sizes == (1, 5) and est.seconds["fake_cost"] == pytest.approx(64 * 5.0)


def test_sample_counts_respect_max_samples_and_wants_batch(data):
    est = fake_estimate(data, fixed=0.5, per_sample=0.1, max_samples=30)  # 24 + 6 + 0
    assert est.samples == {"fake_cost": 30}
    assert est.seconds["fake_cost"] == pytest.approx(2 * 0.5 + 30 * 0.1)
    est = fake_estimate(data, fixed=0.5, per_sample=0.1, every=2)  # batches 0 and 2: 24 + 16
    assert est.samples == {"fake_cost": 40}
    assert est.seconds["fake_cost"] == pytest.approx(2 * 0.5 + 40 * 0.1)
    smooth = {"max_samples": 30, "directions": 1, "iters": 1, "pgd_steps": 0, "bootstrap": 0}
    real = am.estimate(_net(), data, ["smoothness", "accuracy"], options={"smoothness": smooth})
    assert real.samples == {"smoothness": 30, "accuracy": 64}


def test_the_long_run_note_names_the_options_that_cut_it(data):
    est = fake_estimate(data, fixed=10.0, per_sample=10.0)
    assert est.total > 600 and est.note is not None
    assert str(est).splitlines()[1] == est.note and "-n N" in est.note
    big = estimation.Estimate(seconds={"accuracy": 1.0, "robust_accuracy": 100.0, "smoothness": 900.0},
                              samples={}, forward_seconds=5.0, data_seconds=1.0)
    note = big.note
    assert note.startswith("note: about 16:47 in all; to cut it: -n N")
    knobs = ["--set smoothness.max_samples=...", "--set smoothness.layers=...", "--set robust_accuracy.steps=..."]
    assert note.index(knobs[0]) < note.index(knobs[1]) < note.index(knobs[2])  # the costliest probe first
    for probe, options in estimation.KNOBS.items():
        assert set(options) <= set(am.get_probe(probe).options()), probe
    small = estimation.Estimate(seconds={"smoothness": 599.0}, samples={}, forward_seconds=0.5, data_seconds=0.0)
    assert small.note is None and "note" not in str(small)


def test_duration_text():
    assert [estimation.duration(s) for s in (0.04, 9.94, 10, 250, 3725, math.inf)] == \
        ["0.0s", "9.9s", "0:10", "4:10", "1:02:05", "?"]


def test_weight_probes_are_listed_as_not_included(data):
    est = am.estimate(_net(), data, ["spectrum", "accuracy"])
    assert est.weight_seconds == {"spectrum": None} and set(est.seconds) == {"accuracy"}
    assert "spectrum not included: weight-only probes are not run" in str(est)
    weights_only = am.estimate(_net(), data, ["spectrum"])
    assert weights_only.total == 0 and weights_only.samples == {}
    assert str(weights_only) == ("estimate: total 0.0s (spectrum not included: weight-only probes are not run "
                                 "for an estimate)")


def test_the_structure_is_deterministic_and_the_caller_state_untouched(data):
    net = _net().train()
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a = am.estimate(net, data, ["accuracy", "margin"], seed=3)
    b = am.estimate(net, data, ["accuracy", "margin"], seed=3)
    assert torch.equal(torch.random.get_rng_state(), before) and net.training
    assert list(a.seconds) == list(b.seconds) == ["accuracy", "margin"]
    assert a.samples == b.samples == {"accuracy": 64, "margin": 64}
    assert list(a.fits) == list(b.fits) and set(a.to_dict()) >= {"seconds", "samples", "total", "fits"}
    assert isinstance(am.estimate, type(am.analyze)) and am.Estimate is estimation.Estimate


def test_the_estimate_changes_no_result(data):
    """Same report numbers with and without the estimate: the probes given as instances
    (the estimate must time fresh copies) and one drawing from torch's global RNG."""
    def run(with_estimate: bool):
        probes = [am.get_probe("accuracy")(), GlobalRandom(), am.get_probe("margin")(),
                  am.get_probe("smoothness")(directions=1, iters=2, pgd_steps=1, max_samples=30, bootstrap=10),
                  am.get_probe("robust_accuracy")(steps=2)]
        seen = []
        report = am.analyze(_net(), data, probes, seed=5, progress=False,
                            on_estimate=seen.append if with_estimate else None)
        return report, seen

    plain, none = run(False)
    estimated, seen = run(True)
    assert none == [] and len(seen) == 1 and seen[0].samples["smoothness"] == 30
    for name in plain.probes:
        a, b = plain.data["probes"][name], estimated.data["probes"][name]
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}, name
    assert plain.files == estimated.files  # the per-sample side file, byte for byte


def test_bad_arguments_are_one_line_errors(data):
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        am.estimate("model.pt", data)
    with pytest.raises(ConfigError, match="max_slice must be an integer of at least 1"):
        am.estimate(_net(), data, max_slice=0)
    with pytest.raises(ConfigError, match="clock must be a function"):
        am.estimate(_net(), data, clock=3.0)
    with pytest.raises(ConfigError, match="on_estimate must be a function"):
        am.analyze(_net(), data, on_estimate="print")


# --------------------------------------------------------------------------- the CLI
@pytest.fixture
def fake_probe_registered():
    register_probe("fake_cost")(FakeCost)
    yield
    _PROBES.pop("fake_cost", None)


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_net):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_net.state_dict(), path)
    return path


def test_estimate_flag_prints_the_estimate_and_writes_nothing(cli_inproc, tiny_ckpt, tiny_npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli_inproc("analyze", str(tiny_ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz),
                      "--probes", "spectrum,accuracy,margin", "--estimate", "--out", "r.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("estimate: accuracy ") and "spectrum not included" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1 and proc.stderr == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_estimate_flag_with_a_long_run_prints_the_note(cli_inproc, tiny_ckpt, tiny_npz, monkeypatch,
                                                       fake_probe_registered):
    monkeypatch.setattr(estimation, "CLOCK", CLOCK)
    proc = cli_inproc("analyze", str(tiny_ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz),
                      "--probes", "fake_cost", "--set", "fake_cost.per_sample=20", "--estimate")
    assert proc.returncode == 0, proc.stderr
    first, note = proc.stdout.strip().splitlines()
    assert first.startswith("estimate: fake_cost 21:20, ")  # 64 samples * 20 s
    assert note.startswith("note: about 21:2") and "-n N" in note


def test_analyze_prints_the_estimate_before_the_pass_unless_quiet(cli_inproc, tiny_ckpt, tiny_npz, tmp_path):
    args = ["analyze", str(tiny_ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz), "--probes", "spectrum,accuracy"]
    proc = cli_inproc(*args, "--out", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stderr.splitlines() if line.startswith("estimate: "))
    assert line.startswith("estimate: spectrum ") and "(ran), accuracy " in line and "not included" not in line
    quiet = cli_inproc(*args, "--quiet")
    assert quiet.returncode == 0 and "estimate" not in quiet.stderr


# --------------------------------------------------------------------------- progress bars
class RecordingBar:
    made: list["RecordingBar"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.closed = kwargs, [], False
        RecordingBar.made.append(self)

    def update(self, k):
        self.updates.append(k)

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.made = []
    monkeypatch.setattr(progress, "make_bar", RecordingBar)
    return RecordingBar.made


def test_one_bar_per_data_probe_counting_its_samples(bars, data):
    probes = [am.get_probe("spectrum")(), am.get_probe("accuracy")(), Advancing(),
              FakeCost(max_samples=30, fixed=0, per_sample=0, batch_size=24)]
    Advancing.seen = []
    am.analyze(_net(), data, probes, progress=True)
    overall, *per_probe = bars
    assert overall.kwargs["desc"] == "analyze" and overall.kwargs["total"] == 64 and overall.updates == [24, 24, 16]
    assert [b.kwargs["desc"] for b in per_probe] == ["accuracy", "advancing", "fake_cost"]
    assert [b.kwargs["position"] for b in per_probe] == [1, 2, 3]
    assert [b.kwargs["total"] for b in per_probe] == [64, 64, 30]
    assert all(b.kwargs["unit"] == "samples" for b in per_probe) and all(b.closed for b in bars)
    accuracy, advancing, fake = per_probe
    assert accuracy.updates == [24, 24, 16]  # credited after each update
    # advance(2) per sample, capped at the batch's samples: the bar moves inside update and never overshoots
    assert advancing.updates == [2] * 12 + [2] * 12 + [2] * 8 and Advancing.seen == [24, 24, 16]
    assert fake.updates == [24, 6]
    assert [sum(b.updates) for b in per_probe] == [b.kwargs["total"] for b in per_probe]


def test_bars_are_off_without_progress(bars, data):
    am.analyze(_net(), data, ["accuracy"], progress=False)
    assert bars == []


def test_bars_draw_on_stderr_when_forced(capsys, data):
    am.analyze(_net(), data, [am.get_probe("accuracy")(), FakeCost(max_samples=30, fixed=0, per_sample=0,
                                                                    batch_size=24)], progress=True)
    err = capsys.readouterr().err
    assert "analyze" in err and "accuracy" in err and "/64 samples  ETA" in err and "/30 samples  ETA" in err


def test_advance_outside_the_engine_does_nothing():
    batch = Batch(x=torch.zeros(2, 1, 1, 1), y=torch.zeros(2, dtype=torch.long), logits=torch.zeros(2, 2),
                  features={}, model=torch.nn.Identity())
    batch.advance(5)
    got = []
    batch.on_advance = got.append
    batch.advance(np.int64(3))
    assert got == [3] and isinstance(got[0], int)
