"""Ground truth for the ``margin`` probe and :mod:`armetrics.boundary`.

- logit / probability / normalized margins == a plain Python loop over classes
  (random logits with ties injected), fed through the probe's ``update``;
- summary means exact, quantiles within the sketch's relative error of numpy's,
  histograms == numpy's, merge of two halves == one run;
- spectrally-normalized margin == logit margin / product of the spectrum rows' sigma_max;
- input-space distance of a linear classifier == its analytic distance to the
  (pairwise) hyperplanes, for FAB and for PGD bisection, L2 and Linf;
- margin + confidence + accuracy run in one engine pass (one forward per batch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import armetrics as am
from armetrics.boundary import bisection_distance, boundary_distance, fab_distance
from armetrics.errors import ConfigError
from armetrics.probe import Batch, Context, ProbeResult
from armetrics.probes.margin import SKETCH_ALPHA, Margin, logit_margin, normalized_margin, prob_margin


# ----- helpers ---------------------------------------------------------------------
def loop_margins(logits: torch.Tensor, y: torch.Tensor):
    """Margins by a plain Python loop over classes (float64 arithmetic on Python floats)."""
    lm, pm, nm = [], [], []
    for row, label in zip(logits.tolist(), y.tolist()):
        best_other = -math.inf
        for j, v in enumerate(row):
            if j != label and v > best_other:
                best_other = v
        m = row[label] - best_other
        top = max(row)
        exps = [math.exp(v - top) for v in row]
        s = math.fsum(exps)
        probs = [e / s for e in exps]
        best_p = max(p for j, p in enumerate(probs) if j != label)
        norm = math.sqrt(math.fsum(v * v for v in row))
        lm.append(m)
        pm.append(probs[label] - best_p)
        nm.append(m / norm if norm > 0 else 0.0)
    return np.array(lm), np.array(pm), np.array(nm)


def random_logits(n=300, k=7, seed=0):
    """Random logits with ties: rows where y ties the best other class (margin 0), rows
    where two other classes tie for the max, and all-equal rows (incl. all zero)."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(n, k, generator=g) * 3).round(decimals=1)  # coarse values: natural ties too
    y = torch.randint(0, k, (n,), generator=g)
    y[1::3] = z[1::3].argmax(dim=1)  # a third correctly classified: positive margins
    for i in range(0, n, 10):  # y ties the largest other logit
        others = [j for j in range(k) if j != int(y[i])]
        z[i, int(y[i])] = z[i, others].max()
    for i in range(3, n, 10):  # two other classes tie for the max
        a, b = [j for j in range(k) if j != int(y[i])][:2]
        z[i, a] = z[i, b] = z[i].max() + 1.0
    z[5] = 2.5
    z[15] = 0.0
    return z, y


def batch(logits, y, offset=0, model=None, x=None):
    x = torch.zeros(len(y), 1) if x is None else x
    return Batch(x=x, y=y, logits=logits, features={}, model=model, offset=offset, seed=0)


def lower_quantile(v, q):
    return float(np.quantile(v, q, method="lower"))


# ----- per-sample kernels and the probe on hand-fed logits ---------------------------
def test_margins_equal_python_loop_including_ties():
    z, y = random_logits()
    lm, pm, nm = loop_margins(z, y)
    assert np.array_equal(logit_margin(z, y).numpy(), lm)  # same float64 operations: bit-equal
    np.testing.assert_allclose(prob_margin(z, y).numpy(), pm, rtol=0, atol=1e-14)
    np.testing.assert_allclose(normalized_margin(z, y).numpy(), nm, rtol=0, atol=1e-14)
    ties = lm == 0
    assert ties.sum() >= 30 and (lm < 0).sum() > 50 and (lm > 0).sum() > 50
    assert normalized_margin(z, y)[15] == 0.0  # all-zero logits: 0, not NaN


