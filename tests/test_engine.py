"""The one-pass engine, merge, hooks, accuracy vs a plain loop, model/data checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import armetrics as am
from armetrics.errors import ConfigError, DataError, ProbeError
from armetrics.probe import Batch, Probe, ProbeResult
from armetrics.registry import _PROBES, register_probe
from armetrics.stats import ExactSum, Histogram, QuantileSketch


@pytest.fixture
def feature_probe():
    """A data probe that wants the output of layer ``inner.conv``: sums its values."""

    @register_probe("_test_features")
    class FeatureSum(Probe):
        """Sum of a layer's outputs."""

        def __init__(self, *, layer: str = "inner.conv"):
            super().__init__()
            self.layer = layer
            self.add_state("total", ExactSum(), reduce="merge")
            self.add_state("seen", 0, reduce="sum")

        def feature_layers(self):
            return [self.layer]

        def update(self, batch: Batch):
            self.total.update(batch.features[self.layer].double().sum())
            self.seen += batch.x.shape[0]

        def compute(self):
            return ProbeResult(summary={"total": self.total.value, "seen": self.seen})

    yield FeatureSum
    _PROBES.pop("_test_features", None)


def plain_accuracy(model, data) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in data:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def test_one_forward_per_batch_whatever_the_probes(tiny_net, tiny_npz, feature_probe, counting):
    data = am.load_data(tiny_npz, batch_size=16)
    for probes in (["accuracy"], ["accuracy", "_test_features"]):
        model = counting(tiny_net)
        am.analyze(model, data, probes)
        assert model.calls == len(data) == 4
    assert not model.inner.conv._forward_hooks, "hooks must be removed"


def test_feature_probe_sees_the_layer(tiny_net, tiny_npz, feature_probe, counting):
    data = am.load_data(tiny_npz, batch_size=10)
    model = counting(tiny_net)
    r = am.analyze(model, data, ["_test_features"])
    with torch.no_grad():
        expected = sum(float(tiny_net.conv(x).double().sum()) for x, _ in data)
    assert math.isclose(r.summary("_test_features")["total"], expected, rel_tol=1e-9)
    assert r.summary("_test_features")["seen"] == 64


def test_hooks_removed_on_error(tiny_net, tiny_npz, feature_probe, counting):
    data = am.load_data(tiny_npz)
    with pytest.raises(ConfigError, match="no layer named"):
        am.analyze(counting(tiny_net), data, ["_test_features"], options={"_test_features": {"layer": "nope"}})
    model = counting(tiny_net)

    class Boom(Exception):
        pass

    def explode(*_):
        raise Boom

    model.inner.fc.register_forward_hook(explode)
    with pytest.raises(Boom):
        am.analyze(model, data, ["_test_features"])
    assert not model.inner.conv._forward_hooks


def test_accuracy_equals_plain_loop(tiny_net, tiny_npz):
    data = am.load_data(tiny_npz, batch_size=9)
    r = am.analyze(tiny_net, data, ["accuracy"], options={"accuracy": {"per_class": True}})
    assert r.summary("accuracy")["accuracy"] == plain_accuracy(tiny_net, data)
    rows = r.layers("accuracy")
    assert sum(row["n"] for row in rows) == 64
    ys = np.concatenate([y.numpy() for _, y in data])
    preds = np.concatenate([tiny_net(x).argmax(1).numpy() for x, _ in data])
    for row in rows:
        c = int(row["name"])
        mask = ys == c
        if mask.any():
            assert row["accuracy"] == pytest.approx((preds[mask] == c).mean())


def test_merge_two_halves_equals_one_run(tiny_net, tiny_npz, feature_probe):
    from armetrics.probe import Context

    data = am.load_data(tiny_npz, batch_size=8)
    batches = list(data)

    def run(probe, part):
        probe.setup(Context(model=tiny_net, device=torch.device("cpu")))
        offset = 0
        for x, y in part:
            feats = {"inner.conv": tiny_net.conv(x)}
            with torch.no_grad():
                probe.update(Batch(x=x, y=y, logits=tiny_net(x), features=feats, model=tiny_net, offset=offset))
            offset += len(y)
        return probe

    for cls, kw in ((am.get_probe("accuracy"), {"per_class": True}), (feature_probe, {"layer": "inner.conv"})):
        whole = run(cls(**kw), batches).compute()
        a = run(cls(**kw), batches[:3])
        b = run(cls(**kw), batches[3:])
        merged = a.merge(b).compute()
        assert merged.summary == whole.summary
        assert merged.layers == whole.layers


