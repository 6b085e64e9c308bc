"""armetrics.noinit: a build without random fills is only used when the load replaced
every value that depended on them; otherwise the ordinary build runs."""

from __future__ import annotations

import torch
import torch.nn as nn

from armetrics import noinit


class Net(nn.Module):
    def __init__(self, random_buffer: bool = False, replace: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        if replace:  # built, then replaced: its unfilled values are gone with it
            self.fc = nn.Linear(4, 2)
        if random_buffer:  # computed from an in-place random fill, never in a state_dict
            self.register_buffer("proj", torch.empty(4, 4).normal_() * 2.0, persistent=False)

    def forward(self, x):
        z = self.conv(x).mean((2, 3))
        if hasattr(self, "proj"):
            z = z @ self.proj
        return self.fc(z)


def _state():
    torch.manual_seed(0)
    return Net().state_dict()


def _built(**kw):
    ledger = noinit.Ledger()
    with noinit.skipping_init(ledger):
        model = Net(**kw)
    return model, ledger


def test_random_fills_are_skipped_and_the_load_completes_them():
    state = _state()
    model, ledger = _built()
    assert len(ledger.marked) == 4  # conv and fc weight and bias: kaiming_uniform_ / uniform_
    assert not ledger.complete(model)  # nothing loaded yet
    with noinit.recording_writes(ledger):
        model.load_state_dict(state)
    assert ledger.complete(model)
    ref = Net()
    ref.load_state_dict(state)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), ref(x))


def test_the_build_does_not_draw_random_numbers():
    torch.manual_seed(1)
    _built()
    after_skip = torch.rand(3)
    torch.manual_seed(1)
    after_nothing = torch.rand(3)
    torch.manual_seed(1)
    Net()
    after_build = torch.rand(3)
    assert torch.equal(after_skip, after_nothing) and not torch.equal(after_skip, after_build)


def test_a_parameter_the_checkpoint_lacks_is_reported():
    state = _state()
    del state["fc.bias"]
    model, ledger = _built()
    with noinit.recording_writes(ledger):
        model.load_state_dict(state, strict=False)
    assert ledger.unwritten(model) == ["fc.bias"]


def test_a_buffer_computed_from_an_unfilled_tensor_is_reported():
    state = _state()
    model, ledger = _built(random_buffer=True)
    with noinit.recording_writes(ledger):
        model.load_state_dict(state)
    assert ledger.unwritten(model) == ["proj"]


def test_a_replaced_layer_does_not_matter():
    state = _state()
    model, ledger = _built(replace=True)
    assert len(ledger.marked) == 6
    with noinit.recording_writes(ledger):
        model.load_state_dict(state)
    assert ledger.complete(model)


def test_zoo_load_falls_back_to_the_ordinary_build_when_a_value_survives(tmp_path, monkeypatch):
    """An entry whose load leaves a marked tensor unwritten is built again with random
    initialisation: the result equals robustbench's own build and load."""
    from armetrics import _robustbench as rb

    torch.manual_seed(0)
    ref = rb.architecture("Wong2020Fast")
    state = ref.state_dict()
    calls = []
    real = noinit.Ledger.complete
    monkeypatch.setattr(noinit.Ledger, "complete", lambda self, m: calls.append(real(self, m)) or False)
    model = rb.load_from("Wong2020Fast", "cifar10", "Linf", [tmp_path / "w.pt"], lambda _: state)
    assert calls == [True]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))


def test_zoo_load_falls_back_to_the_ordinary_build_when_the_constructor_fails_without_init(tmp_path, monkeypatch):
    """A constructor that checks its initial values (geotorch's orthogonality check in
    Kang2021Stable) fails under skipping_init: the entry is built as robustbench builds it."""
    from armetrics import _robustbench as rb
    from armetrics.errors import LoadError

    torch.manual_seed(0)
    ref = rb.architecture("Wong2020Fast")
    state = ref.state_dict()
    real, calls = rb.build, []

    def build(name, dataset, threat_model):
        calls.append(name)
        if len(calls) == 1:
            raise LoadError(f"robustbench cannot build {name} here: its constructor raised InManifoldError")
        return real(name, dataset, threat_model)

    monkeypatch.setattr(rb, "build", build)
    model = rb.load_from("Wong2020Fast", "cifar10", "Linf", [tmp_path / "w.pt"], lambda _: state)
    assert calls == ["Wong2020Fast", "Wong2020Fast"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))