def test_probe_summary_histograms_and_quantiles():
    z, y = random_logits(n=400, seed=1)
    lm, pm, nm = loop_margins(z, y)
    probe = Margin(bins=20, logit_range=10.0)
    probe.setup(Context(model=nn.Identity(), device=torch.device("cpu")))
    for lo in range(0, 400, 64):
        probe.update(batch(z[lo:lo + 64], y[lo:lo + 64], offset=lo))
    res = probe.compute()
    s = res.summary
    assert s["n"] == 400 and s["n_nonfinite"] == 0
    assert s["frac_negative"] == (lm < 0).mean() and s["frac_zero"] == (lm == 0).mean()
    for prefix, ref in (("logit_margin", lm), ("prob_margin", pm), ("normalized_margin", nm)):
        assert s[f"{prefix}_mean"] == pytest.approx(math.fsum(ref) / len(ref), rel=1e-13, abs=1e-15)
        for key, q in (("median", 0.5), ("q05", 0.05), ("q25", 0.25), ("q75", 0.75), ("q95", 0.95)):
            true = lower_quantile(ref, q)
            assert abs(s[f"{prefix}_{key}"] - true) <= SKETCH_ALPHA * abs(true) + 1e-12, (prefix, key)
    h = res.distributions["logit_margin"]
    counts, edges = np.histogram(lm, bins=20, range=(-10, 10))
    assert h["counts"] == counts.tolist() and np.allclose(h["edges"], edges)
    assert h["underflow"] == int((lm < -10).sum()) and h["overflow"] == int((lm > 10).sum())
    assert h["underflow"] + h["overflow"] > 0  # the test covers out-of-range values
    assert res.distributions["prob_margin"]["counts"] == np.histogram(pm, bins=20, range=(-1, 1))[0].tolist()
    assert "spectral_margin_median" not in s and "spectrum" in res.details["spectral_margin"]


def test_nonfinite_rows_are_counted_and_excluded():
    z, y = random_logits(n=50, seed=2)
    z[7, 0] = float("nan")
    z[8, 1] = float("inf")
    probe = Margin()
    probe.update(batch(z, y))
    s = probe.compute().summary
    keep = torch.isfinite(z).all(dim=1)
    lm, _, _ = loop_margins(z[keep], y[keep])
    assert s["n"] == 50 and s["n_nonfinite"] == 2
    assert s["logit_margin_mean"] == pytest.approx(lm.mean(), rel=1e-13)


def test_merge_of_two_halves_equals_single_run():
    z, y = random_logits(n=256, seed=3)
    whole, a, b = Margin(), Margin(), Margin()
    for lo in range(0, 256, 32):
        bt = batch(z[lo:lo + 32], y[lo:lo + 32], offset=lo)
        whole.update(bt)
        (a if lo < 128 else b).update(bt)
    merged = a.merge(b).compute()
    single = whole.compute()
    assert merged.summary == single.summary  # sketches and exact sums merge exactly
    assert merged.distributions == single.distributions


def test_spectral_margin_uses_the_spectrum_product():
    z, y = random_logits(n=200, seed=4)
    lm, _, _ = loop_margins(z, y)
    spectrum = ProbeResult(summary={}, layers=[{"name": "conv", "sigma_max": 2.0}, {"name": "fc", "sigma_max": 3.5}])
    probe = Margin()
    probe.setup(Context(model=nn.Identity(), device=torch.device("cpu"), results={"spectrum": spectrum}))
    probe.update(batch(z, y))
    res = probe.compute()
    ref = lm / 7.0
    assert res.summary["spectral_margin_mean"] == pytest.approx(ref.mean(), rel=1e-12)
    true_median = lower_quantile(ref, 0.5)
    assert abs(res.summary["spectral_margin_median"] - true_median) <= SKETCH_ALPHA * abs(true_median) + 1e-12
    assert res.details["spectral_margin"]["product"] == 7.0
    assert res.details["spectral_margin"]["layers"] == ["conv", "fc"]


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError):
        Margin(norms=("L3",))
    with pytest.raises(ConfigError):
        Margin(bins=0)
    opts = am.get_probe("margin").options()
    from armetrics.options import coerce
    assert coerce(opts["norms"], "Linf") == ("Linf",)