def test_merge_refuses_other_config():
    acc = am.get_probe("accuracy")
    with pytest.raises(ProbeError, match="another config"):
        acc(per_class=True).merge(acc(per_class=False))


def test_weight_only_never_loads_data(monkeypatch):
    @register_probe("_test_weights")
    class W(Probe):
        """Weights only."""

        needs_data = False

        def compute(self):
            return ProbeResult(summary={"n": float(sum(p.numel() for p in self.ctx.model.parameters()))})

    try:
        import armetrics.engine as eng

        monkeypatch.setattr(eng, "load_data", lambda *a, **k: pytest.fail("data was loaded"))
        r = am.analyze(nn.Linear(3, 2), "cifar10-sample", ["_test_weights"])
        assert r.summary("_test_weights")["n"] == 8
        assert r.to_dict()["data"] is None
    finally:
        _PROBES.pop("_test_weights", None)


def test_wrong_number_of_classes(tiny_npz, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 7))
    with pytest.raises(DataError, match="label 9 is out of range for a model with 7 classes"):
        am.analyze(model, am.load_data(tiny_npz), ["accuracy"])
    with np.load(tiny_npz) as f:  # the same data, declaring its 10 classes
        np.savez(tmp_path / "named.npz", x=f["x"], y=f["y"], classes=np.array([f"c{i}" for i in range(10)]))
    with pytest.raises(DataError, match="outputs 7 classes but the data has 10"):
        am.analyze(model, am.load_data(tmp_path / "named.npz"), ["accuracy"])


def test_input_size_rejected(tiny_npz):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(DataError, match=r"rejected input of shape \(64, 3, 8, 8\)"):
        am.analyze(model, am.load_data(tiny_npz, batch_size=64), ["accuracy"])


def test_unknown_option_and_unselected_probe(tiny_net):
    with pytest.raises(ConfigError, match="valid options: per_class"):
        am.analyze(tiny_net, None, ["accuracy"], options={"accuracy": {"perclass": True}})
    with pytest.raises(ConfigError, match="not selected"):
        am.analyze(tiny_net, None, ["accuracy"], options={"margin": {"bins": 3}})
    with pytest.raises(ConfigError, match="bad value 'maybe'"):
        am.analyze(tiny_net, None, ["accuracy"], options={"accuracy": {"per_class": "maybe"}})


def test_nonfinite_weights_are_flagged(tiny_net, tiny_npz):
    with torch.no_grad():
        tiny_net.fc.weight[0, 0] = float("nan")
    r = am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy"])
    assert r.model["nonfinite_parameters"] == ["fc.weight"]


def test_same_seed_same_report(tiny_net, tiny_npz):
    def strip(d):
        d = dict(d)
        d.pop("created")
        d.pop("run")
        d["probes"] = {k: {**v, "seconds": None} for k, v in d["probes"].items()}
        return d

    a = am.analyze(tiny_net, am.load_data(tiny_npz, n=40, seed=3), ["accuracy"]).to_dict()
    b = am.analyze(tiny_net, am.load_data(tiny_npz, n=40, seed=3), ["accuracy"]).to_dict()
    assert strip(a) == strip(b)


# ---------------------------------------------------------------- streaming statistics
def test_histogram_matches_numpy_and_merges():
    rng = np.random.default_rng(0)
    v = rng.normal(size=1000)
    edges = np.linspace(-2, 2, 9)
    h = Histogram(edges)
    h.update(v[:400])
    h2 = Histogram(edges)
    h2.update(v[400:])
    h.merge(h2)
    counts, _ = np.histogram(v, bins=edges)
    assert h.counts.tolist() == counts.tolist()
    assert h.underflow == int((v < -2).sum()) and h.overflow == int((v > 2).sum())


