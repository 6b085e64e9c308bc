"""The ``spectrum`` probe end to end: keys, forward order, statistics recomputed from
the saved values and from an independent implementation, summary recomputed from
the layer rows, no data loaded, non-finite weights flagged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import armetrics as am
from armetrics import linalg
from armetrics.errors import ConfigError
from armetrics.probes.spectrum import QUANTILES, spectrum_stats, summarize, values_path

ROW_KEYS = {"name", "type", "weight_shape", "sigma_max", "sigma_min", "mean", "std", "cv", "condition_number",
            "stable_rank", "effective_rank", "count", "folded_bn", "q05", "q25", "q50", "q75", "q95"}
SUMMARY_KEYS = {"cv_mean", "std_mean", "condition_number_median", "sigma_max_max", "sigma_max_product", "log_sigma_max_sum"}


class Net(nn.Module):
    """Defined in another order than it runs: head first, then a grouped conv, then the
    stem conv + BN. Forward order: stem, bn, dw (no BN after it), head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8 * 2 * 2, 10)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        return self.head(self.pool(self.dw(x)).flatten(1))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.bn.running_var.uniform_(0.3, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def no_data(monkeypatch):
    """Fail loudly if anything tries to load data."""
    import armetrics.data
    import armetrics.engine

    def boom(*a, **k):
        raise AssertionError("the spectrum probe loaded data")

    monkeypatch.setattr(armetrics.engine, "load_data", boom)
    monkeypatch.setattr(armetrics.data, "load_data", boom)


def run(model, **options):
    out_path = options.pop("out_path", None)
    return am.analyze(model, None, ["spectrum"], options={"spectrum": options}, out_path=out_path)


def test_probe_is_registered_weight_only():
    cls = am.get_probe("spectrum")
    assert cls.needs_data is False
    assert set(cls.options()) >= {"method", "fold_bn", "layers", "bins", "save_values", "input_size", "k"}


def test_reshape_end_to_end_rows_summary_histograms_and_saved_values(net, no_data, tmp_path):
    report = run(net, bins=7, save_values=True, out_path=tmp_path / "r.json", input_size="3,8,8")
    rows = report.layers("spectrum")
    assert [r["name"] for r in rows] == ["stem", "dw", "head"]  # forward order, not definition order
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
    assert [r["folded_bn"] for r in rows] == ["bn", None, None]
    assert [r["type"] for r in rows] == ["Conv2d", "Conv2d", "Linear"]
    assert rows[1]["weight_shape"] == [8, 2, 3, 3]
    assert [r["count"] for r in rows] == [8, 8, 10]  # groups: 4 x min(2, 18); linear: min(10, 32)

    # the saved values are the linalg values, with the BN folded where the row says so
    path = values_path(tmp_path / "r.json")
    assert not path.exists()  # written by Report.save with the report, not during the run
    report.save(tmp_path / "r.json")
    assert path.name == "r.spectrum.npz" and report.to_dict()["probes"]["spectrum"]["details"]["values_path"] == str(path)
    saved = np.load(path)
    assert sorted(saved.files) == ["dw", "head", "stem"]
    np.testing.assert_allclose(saved["stem"], linalg.singular_values(net.stem, bn=net.bn).numpy(), rtol=1e-12)
    np.testing.assert_allclose(saved["dw"], linalg.singular_values(net.dw).numpy(), rtol=1e-12)

    # row statistics recomputed independently from the values
    for r in rows:
        s = saved[r["name"]]
        assert r["count"] == s.size
        assert r["sigma_max"] == pytest.approx(s.max()) and r["sigma_min"] == pytest.approx(s.min())
        assert r["mean"] == pytest.approx(np.mean(s)) and r["std"] == pytest.approx(np.std(s))
        assert r["cv"] == pytest.approx(np.std(s) / np.mean(s))
        assert r["condition_number"] == pytest.approx(s.max() / s.min())
        assert r["stable_rank"] == pytest.approx(np.linalg.norm(s) ** 2 / s.max() ** 2)
        assert r["effective_rank"] == pytest.approx(math.exp(scipy.stats.entropy(s)))
        assert r["q50"] == pytest.approx(np.median(s))
        hist = report.distributions("spectrum")[r["name"]]
        assert sum(hist["counts"]) == r["count"] and hist["overflow"] == 0 and hist["underflow"] == 0
        assert len(hist["counts"]) == 7 and hist["edges"][0] == 0 and hist["edges"][-1] == pytest.approx(r["sigma_max"])
        assert hist["counts"] == np.histogram(s, bins=np.linspace(0, s.max(), 8))[0].tolist()

    # summary recomputed from the rows
    summ = report.summary("spectrum")
    assert SUMMARY_KEYS <= set(summ)
    assert summ["cv_mean"] == pytest.approx(np.mean([r["cv"] for r in rows]))
    assert summ["std_mean"] == pytest.approx(np.mean([r["std"] for r in rows]))
    assert summ["condition_number_median"] == pytest.approx(np.median([r["condition_number"] for r in rows]))
    assert summ["sigma_max_max"] == pytest.approx(max(r["sigma_max"] for r in rows))
    assert summ["sigma_max_product"] == pytest.approx(np.prod([r["sigma_max"] for r in rows]))
    assert summ["log_sigma_max_sum"] == pytest.approx(np.sum(np.log([r["sigma_max"] for r in rows])))
    assert report.config("spectrum")["method"] == "reshape" and report.to_dict()["data"] is None


def test_weight_only_run_traces_the_input_shape_the_loader_recorded(net, no_data):
    """A zoo ImageNet model analyzed without data is traced on its own input size (the
    loader's ``ModelInfo.input_shape``), not on CIFAR's 32 px; input_size still wins."""
    from armetrics.loading import ModelInfo

    net.armetrics_info = ModelInfo(source="x", name="x", format="module", input_shape=(3, 8, 6))
    rows = run(net, method="fft").layers("spectrum")
    assert [r["input_shape"] for r in rows] == [[3, 8, 6], [8, 8, 6], [32]]
    rows = run(net, method="fft", input_size=[3, 4, 4]).layers("spectrum")
    assert rows[0]["input_shape"] == [3, 4, 4]


def test_fft_and_power_use_traced_input_shapes(net, no_data):
    rows = run(net, method="fft", input_size=[3, 8, 6]).layers("spectrum")
    assert [r["input_shape"] for r in rows] == [[3, 8, 6], [8, 8, 6], [32]]
    assert [r["count"] for r in rows] == [8 * 6 * 3, 8 * 6 * 8, 10]
    ref = linalg.singular_values(net.dw, (8, 8, 6), "fft").double().numpy()
    assert rows[1]["sigma_max"] == pytest.approx(ref.max()) and rows[1]["sigma_min"] == pytest.approx(ref.min())

    rows = run(net, method="power", k=3, input_size=[3, 8, 6]).layers("spectrum")
    assert [r["count"] for r in rows] == [3, 3, 3]
    assert all(r["complete"] is False and r["sigma_min"] is None and r["condition_number"] is None for r in rows)
    ref = linalg.singular_values(net.stem, (3, 8, 6), "power", k=3, bn=net.bn)
    assert rows[0]["sigma_max"] == pytest.approx(float(ref[0]), rel=1e-10)


def test_fold_bn_off_and_layer_globs(net, no_data):
    rows = run(net, fold_bn=False, layers="st*,head").layers("spectrum")
    assert [r["name"] for r in rows] == ["stem", "head"]
    assert rows[0]["folded_bn"] is None
    assert rows[0]["sigma_max"] == pytest.approx(float(linalg.singular_values(net.stem)[0]))
    with pytest.raises(ConfigError, match="matches no Conv2d/Linear"):
        run(net, layers="nothing*")


def test_nonfinite_weights_are_flagged_not_fatal(net, no_data):
    with torch.no_grad():
        net.dw.weight[0, 0, 0, 0] = float("nan")
        net.bn.running_var[0] = -5.0  # sqrt of a negative: the folded stem is non-finite too
    report = run(net, input_size="3,8,8")
    rows = {r["name"]: r for r in report.layers("spectrum")}
    for name in ("dw", "stem"):
        assert rows[name]["nonfinite"] is True and rows[name]["sigma_max"] is None and rows[name]["cv"] is None
        assert name not in report.distributions("spectrum")
    assert rows["head"]["nonfinite"] is False and rows["head"]["sigma_max"] > 0
    summ = report.summary("spectrum")
    assert summ["nonfinite_layers"] == 2 and summ["sigma_max_max"] == pytest.approx(rows["head"]["sigma_max"])


def test_save_values_without_out_path_says_so(net, no_data):
    details = run(net, save_values=True, input_size="3,8,8").to_dict()["probes"]["spectrum"]["details"]
    assert details["values_path"] is None and "not saved" in details["values_note"]


def test_stats_against_hand_values():
    s = np.array([4.0, 2.0, 2.0, 1.0, 0.0])
    st = spectrum_stats(s)
    assert st["sigma_max"] == 4 and st["sigma_min"] == 0 and st["condition_number"] == math.inf
    assert st["mean"] == pytest.approx(1.8) and st["std"] == pytest.approx(math.sqrt((4.84 + 0.04 * 2 + 0.64 + 3.24) / 5))
    assert st["stable_rank"] == pytest.approx((16 + 4 + 4 + 1) / 16)
    p = np.array([4, 2, 2, 1]) / 9
    assert st["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert [st[f"q{round(q * 100):02d}"] for q in QUANTILES] == pytest.approx(np.quantile(s, QUANTILES).tolist())
    ones = spectrum_stats(np.ones(6))  # a flat spectrum: every rank measure is the count
    assert ones["stable_rank"] == pytest.approx(6) and ones["effective_rank"] == pytest.approx(6) and ones["cv"] == 0
    # summary of an empty or all-nonfinite model is NaN, not an exception
    assert math.isnan(summarize([{"name": "x", "sigma_max": None, "nonfinite": True}])["cv_mean"])