# ----- input space: linear classifiers with analytic distances -----------------------
def linear_problem(k: int, n: int = 8, seed: int = 0):
    """z = W x + b on 3x4x4 inputs in [0.3, 0.7] (far from the box: clamping never binds)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(48, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, 48, generator=g))
        lin.bias.copy_(torch.randn(k, generator=g))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(n, 3, 4, 4, generator=g)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[0] = (y[0] + 1) % k  # one misclassified sample: distance 0
    return model, x, y


def analytic_distance(model, x, y, norm):
    """Distance to the nearest pairwise hyperplane (w_y - w_j).x + (b_y - b_j) = 0:
    gap / ||w_y - w_j||_2 (L2) or gap / ||w_y - w_j||_1 (Linf, the dual norm)."""
    lin = model[1]
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    out = []
    for xi, yi in zip(x.flatten(1).double(), y.tolist()):
        z = W @ xi + b
        if int(z.argmax()) != yi:
            out.append(0.0)
            continue
        d = math.inf
        for j in range(W.shape[0]):
            if j != yi:
                a = W[yi] - W[j]
                dual = a.norm() if norm == "L2" else a.abs().sum()
                d = min(d, float((z[yi] - z[j]) / dual))
        out.append(d)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("norm", ["L2", "Linf"])
@pytest.mark.parametrize("attack", ["fab", "pgd"])
def test_linear_classifier_distance_is_analytic(k, norm, attack):
    model, x, y = linear_problem(k, seed=k)
    ref = analytic_distance(model, x, y, norm)
    if k == 2:  # the binary formula |w.x + b| / ||w|| with w = w_1 - w_0, b = b_1 - b_0
        lin = model[1]
        w = (lin.weight[1] - lin.weight[0]).detach().double()
        bb = float((lin.bias[1] - lin.bias[0]).detach())
        binary = (x.flatten(1).double() @ w + bb).abs() / (w.norm() if norm == "L2" else w.abs().sum())
        assert torch.allclose(ref[1:], binary[1:], rtol=1e-6)
    assert ref[0] == 0 and (ref[1:] > 1e-3).all()
    res = boundary_distance(model, x, y, norm, attack=attack, max_radius=5.0 if norm == "L2" else 0.25,
                            steps=None if attack == "fab" else 10)
    assert res.found.all()
    assert res.distance[0] == 0
    rel = ((res.distance[1:] - ref[1:]) / ref[1:])
    assert (rel > -1e-4).all(), rel  # an attack proves an upper bound
    # measured: FAB + segment refinement < 2e-6, PGD bisection < 8.4e-4 (its 14-step resolution)
    assert rel.max() < (1e-4 if attack == "fab" else 2e-3), rel


def test_pgd_bisection_untargeted_is_an_upper_bound_and_failures():
    model, x, y = linear_problem(4, seed=7)
    ref = analytic_distance(model, x, y, "L2")
    untargeted = bisection_distance(model, x, y, "L2", max_radius=5.0, targets=0, steps=10)
    assert ((untargeted.distance[1:] - ref[1:]) / ref[1:]).min() > -1e-4  # never below the truth
    radius = float(ref[1:].median()) * 1.001  # about half the correct samples lie beyond
    small = bisection_distance(model, x, y, "L2", max_radius=radius, steps=10)
    beyond = ref > radius
    assert torch.equal(~small.found, beyond) and small.failed == int(beyond.sum()) > 0
    assert torch.isinf(small.distance[~small.found]).all()
    found = small.found.clone()
    found[0] = False
    assert ((small.distance[found] - ref[found]) / ref[found]).abs().max() < 0.01


def test_linearized_targets_pick_the_nearest_hyperplane():
    from armetrics.boundary import linearized_targets

    model, x, y = linear_problem(5, n=16, seed=8)
    lin = model[1]
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    for norm in ("L2", "Linf"):
        got = linearized_targets(model, x, y, norm, 2)
        for i, (xi, yi) in enumerate(zip(x.flatten(1).double(), y.tolist())):
            z = W @ xi + b
            d = {j: float((z[yi] - z[j]) / ((W[yi] - W[j]).norm() if norm == "L2" else (W[yi] - W[j]).abs().sum()))
                 for j in range(5) if j != yi}
            assert got[i].tolist() == sorted(d, key=d.get)[:2]


def test_fab_without_refinement_overshoots_a_little():
    model, x, y = linear_problem(4, seed=4)
    ref = analytic_distance(model, x, y, "Linf")
    raw = fab_distance(model, x, y, "Linf", max_radius=0.25, refine_steps=0)
    rel = (raw.distance[1:] - ref[1:]) / ref[1:]
    assert (rel > 1e-3).all() and (rel < 0.02).all()  # FAB's eta = 1.05 overshoot (~0.5 %)


def test_fab_restarts_are_seeded_and_leave_global_rng_alone():
    model, x, y = linear_problem(3, n=4, seed=3)
    state = torch.get_rng_state()
    a = fab_distance(model, x, y, "L2", max_radius=5.0, steps=20, restarts=2, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    b = fab_distance(model, x, y, "L2", max_radius=5.0, steps=20, restarts=2, seed=11)
    assert torch.equal(a.distance, b.distance)


@pytest.mark.parametrize("attack", ["fab", "pgd"])
def test_probe_input_margin_summary_and_merge(attack):
    model, x, y = linear_problem(4, n=12, seed=5)
    with torch.no_grad():
        logits = model(x)
    opts = dict(input=True, attack=attack, max_l2=5.0, max_linf=0.25, steps=20 if attack == "fab" else 8, search_steps=10)
    whole, a, b = Margin(**opts), Margin(**opts), Margin(**opts)
    for lo in range(0, 12, 6):
        bt = batch(logits[lo:lo + 6], y[lo:lo + 6], offset=lo, model=model, x=x[lo:lo + 6])
        whole.update(bt)
        (a if lo == 0 else b).update(bt)
    res = whole.compute()
    merged = a.merge(b).compute()
    assert merged.summary == res.summary and merged.distributions == res.distributions
    for norm in ("L2", "Linf"):
        ref = analytic_distance(model, x, y, norm).numpy()
        s = res.summary
        assert s[f"input_margin_{norm}_failed"] == 0
        assert s[f"input_margin_{norm}_median"] == pytest.approx(lower_quantile(ref, 0.5), rel=0.03)
        assert s[f"input_margin_{norm}_mean"] == pytest.approx(ref.mean(), rel=0.03)
        hist = res.distributions[f"input_margin_{norm}"]
        assert sum(hist["counts"]) == 12 and hist["edges"][0] == 0.0


def test_input_margin_median_counts_failures_as_infinite():
    model, x, y = linear_problem(2, n=8, seed=9)
    ref = analytic_distance(model, x, y, "Linf")
    radius = float(ref.sort().values[2]) * 1.001  # only the 0 and the two nearest are found
    probe = Margin(input=True, attack="pgd", norms=("Linf",), max_linf=radius, search_steps=12)
    with torch.no_grad():
        probe.update(batch(model(x), y, model=model, x=x))
    s = probe.compute().summary
    assert s["input_margin_Linf_failed"] == 5
    assert s["input_margin_Linf_median"] == math.inf  # more than half are beyond the radius
    assert s["input_margin_Linf_q25"] == pytest.approx(float(ref.sort().values[1]), rel=0.01)


# ----- one engine pass -----------------------------------------------------------------
def test_margin_confidence_accuracy_share_one_forward_per_batch(tiny_net, tiny_npz, counting):
    data = am.load_data(tiny_npz, batch_size=16)
    model = counting(tiny_net)
    report = am.analyze(model, data, probes=["accuracy", "margin", "confidence"], seed=0)
    assert report.to_dict()["run"]["batches"] == 4 == model.calls
    xs, ys = zip(*data.batches())
    with torch.no_grad():
        logits = tiny_net(torch.cat(xs))
    y = torch.cat(ys)
    lm, pm, _ = loop_margins(logits, y)
    m = report.summary("margin")
    acc = report.summary("accuracy")["accuracy"]
    assert m["n"] == 64 and m["logit_margin_mean"] == pytest.approx(lm.mean(), rel=1e-12)
    assert m["prob_margin_mean"] == pytest.approx(pm.mean(), rel=1e-12)
    assert m["frac_negative"] == pytest.approx((lm < 0).mean())
    assert m["frac_negative"] <= 1 - acc <= m["frac_negative"] + m["frac_zero"]
    assert report.summary("confidence")["accuracy"] == acc
    assert set(report.distributions("margin")) == {"logit_margin", "prob_margin", "normalized_margin"}


def test_bisection_runs_stop_at_the_first_flip_and_skip_samples_an_earlier_run_flipped():
    """Per radius, the targeted PGD runs attack only the samples the untargeted run left
    unflipped, and a sample leaves a run at its first misclassified iterate (issue 20's
    early exit): the answer equals "some iterate of some full run is misclassified",
    computed here by rerunning every run on every sample for 0..10 steps, and the
    work shrinks (fewer rows forwarded than the full runs)."""
    from armetrics.attacks import pgd
    from armetrics.boundary import _flips, _targeted, _untargeted, linearized_targets

    model, x, y = linear_problem(4, n=16, seed=6)
    x, y = x[1:], y[1:]  # the correctly classified ones
    ref = analytic_distance(model, x, y, "L2").float()
    eps = torch.where(torch.arange(15) % 2 == 0, ref * 1.02, ref * 0.5)  # half within reach, half not
    tc = linearized_targets(model, x, y, "L2", 2)
    every = torch.zeros(15, dtype=torch.bool)
    runs = ((_untargeted, y), (_targeted, torch.stack([y, tc[:, 0]], 1)), (_targeted, torch.stack([y, tc[:, 1]], 1)))
    for loss, target in runs:
        for k in range(11):  # the iterate after k of the 10 steps
            adv = pgd(model, x, target, eps, norm="L2", steps=k, step_size=2.5 * eps / 10, random_init=False,
                      loss_fn=loss)
            with torch.no_grad():
                every |= model(adv).argmax(1) != y
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        got = _flips(model, x, y, eps, "L2", 10, tc)
    finally:
        handle.remove()
    assert torch.equal(got, every) and 0 < int(got.sum()) < 15
    assert sizes[0] == 15 and sum(sizes) < 3 * 11 * 15 and min(sizes) < 15


def test_fab_leaves_no_parameter_gradients():
    """FAB calls .backward(): the parameters are frozen for the call (no .grad, no weight
    gradients computed) and their requires_grad restored."""
    model, x, y = linear_problem(3, n=6, seed=2)
    assert all(p.requires_grad for p in model.parameters())
    fab_distance(model, x, y, "L2", max_radius=5.0, steps=5)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