def test_quantile_sketch_relative_error_and_exact_merge():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(3, 2, 5000), -rng.lognormal(0, 2, 3000), np.zeros(7)])
    rng.shuffle(v)
    s = QuantileSketch(alpha=0.01)
    s.update(v)
    a, b = QuantileSketch(alpha=0.01), QuantileSketch(alpha=0.01)
    a.update(v[:1234])
    b.update(v[1234:])
    a.merge(b)
    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        exact = np.quantile(v, q, method="lower")
        assert abs(s.quantile(q) - exact) <= 0.01 * abs(exact) + 1e-12
        assert a.quantile(q) == s.quantile(q)
    assert a.count == s.count and a.mean == s.mean
    assert s.quantile(0) == v.min() and s.quantile(1) == v.max()


def test_exact_sum_is_order_independent():
    rng = np.random.default_rng(2)
    v = rng.normal(size=3000) * 10.0 ** rng.integers(-8, 8, 3000)
    a = ExactSum()
    a.update(v)
    b, c = ExactSum(), ExactSum()
    b.update(v[::-1][:1000])
    c.update(v[::-1][1000:])
    b.merge(c)
    assert a.value == b.value == math.fsum(v)


# ------------------------------------------------------------------ side effects on the caller
@pytest.fixture
def rng_probe():
    """A data probe that draws from torch's global RNG and notes the modules' modes."""

    @register_probe("_test_rng")
    class RngDraw(Probe):
        """Draws from the global RNG."""

        def __init__(self):
            super().__init__()
            self.add_state("draws", [], reduce="cat")
            self.add_state("training", [], reduce="cat")

        def update(self, batch: Batch):
            self.draws.append(float(torch.rand(())))
            self.training.append(any(m.training for m in batch.model.modules()))

        def compute(self):
            return ProbeResult(summary={"first_draw": self.draws[0], "any_training": float(any(self.training))})

    yield RngDraw
    _PROBES.pop("_test_rng", None)


def test_global_rng_forked_not_reset(tiny_net, tiny_npz, rng_probe):
    data = am.load_data(tiny_npz, batch_size=16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    r = am.analyze(tiny_net, data, ["_test_rng"], seed=7)
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG state must be unchanged"
    torch.manual_seed(7)  # the run itself still sees the RNG seeded with `seed`, as before
    assert r.summary("_test_rng")["first_draw"] == float(torch.rand(()))
    wrong_size = nn.Sequential(nn.Flatten(), nn.Linear(5, 10))
    torch.set_rng_state(state)
    with pytest.raises(DataError):  # restored on error too
        am.analyze(wrong_size, data, ["accuracy"], seed=7)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_modes_restored(tiny_net, tiny_npz, rng_probe):
    data = am.load_data(tiny_npz, batch_size=16)
    model = tiny_net.train()
    model.bn.eval()  # a mixed state: every submodule's own mode comes back
    modes = {name: m.training for name, m in model.named_modules()}
    r = am.analyze(model, data, ["spectrum", "_test_rng"])
    assert r.summary("_test_rng")["any_training"] == 0.0, "the run sees the model in eval mode"
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training and not model.bn.training
    bad = nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(5, 10)).train()
    with pytest.raises(DataError):  # restored on error too
        am.analyze(bad, data, ["accuracy"])
    assert all(m.training for m in bad.modules())


def test_eval_model_stays_in_eval(tiny_net, tiny_npz):
    am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy"])
    assert not any(m.training for m in tiny_net.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_stays_on_device_and_cuda_rng_untouched(tiny_net, tiny_npz):
    torch.cuda.manual_seed_all(5)
    states = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    cpu_state = torch.get_rng_state()
    am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy"], device="cuda:0")
    assert next(tiny_net.parameters()).device.type == "cuda", "the model stays where analyze moved it"
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert all(torch.equal(torch.cuda.get_rng_state(i), s) for i, s in enumerate(states))
