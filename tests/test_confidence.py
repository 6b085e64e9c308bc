"""Ground truth for the ``confidence`` probe.

- probabilities, entropy, NLL on hand-made logits (uniform -> log K, one-hot-like -> 0,
  a two-class case by hand);
- ECE == torchmetrics' ``MulticlassCalibrationError(n_bins, norm="l1")`` and the
  reliability diagram == a plain Python loop over samples;
- summary means == numpy on the same probabilities, histograms == numpy's;
- merge of two halves == one run; accuracy == the ``accuracy`` probe (NaN rows wrong).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from armetrics.errors import ConfigError
from armetrics.probe import Batch
from armetrics.probes.accuracy import Accuracy
from armetrics.probes.confidence import Confidence, confidence_terms


def batch(logits, y, offset=0):
    return Batch(x=torch.zeros(len(y), 1), y=y, logits=logits, features={}, model=None, offset=offset, seed=0)


def run(logits, y, chunk=64, **opts):
    probe = Confidence(**opts)
    for lo in range(0, len(y), chunk):
        probe.update(batch(logits[lo:lo + chunk], y[lo:lo + chunk], offset=lo))
    return probe


def random_problem(n=600, k=10, seed=0):
    """Logits at several temperatures (over- and under-confident), labels agreeing with
    the argmax about half the time."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * torch.linspace(0.2, 6.0, n)[:, None]
    y = torch.randint(0, k, (n,), generator=g)
    agree = torch.rand(n, generator=g) < 0.5
    y[agree] = z[agree].argmax(dim=1)
    return z, y


def test_hand_made_logits():
    k = 10
    uniform = confidence_terms(torch.zeros(3, k), torch.tensor([0, 4, 9]))
    assert torch.allclose(uniform["entropy"], torch.full((3,), math.log(k), dtype=torch.float64), atol=1e-15)
    assert torch.allclose(uniform["max_prob"], torch.full((3,), 0.1, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(uniform["nll"], torch.full((3,), math.log(k), dtype=torch.float64), atol=1e-14)
    assert uniform["correct"].tolist() == [True, False, False]  # tie -> lowest index, as accuracy

    one_hot = torch.full((2, k), -50.0)
    one_hot[0, 3] = 50.0
    one_hot[1, 7] = 50.0
    t = confidence_terms(one_hot, torch.tensor([3, 2]))
    # p_top = 1 / (1 + 9 e^-100); H = -(p_top log p_top + 9 q log q), q = e^-100 p_top
    q = math.exp(-100) / (1 + 9 * math.exp(-100))
    h = -(1 - 9 * q) * math.log1p(-9 * q) - 9 * q * math.log(q)
    assert t["entropy"][0].item() == pytest.approx(h, rel=1e-12) and h < 1e-40
    assert t["max_prob"].tolist() == [1.0, 1.0] and t["correct"].tolist() == [True, False]
    assert t["nll"][1].item() == pytest.approx(100.0, rel=1e-12)  # -log q = 100 + log(1 + 9e-100)

    two = confidence_terms(torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64), torch.tensor([1]))
    assert two["max_prob"].item() == pytest.approx(0.75, abs=1e-15)
    assert two["true_prob"].item() == pytest.approx(0.25, abs=1e-15)
    assert two["entropy"].item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-15)
    assert two["nll"].item() == pytest.approx(math.log(4.0), abs=1e-15)


@pytest.mark.parametrize("bins", [15, 10, 7])
def test_ece_equals_torchmetrics(bins):
    z, y = random_problem(seed=bins)
    probs = torch.softmax(z.double(), dim=1)
    assert probs.max() < 1.0  # torchmetrics puts confidence exactly 1.0 in an extra bin of its own
    reference = MulticlassCalibrationError(num_classes=10, n_bins=bins, norm="l1")(probs, y).item()
    ece = run(z, y, bins=bins).compute().summary["ece"]
    assert ece == pytest.approx(reference, abs=2e-7)  # torchmetrics returns float32
    assert ece > 0.02  # a non-trivial calibration error is compared


