"""The engine's one forward pass per batch: captured features are the modules' own
outputs, ``needs_input_grad`` hands probes the pass's graph, ``wants_batch`` skips
batches, and ``smoothness`` reads the shared pass instead of running its own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import armetrics as am
from armetrics.probe import Batch, Context, Probe, ProbeResult
from armetrics.registry import _PROBES, register_probe


def inplace_net() -> nn.Module:
    """conv -> ReLU(inplace=True) -> linear: the conv output is overwritten in place."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10)).eval()


@pytest.fixture
def grad_probe():
    """Records, per batch, the graph's gradients of sum(logits) and sum(conv output)
    with respect to the input, and the detached features."""

    @register_probe("_test_grad")
    class GradProbe(Probe):
        needs_input_grad = True

        def __init__(self, *, release_early: bool = False):
            super().__init__()
            self.release_early = release_early
            self.add_state("seen", [], reduce="cat")

        def feature_layers(self):
            return ["0"]

        def update(self, batch: Batch):
            g = batch.graph
            assert g is not None and g.x.requires_grad and not batch.x.requires_grad
            assert torch.equal(g.x.detach(), batch.x)
            assert not batch.logits.requires_grad and not batch.features["0"].requires_grad
            with torch.enable_grad():
                (d_logits,) = torch.autograd.grad(g.logits.sum(), g.x, retain_graph=True)
                (d_conv,) = torch.autograd.grad(g.features["0"].sum(), g.x, retain_graph=True)
            self.seen = self.seen + [{"x": batch.x.clone(), "feature": batch.features["0"].clone(),
                                      "d_logits": d_logits, "d_conv": d_conv, "batch": batch,
                                      "aliases": g.aliases, "calls": dict(g.calls)}]
            if self.release_early:
                batch.release_graph(self)
                assert batch.graph is None or len(batch.graph_users) > 0

        def compute(self):
            return ProbeResult(summary={"batches": len(self.seen)})

    yield GradProbe
    _PROBES.pop("_test_grad", None)


def test_graph_gradients_match_a_separate_backward(tiny_npz, grad_probe):
    model = inplace_net()
    probe = grad_probe()
    am.analyze(model, am.load_data(tiny_npz, batch_size=16), [probe])
    assert len(probe.seen) == 4
    conv = model[0]
    for rec in probe.seen:
        x = rec["x"].clone().requires_grad_()
        model(x).sum().backward()
        torch.testing.assert_close(rec["d_logits"], x.grad, rtol=1e-5, atol=1e-6)
        x2 = rec["x"].clone().requires_grad_()
        conv(x2).sum().backward()  # d sum(conv(x)) / dx: not masked by the ReLU that follows
        torch.testing.assert_close(rec["d_conv"], x2.grad, rtol=1e-5, atol=1e-6)
        assert rec["calls"] == {"0": 1} and rec["aliases"] == frozenset()
        assert rec["batch"].graph is None, "the engine drops the graph after the batch's updates"


def test_features_are_taken_before_inplace_ops(tiny_npz, grad_probe):
    """A feature is the module's own output, not what an in-place ReLU made of it."""
    model = inplace_net()
    probe = grad_probe()
    am.analyze(model, am.load_data(tiny_npz, batch_size=32), [probe])
    with torch.no_grad():
        for rec in probe.seen:
            expected = model[0](rec["x"])
            assert (expected < 0).any()
            torch.testing.assert_close(rec["feature"], expected)


def test_no_graph_without_the_need(tiny_net, tiny_npz):
    seen = []

    @register_probe("_test_nograd")
    class NoGrad(Probe):
        def update(self, batch):
            seen.append((batch.graph, batch.logits.requires_grad, torch.is_grad_enabled()))

        def compute(self):
            return ProbeResult(summary={})

    try:
        am.analyze(tiny_net, am.load_data(tiny_npz, batch_size=32), ["_test_nograd"])
    finally:
        _PROBES.pop("_test_nograd", None)
    assert seen == [(None, False, False)] * 2


def test_graph_kept_until_every_asking_probe_released_it(tiny_npz, grad_probe):
    first = grad_probe(release_early=True)

    class Second(grad_probe):
        name = "_test_grad_second"

    second = Second()
    am.analyze(inplace_net(), am.load_data(tiny_npz, batch_size=32), [first, second])
    assert len(first.seen) == len(second.seen) == 2  # the second still got the graph
    assert all(rec["batch"].graph is None for rec in second.seen)


def test_alias_of_the_model_output(tiny_npz, grad_probe):
    class LastLayer(grad_probe):
        name = "_test_grad_last"

        def feature_layers(self):
            return ["0", "3"]

    probe = LastLayer()
    am.analyze(inplace_net(), am.load_data(tiny_npz, batch_size=64), [probe])
    assert probe.seen[0]["aliases"] == frozenset({"3"})


def test_batches_nobody_wants_are_not_run(tiny_net, tiny_npz, counting):
    model = counting(tiny_net)
    r = am.analyze(model, am.load_data(tiny_npz, batch_size=16), ["smoothness"],
                   options={"smoothness": {"max_samples": 16, "directions": 0, "pgd_steps": 0, "iters": 2,
                                           "bootstrap": 0}})
    assert model.calls == 1  # batch 0 only, and smoothness reads the engine's pass
    assert r.summary("smoothness")["n"] == 16
    assert r.data["run"]["samples"] == 64


@pytest.mark.parametrize("max_samples, calls", [(None, 4), (20, 3)])
def test_smoothness_reads_the_shared_pass(tiny_net, tiny_npz, counting, max_samples, calls):
    """Whole batches use the engine's graph (one forward each); the batch cut by
    max_samples (16 + 4 samples) runs its own forward of the 4 it measures."""
    model = counting(tiny_net)
    opts = {"max_samples": max_samples, "directions": 0, "pgd_steps": 0, "iters": 3, "bootstrap": 0}
    r = am.analyze(model, am.load_data(tiny_npz, batch_size=16), ["smoothness"], options={"smoothness": opts})
    assert model.calls == calls
    # the same numbers as updates fed without a graph (the probe's own forward pass)
    data = am.load_data(tiny_npz, batch_size=16)
    probe = am.get_probe("smoothness")(**opts)
    probe.setup(Context(model=model, device=torch.device("cpu")))
    offset = 0
    for x, y in data:
        with torch.no_grad():
            probe.update(Batch(x=x, y=y, logits=model(x), features={}, model=model, offset=offset))
        offset += len(y)
    own = probe.compute()
    for got, want in zip(r.layers("smoothness"), own.layers):
        assert got["name"] == want["name"]
        assert got["ratio_worst"] == pytest.approx(want["ratio_worst"], rel=1e-6)
    assert r.summary("smoothness")["n"] == own.summary["n"] == (max_samples or 64)
