"""The probe interface: options bound and range-checked by the base class, state
declared in ``__init__`` or ``setup``, ``state_dict``/``load_state_dict``/``merge``,
the ``"merge"`` reducer on lists and None, timings kept by the engine."""

from __future__ import annotations

import math
from typing import Annotated

import pytest
import torch

import armetrics as am
from armetrics.errors import ConfigError, ProbeError
from armetrics.probe import Batch, Context, Probe, ProbeResult, Range
from armetrics.registry import _PROBES, register_probe
from armetrics.stats import ExactSum, Histogram


class Bounded(Probe):
    name = "_bounded"

    def __init__(self, *, bins: Annotated[int, "bins", Range(1, 100)] = 10,
                 scale: Annotated[float, "scale", Range(0, positive=True)] = 1.0,
                 cap: Annotated[int | None, "cap", Range(1)] = None,
                 label: str = "x"):
        super().__init__()
        self.seen_in_body = (self.bins, self.scale, self.cap, self.label)
        self.label = label.upper()  # the body may normalise a bound value


def test_options_are_bound_before_the_body_runs():
    p = Bounded(bins=3, cap=7)
    assert p.seen_in_body == (3, 1.0, 7, "x")
    assert (p.bins, p.scale, p.cap, p.label) == (3, 1.0, 7, "X")
    assert p.config == {"bins": 3, "scale": 1.0, "cap": 7, "label": "X"}
    assert Bounded.options()["bins"].range == Range(1, 100)
    assert Bounded.options()["label"].range is None


@pytest.mark.parametrize("kwargs, message", [
    ({"bins": 0}, "_bounded.bins must be between 1 and 100, got 0: e.g. --set _bounded.bins=10"),
    ({"bins": 101}, "_bounded.bins must be between 1 and 100, got 101"),
    ({"bins": 2.5}, "_bounded.bins must be an integer, got 2.5"),
    ({"bins": True}, "_bounded.bins must be a finite number, got True"),
    ({"bins": "7"}, "_bounded.bins must be a finite number, got '7'"),
    ({"scale": 0.0}, "_bounded.scale must be > 0, got 0.0"),
    ({"scale": math.inf}, "_bounded.scale must be a finite number, got inf"),
    ({"scale": math.nan}, "_bounded.scale must be a finite number, got nan"),
    ({"cap": 0}, "_bounded.cap must be >= 1, got 0"),
])
def test_out_of_range_options_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        Bounded(**kwargs)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_range_edges_and_unset_optional_pass():
    assert Bounded(bins=1).bins == 1 and Bounded(bins=100).bins == 100
    assert Bounded(cap=None).cap is None and Bounded(scale=1e-300).scale == 1e-300


def test_subclass_without_init_inherits_the_binding():
    class Child(Bounded):
        name = "_child"

    assert Child(bins=4).bins == 4
    with pytest.raises(ConfigError, match="_child.bins must be between 1 and 100"):
        Child(bins=0)


def test_builtin_probes_check_their_ranges_when_built_directly():
    for name, kwargs, needle in (("margin", {"search_steps": 65}, "margin.search_steps must be between 0 and 64"),
                                 ("smoothness", {"radius": -1.0}, "smoothness.radius must be >= 0"),
                                 ("confidence", {"hist_bins": 0}, "confidence.hist_bins must be between 1 and 100000"),
                                 ("robust_accuracy", {"restarts": 0}, "robust_accuracy.restarts must be between 1 and 1000"),
                                 ("spectrum", {"k": 0}, "spectrum.k must be >= 1")):
        with pytest.raises(ConfigError, match=needle):
            am.get_probe(name)(**kwargs)