def test_reliability_diagram_and_means_equal_a_python_loop():
    z, y = random_problem(n=500, seed=1)
    res = run(z, y, bins=15, hist_bins=20).compute()
    probs = torch.softmax(z.double(), dim=1).tolist()
    count, correct, conf = [0] * 15, [0] * 15, [[] for _ in range(15)]
    maxp, truep, ent, nll = [], [], [], []
    for p, label in zip(probs, y.tolist()):
        c = max(p)
        b = min(int(c * 15), 14)
        if c < b / 15:  # guard float rounding at edges (never taken for these values)
            b -= 1
        count[b] += 1
        correct[b] += int(p.index(c) == label)
        conf[b].append(c)
        maxp.append(c)
        truep.append(p[label])
        ent.append(-math.fsum(v * math.log(v) for v in p if v > 0))
        nll.append(-math.log(p[label]))
    rel = res.details["reliability"]
    assert [r["count"] for r in rel] == count
    for r, n, k, cs in zip(rel, count, correct, conf):
        if n:
            assert r["accuracy"] == k / n and r["confidence"] == pytest.approx(math.fsum(cs) / n, rel=1e-14)
        else:
            assert r["accuracy"] is None and r["confidence"] is None
    ece = math.fsum(n / 500 * abs(k / n - math.fsum(cs) / n) for n, k, cs in zip(count, correct, conf) if n)
    s = res.summary
    assert s["ece"] == pytest.approx(ece, rel=1e-12)
    assert s["accuracy"] == sum(correct) / 500
    for key, ref in (("max_prob_mean", maxp), ("true_prob_mean", truep), ("entropy_mean", ent), ("nll_mean", nll)):
        assert s[key] == pytest.approx(math.fsum(ref) / 500, rel=1e-12), key
    assert res.distributions["max_prob"]["counts"] == np.histogram(maxp, bins=20, range=(0, 1))[0].tolist()
    assert res.distributions["entropy"]["counts"] == np.histogram(ent, bins=20, range=(0, math.log(10)))[0].tolist()


def test_confidence_one_goes_to_the_last_bin():
    z = torch.tensor([[100.0, 0.0], [0.0, 0.0]])
    res = run(z, torch.tensor([0, 1]), bins=4).compute()
    rel = res.details["reliability"]
    assert rel[3]["count"] == 1 and rel[3]["confidence"] == 1.0 and rel[3]["accuracy"] == 1.0
    assert rel[2]["count"] == 1 and rel[2]["accuracy"] == 0.0  # 0.5 is the lower edge of bin 2
    assert res.summary["ece"] == pytest.approx(0.25)


def test_merge_of_two_halves_equals_single_run():
    z, y = random_problem(n=384, seed=2)
    whole = run(z, y, chunk=48)
    a = run(z[:192], y[:192], chunk=48)
    b = run(z[192:], y[192:], chunk=48)
    merged = a.merge(b).compute()
    single = whole.compute()
    assert merged.summary == single.summary
    assert merged.details == single.details and merged.distributions == single.distributions


def test_accuracy_matches_accuracy_probe_with_nonfinite_rows():
    z, y = random_problem(n=100, seed=3)
    z[4, 2] = float("nan")
    z[9, y[9]] = float("inf")
    conf = run(z, y, chunk=32)
    acc = Accuracy()
    for lo in range(0, 100, 32):
        acc.update(batch(z[lo:lo + 32], y[lo:lo + 32]))
    s = conf.compute().summary
    assert s["accuracy"] == acc.compute().summary["accuracy"]
    assert s["n"] == 100 and s["n_nonfinite"] == 2
    assert sum(r["count"] for r in conf.compute().details["reliability"]) == 98
    assert math.isfinite(s["entropy_mean"]) and math.isfinite(s["ece"])


def test_bad_options():
    with pytest.raises(ConfigError):
        Confidence(bins=0)