class PerClass(Probe):
    """Counts per class, declared in setup once the number of classes is known; an
    optional histogram made at the first batch; a list of exact sums."""

    name = "_per_class"

    def __init__(self):
        super().__init__()
        self.add_state("sums", [ExactSum() for _ in range(3)], "merge")
        self.add_state("hist", None, "merge")

    def setup(self, ctx):
        super().setup(ctx)
        self.add_state("counts", torch.zeros(ctx.num_classes, dtype=torch.long), "sum")

    def update(self, batch):
        self.counts += torch.bincount(batch.y, minlength=len(self.counts))
        for i in range(3):
            self.sums[i].update(batch.logits[:, i].double())
        if self.hist is None:
            self.hist = Histogram.linear(-5.0, 5.0, 8)
        self.hist.update(batch.logits[:, 0])

    def compute(self):
        return ProbeResult(summary={"n": int(self.counts.sum())})


def _fed(batches, num_classes=10):
    p = PerClass()
    p.setup(Context(model=None, device=torch.device("cpu"), num_classes=num_classes))
    for x, y, offset in batches:
        p.update(Batch(x=x, y=y, logits=x, features={}, model=None, offset=offset))
    return p


def _batches(n=5):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g), 6 * i) for i in range(n)]


@pytest.mark.parametrize("other_kind", ["probe", "state_dict"])
def test_two_halves_merged_equal_one_run(other_kind):
    b = _batches()
    whole = _fed(b)
    first, second = _fed(b[:2]), _fed(b[2:])
    merged = first.merge(second if other_kind == "probe" else second.state_dict())
    assert torch.equal(merged.counts, whole.counts)
    assert [s.value for s in merged.sums] == [s.value for s in whole.sums]
    assert merged.hist.to_dict() == whole.hist.to_dict()


def test_none_state_merges_as_not_made_yet():
    empty, full = _fed([]), _fed(_batches(2))
    assert empty.hist is None
    assert empty.merge(full.state_dict()).hist.to_dict() == full.hist.to_dict()
    assert _fed(_batches(2)).merge(_fed([])).hist.to_dict() == full.hist.to_dict()
    assert _fed([]).merge(_fed([])).hist is None


def test_load_state_dict_round_trip_and_refusals():
    src = _fed(_batches(3))
    dst = _fed([])
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.counts, src.counts) and dst.hist.to_dict() == src.hist.to_dict()
    dst.counts += 1  # a copy, not the source's tensor
    assert not torch.equal(dst.counts, src.counts)
    unset = PerClass()  # not set up: no "counts" state
    with pytest.raises(ProbeError, match=r"cannot load state .* set up the same way"):
        unset.load_state_dict(src.state_dict())
    with pytest.raises(ProbeError, match="cannot merge state"):
        dst.merge({"sums": []})
    with pytest.raises(ProbeError, match="cannot merge state lists of lengths 3 and 2"):
        dst.merge({**src.state_dict(), "sums": [ExactSum(), ExactSum()]})


def test_engine_keeps_timings_itself(tiny_net, tiny_npz):
    r = am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy", "spectrum"])
    assert all(r.data["probes"][p]["seconds"] >= 0 for p in ("accuracy", "spectrum"))

    seen = []

    @register_probe("_timed")
    class Timed(Probe):
        def update(self, batch):
            seen.append(self)

        def compute(self):
            return ProbeResult(summary={})

    try:
        am.analyze(tiny_net, am.load_data(tiny_npz), ["_timed"])
    finally:
        _PROBES.pop("_timed", None)
    assert seen and not any(k.startswith("_sec") for k in vars(seen[0]))


def test_ranges_are_shown_in_the_probe_listing(cli_inproc):
    assert [str(r) for r in (Range(1, 100), Range(0), Range(0, positive=True), Range(high=5), Range(0, 5, positive=True))] \
        == ["1..100", ">=0", ">0", "<=5", ">0,<=5"]
    out = cli_inproc("probes", "margin").stdout
    assert "--set margin.bins=<int 1..100000>  default 40" in out
    assert "--set margin.logit_range=<float >0>" in out and "--set margin.input=<bool>  default False" in out
