"""armetrics.claims: the bootstrap against a direct numpy computation, every verdict
branch on constructed reports, refused pairings (other images, other seeds, other
samples, no side file), and the per-sample side file: its values against a direct
computation on a tiny model, atomic with the report, hostile files refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch

import armetrics as am
from armetrics import bootstrap, claims, samples
from armetrics.errors import ArmetricsError, PairingError, SamplesError
from armetrics.probe import Samples
from armetrics.report import SCHEMA, Report

N = 200


# --------------------------------------------------------------------------- the bootstrap
def direct_paired(a, b, stat, reps, seed):
    """The textbook paired percentile bootstrap, one resample at a time."""
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(reps):
        idx = rng.integers(0, len(a), len(a))
        boots.append(stat(b[idx]) - stat(a[idx]))
    return stat(b) - stat(a), np.quantile(boots, 0.025), np.quantile(boots, 0.975)


@pytest.mark.parametrize("stat, direct", [(bootstrap.mean, np.mean), (bootstrap.median, np.median),
                                          (bootstrap.abs_median, lambda v: np.median(np.abs(v)))])
@pytest.mark.parametrize("block", [bootstrap.BLOCK_VALUES, 7 * 2 * 50])  # one block, and many of 7 resamples
def test_paired_bootstrap_equals_a_direct_numpy_computation(stat, direct, block, monkeypatch):
    monkeypatch.setattr(bootstrap, "BLOCK_VALUES", block)
    rng = np.random.default_rng(1)
    a = rng.normal(size=50)
    b = a + rng.normal(0.3, 0.5, size=50)
    got = bootstrap.paired(a, b, stat, reps=300, seed=5)
    want = direct_paired(a, b, direct, 300, 5)
    assert np.allclose(got, want, rtol=1e-12, atol=0)


def test_single_model_interval_equals_a_direct_numpy_computation():
    values = np.random.default_rng(2).exponential(size=40)
    rng = np.random.default_rng(3)
    boots = [np.mean(values[rng.integers(0, 40, 40)]) for _ in range(500)]
    got = bootstrap.interval(values, bootstrap.mean, reps=500, seed=3)
    assert np.allclose(got, (values.mean(), np.quantile(boots, 0.025), np.quantile(boots, 0.975)), rtol=1e-12)


def test_the_bootstrap_is_paired():
    """b = a + 1 on the same samples: every paired resample differs by exactly 1 (an
    unpaired bootstrap of two independent resamples would give a wide interval)."""
    a = np.random.default_rng(0).normal(size=100)
    diff, lo, hi = bootstrap.paired(a, a + 1.0, bootstrap.mean, reps=200)
    assert diff == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)


def test_per_layer_statistic_gives_an_interval_per_layer():
    rng = np.random.default_rng(4)
    a = rng.normal(1.0, 0.1, size=(30, 3, 1))
    b = a * np.array([0.5, 1.0, 2.0])[None, :, None]
    diff, lo, hi = bootstrap.paired(a, b, lambda x: x[..., 0].mean(axis=1), reps=100)
    assert diff.shape == lo.shape == (3,)
    assert hi[0] < 0 and lo[2] > 0 and lo[1] == hi[1] == pytest.approx(0.0)


# --------------------------------------------------------------------------- constructed reports
def make_report(name="standard", eps="0", *, correct=None, max_prob=None, entropy=None, margin=None,
                spectrum=None, smooth=None, content="npz:" + "ab" * 32, seed=0, source_index=None) -> Report:
    """A report with the given per-sample values (arrays of length N), ``spectrum``
    layer rows ({name: {key: value}}) and ``smooth`` per-sample ratios ({key: (m, L)})."""
    rng = np.random.default_rng(0)
    correct = rng.random(N) < 0.8 if correct is None else np.asarray(correct, bool)
    max_prob = rng.uniform(0.5, 1.0, N) if max_prob is None else np.asarray(max_prob, float)
    entropy = rng.uniform(0.1, 1.0, N) if entropy is None else np.asarray(entropy, float)
    margin = rng.normal(2.0, 1.0, N) if margin is None else np.asarray(margin, float)
    per_probe = {"accuracy": Samples(np.arange(N), {"correct": correct}),
                 "confidence": Samples(np.arange(N), {"max_prob": max_prob, "entropy": entropy, "correct": correct}),
                 "margin": Samples(np.arange(N), {"logit_margin": margin, "normalized_margin": margin / 10})}
    probes = {p: _entry() for p in per_probe}
    if spectrum is not None:
        probes["spectrum"] = _entry([{"name": k, "type": "Conv2d", **v} for k, v in spectrum.items()])
    if smooth is not None:
        rows = [f"l{j}" for j in range(next(iter(smooth.values())).shape[1])] + ["logits"]
        cols = {k: np.concatenate([v, v[:, -1:]], axis=1) for k, v in smooth.items()}  # the logits row repeats
        per_probe["smoothness"] = Samples(np.arange(len(cols["ratio_worst"])), cols, rows=rows)
        means = {k: v.mean(0) for k, v in cols.items()}
        means["anisotropy"] = means["ratio_worst"] / means["ratio_random"]
        probes["smoothness"] = _entry([{"name": r, "type": "logits" if r == "logits" else "Conv2d",
                                        **{k: float(v[j]) for k, v in means.items()}} for j, r in enumerate(rows)])
    idx = np.arange(N) if source_index is None else np.asarray(source_index)
    raw, manifest = samples.encode(idx, np.zeros(N, np.int64), per_probe)
    data = {"schema": SCHEMA, "armetrics_version": "0", "created": "2026-01-01T00:00:00+00:00",
            "model": {"source": f"{name}.pt", "name": name, "eps": eps}, "environment": {},
            "data": {"source": "d.npz", "n": N, "seed": seed, "num_classes": 10, "content": content,
                     "fingerprint": hashlib.sha256(f"{content}{seed}{idx.tobytes()}".encode()).hexdigest()},
            "run": {"seed": seed}, "probes": probes, "samples": manifest}
    return Report(data, files={samples.SUFFIX: raw})


def _entry(layers=()):
    return {"config": {}, "summary": {}, "layers": list(layers), "distributions": {}, "seconds": 0.0}


def smooth_values(scale_worst=1.0, scale_random=1.0, layers=4, m=32, seed=0):
    rng = np.random.default_rng(seed)
    worst = rng.uniform(5, 10, (m, layers)) * scale_worst
    rand = rng.uniform(1, 2, (m, layers)) * scale_random
    return {"ratio_worst": worst, "ratio_random": rand, "rel_ratio_worst": worst / 3, "rel_ratio_random": rand / 3}


def spectrum_rows(std, sigma_max=None, cv=None):
    return {f"l{j}": {"std": s, "sigma_max": (sigma_max or [2.0] * len(std))[j], "cv": (cv or [0.5] * len(std))[j]}
            for j, s in enumerate(std)}


@pytest.fixture(scope="module")
def base():
    return make_report()


def test_scalar_claim_reproduced_not_reproduced_and_inconclusive(base):
    rng = np.random.default_rng(7)
    acc = samples.load(base).get("accuracy", "correct")[1]  # the reference's values, from its side file
    lower = acc & (rng.random(N) < 0.5)  # loses about half of the correct samples
    higher = acc | (rng.random(N) < 0.9)
    r = claims.evaluate(base, make_report("robust", "8/255", correct=lower), reps=300)
    v = r.claim("4")
    assert v.verdict == "reproduced" and v.ci_high < 0 and v.diff == pytest.approx(lower.mean() - acc.mean())
    assert v.reference == pytest.approx(acc.mean()) and v.robust == pytest.approx(lower.mean())
    assert claims.evaluate(base, make_report("robust", "8/255", correct=higher), reps=300).claim("4").verdict == \
        "not reproduced"
    same = claims.evaluate(base, make_report("robust", "8/255", correct=acc), reps=300).claim("4")
    assert same.verdict == "inconclusive" and same.ci_low == same.ci_high == 0.0


def test_scalar_rule_by_hand():
    assert claims.scalar_verdict(-0.3, -0.1, -1) == "reproduced"
    assert claims.scalar_verdict(0.1, 0.3, -1) == "not reproduced"
    assert claims.scalar_verdict(-0.1, 0.1, -1) == "inconclusive"
    assert claims.scalar_verdict(0.0, 0.3, +1) == "inconclusive"  # touching 0: not excluded
    assert claims.scalar_verdict(float("nan"), float("nan"), -1) == "inconclusive"


@pytest.mark.parametrize("lower, verdict", [(4, "reproduced"), (3, "reproduced"), (2, "partly"), (1, "not reproduced"),
                                            (0, "not reproduced")])
def test_layer_claim_branches_count_layers(lower, verdict):
    ref_std = [1.0, 1.0, 1.0, 1.0]
    rob_std = [0.5] * lower + [1.5] * (4 - lower)
    ref, rob = make_report(spectrum=spectrum_rows(ref_std)), make_report("robust", "8/255", spectrum=spectrum_rows(rob_std))
    v = claims.evaluate(ref, rob, reps=50).claim("1.sigma_std")
    assert v.verdict == verdict
    assert v.fraction == lower / 4 and [r["claimed"] for r in v.layers] == [True] * lower + [False] * (4 - lower)
    assert v.ci_low is None  # weights: no sampling, no interval
    assert f"{lower} of 4 layers" in v.note


def test_layer_rule_by_hand():
    assert [claims.layer_verdict(f) for f in (1.0, 0.75, 0.74, 0.26, 0.25, 0.0, None)] == [
        "reproduced", "reproduced", "partly", "partly", "not reproduced", "not reproduced", "inconclusive"]


def test_missing_probe_is_inconclusive_with_the_fix(base):
    r = claims.evaluate(base, make_report("robust", "8/255"), reps=50)
    for claim in ("1.sigma_std", "1.cv", "1.ratio_worst", "1.anisotropy"):
        v = r.claim(claim)
        assert v.verdict == "inconclusive" and "--probes" in v.note, claim
    assert r.claim("1").verdict == "inconclusive"


def test_claim1_is_judged_on_the_papers_statistic_and_says_why_scale_free_checks_differ():
    """Spectra shrunk uniformly (std x0.5, CV unchanged) and ratios shrunk in every
    direction but more along random ones: the paper's statistics are reproduced, the
    scale-free checks are not, and the note says it is scale, not shape."""
    ref = make_report(spectrum=spectrum_rows([1.0, 2.0, 3.0], [4.0] * 3, [0.5, 0.6, 0.7]), smooth=smooth_values())
    rob = make_report("robust", "8/255", spectrum=spectrum_rows([0.5, 1.0, 1.5], [2.0] * 3, [0.5, 0.6, 0.7]),
                      smooth=smooth_values(0.5, 0.25))
    r = claims.evaluate(ref, rob, reps=100)
    primary = {v.claim: v.verdict for v in r.verdicts if v.claim.startswith("1.") and not v.check}
    checks = {v.claim: v.verdict for v in r.verdicts if v.check and v.claim.startswith("1.")}
    assert primary == dict.fromkeys(["1.sigma_std", "1.sigma_max", "1.ratio_worst", "1.ratio_random"], "reproduced")
    assert checks["1.cv"] == "not reproduced" and checks["1.anisotropy"] == "not reproduced"
    assert r.claim("1").verdict == "reproduced" and not r.claim("1").check and r.claim("1.cv").check
    note = r.claim("1").note
    assert "Why they differ" in note and "CV = std/mean x1.00" in note and "std x0.50" in note
    assert "mean singular value is x0.50" in note and "anisotropy = worst / random is x2.00" in note
    aniso = r.claim("1.anisotropy")
    assert aniso.ci_low > 0 and aniso.diff > 0  # paired intervals from the side files' ratios
    assert aniso.layers[0]["ci_low"] is not None and len(aniso.layers) == 4  # the logits row is not a layer


def test_claim1_partly_and_not_reproduced():
    ref = make_report(spectrum=spectrum_rows([1.0] * 4, [4.0] * 4))
    mixed = make_report("robust", "8/255", spectrum=spectrum_rows([0.5] * 4, [5.0] * 4))
    worse = make_report("robust", "8/255", spectrum=spectrum_rows([2.0] * 4, [5.0] * 4))
    assert claims.evaluate(ref, mixed, reps=20).claim("1").verdict == "partly"
    assert claims.evaluate(ref, worse, reps=20).claim("1").verdict == "not reproduced"


def test_monotonicity_over_eps_and_most_robust_is_last(base):
    acc = samples.load(base).get("accuracy", "correct")[1]
    drop1, drop2 = acc.copy(), acc.copy()
    drop1[np.flatnonzero(acc)[:20]] = False
    drop2[np.flatnonzero(acc)[:40]] = False
    mid, top = make_report("r2", "2/255", correct=drop1), make_report("r8", "8/255", correct=drop2)
    v = claims.evaluate(base, [mid, top], reps=100).claim("4")
    assert v.monotone is True and [m["label"] for m in v.by_model] == ["eps=0", "eps=2/255", "eps=8/255"]
    assert v.robust == pytest.approx(drop2.mean())
    v = claims.evaluate(base, [top, mid], reps=100).claim("4")  # wrong order: not monotone, compared with the last
    assert v.monotone is False and v.robust == pytest.approx(drop1.mean()) and "not monotone" in v.note


def test_result_to_dict_and_markdown(base):
    r = claims.evaluate(base, make_report("robust", "8/255", correct=np.zeros(N, bool)), reps=50)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["schema"] == "armetrics.claims/1" and [v["claim"] for v in d["verdicts"]][:2] == ["1", "1.sigma_std"]
    assert {v["verdict"] for v in d["verdicts"]} <= set(claims.VERDICTS)
    assert d["models"][0]["accuracy"][0] == pytest.approx(samples.load(base).get("accuracy", "correct")[1].mean())
    md = r.markdown()
    assert md.splitlines()[0] == "| claim | statistic | reference | robust | difference [95% CI] | verdict |"
    assert "| 4 Standard accuracy falls as eps grows |" in md and "\\|logit margin\\|" in md
    assert all(line.count("|") - line.count("\\|") == 7 for line in md.splitlines()[:len(r.verdicts) + 2])
    with pytest.raises(ArmetricsError, match="no claim '9'"):
        r.claim("9")


# --------------------------------------------------------------------------- refused pairings
def assert_one_line(exc_info, *words):
    msg = str(exc_info.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_refuses_reports_of_different_images(base):
    with pytest.raises(PairingError) as e:
        claims.evaluate(base, make_report("robust", content="npz:" + "cd" * 32))
    assert_one_line(e, "different images", "same --data")


def test_refuses_reports_of_different_seeds(base):
    with pytest.raises(PairingError) as e:
        claims.evaluate(base, make_report("robust", seed=1))
    assert_one_line(e, "different seeds", "same --seed")


def test_refuses_reports_of_different_samples(base):
    with pytest.raises(PairingError) as e:
        claims.evaluate(base, make_report("robust", source_index=np.arange(N)[::-1]))
    assert_one_line(e, "different samples", "-n and --seed")


def test_refuses_a_report_without_its_side_file(base, tmp_path):
    base.save(tmp_path / "a.json")
    make_report("robust").save(tmp_path / "b.json")
    assert claims.evaluate(tmp_path / "a.json", tmp_path / "b.json", reps=20).claim("4").verdict  # works from files
    (tmp_path / "b.samples.npz").unlink()
    with pytest.raises(SamplesError) as e:
        claims.evaluate(tmp_path / "a.json", tmp_path / "b.json")
    assert_one_line(e, "b.json has no per-sample side file b.samples.npz", "analyze the model again")
    bare = Report({k: v for k, v in base.data.items() if k != "samples"})
    with pytest.raises(SamplesError) as e:
        claims.evaluate(base, bare)
    assert_one_line(e, "has no per-sample side file", "analyze the model again")


def test_refuses_a_side_file_of_another_report(base, tmp_path):
    base.save(tmp_path / "a.json")
    make_report("robust", correct=np.zeros(N, bool)).save(tmp_path / "b.json")
    os.replace(tmp_path / "b.samples.npz", tmp_path / "a.samples.npz")
    with pytest.raises(SamplesError) as e:
        samples.load(Report.load(tmp_path / "a.json"))
    assert_one_line(e, "does not belong", "analyze the model again")


# --------------------------------------------------------------------------- the side file of a real analysis
@pytest.fixture
def analyzed(tiny_net, tiny_npz, tmp_path):
    data = am.load_data(tiny_npz, batch_size=16)
    report = am.analyze(tiny_net, data, ["accuracy", "confidence", "margin", "smoothness"],
                        options={"smoothness": {"max_samples": 5, "bootstrap": 0, "pgd_steps": 1, "iters": 2}})
    report.save(tmp_path / "r.json")
    return tiny_net, data, report, tmp_path / "r.json"


def test_side_file_values_equal_a_direct_softmax_of_the_models_logits(analyzed):
    net, data, report, path = analyzed
    s = samples.load(Report.load(path))  # read back from the file
    with torch.no_grad():
        z = torch.cat([net(x) for x, _ in data]).double().numpy()
    y = data.labels()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(1)
    assert np.array_equal(s.source_index, data.order) and np.array_equal(s.labels, y) and s.n == data.n == 64
    assert np.array_equal(s.get("accuracy", "correct")[1], z.argmax(1) == y)
    assert np.array_equal(s.get("confidence", "correct")[1], z.argmax(1) == y)
    assert np.allclose(s.get("confidence", "max_prob")[1], p.max(1), rtol=1e-6)
    assert np.allclose(s.get("confidence", "entropy")[1], -(p * np.log(p)).sum(1), rtol=1e-5)
    assert np.allclose(s.get("margin", "logit_margin")[1], z[np.arange(len(y)), y] - other, rtol=1e-6, atol=1e-6)
    assert np.array_equal(s.get("margin", "logit_margin")[0], np.arange(64))
    # smoothness: the first max_samples samples, one column per layer row; their means are the report's rows
    index, worst = s.get("smoothness", "ratio_worst")
    rows = report.layers("smoothness")
    assert list(index) == [0, 1, 2, 3, 4] and s.probes["smoothness"].rows == [r["name"] for r in rows]
    assert np.allclose(worst.mean(0), [r["ratio_worst"] for r in rows], rtol=1e-12)
    assert np.allclose(s.get("smoothness", "rel_ratio_random")[1].mean(0), [r["rel_ratio_random"] for r in rows])
    m = report.data["samples"]
    assert m["format"] == samples.FORMAT and m["sha256"] == hashlib.sha256(path.with_suffix(".samples.npz").read_bytes()).hexdigest()
    assert report.data["data"]["content"] == data.content_id() and report.data["data"]["fingerprint"] == data.fingerprint()


def test_merged_shards_keep_every_sample_once(tiny_net, tiny_npz):
    """Per-sample values of two halves of the data merged equal one run (data-parallel runs)."""
    from armetrics.probe import Batch, Context
    from armetrics.probes.confidence import Confidence

    data = am.load_data(tiny_npz, batch_size=16)
    batches = list(data)

    def fed(part):
        p = Confidence()
        p.setup(Context(model=tiny_net, device=torch.device("cpu")))
        for i, (x, y) in part:
            with torch.no_grad():
                p.update(Batch(x=x, y=y, logits=tiny_net(x), features={}, model=tiny_net, offset=16 * i))
        return p

    whole = fed(list(enumerate(batches))).compute().samples
    second, first = fed(list(enumerate(batches))[2:]), fed(list(enumerate(batches))[:2])
    merged = second.merge(first).compute().samples  # shards in any order
    assert np.array_equal(merged.index, np.arange(64)) and np.array_equal(merged.index, whole.index)
    for k in whole.columns:
        assert np.array_equal(merged.columns[k], whole.columns[k]), k


def test_no_samples_writes_no_side_file(tiny_net, tiny_npz, tmp_path):
    report = am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy"], samples=False)
    report.save(tmp_path / "r.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "tiny.npz"]
    assert "samples" not in report.data and "content" not in report.data["data"]
    weights_only = am.analyze(tiny_net, None, ["spectrum"])
    assert "samples" not in weights_only.data and not weights_only.files
    with pytest.raises(ArmetricsError, match="samples must be True or False"):
        am.analyze(tiny_net, am.load_data(tiny_npz), ["accuracy"], samples="yes")


def test_cli_writes_the_side_file_unless_no_samples(cli_inproc, tiny_net_factory, tiny_arch, tiny_npz, tmp_path):
    torch.save(tiny_net_factory().state_dict(), tmp_path / "m.pt")
    for flag, expected in (((), True), (("--no-samples",), False)):
        out = tmp_path / ("with.json" if expected else "without.json")
        proc = cli_inproc("analyze", str(tmp_path / "m.pt"), "--arch", tiny_arch, "--data", str(tiny_npz),
                          "--probes", "accuracy,margin", "--out", str(out), "--quiet", *flag)
        assert proc.returncode == 0, proc.stderr
        assert out.with_suffix(".samples.npz").exists() is expected
    assert samples.load(Report.load(tmp_path / "with.json")).get("margin", "logit_margin")[1].shape == (64,)


# --------------------------------------------------------------------------- atomic with the report
def test_side_file_is_written_with_the_report_all_or_nothing(analyzed, monkeypatch, tiny_net, tiny_npz):
    _, _, first, path = analyzed
    before = (path.read_bytes(), path.with_suffix(".samples.npz").read_bytes())
    second = am.analyze(tiny_net, am.load_data(tiny_npz, seed=1), ["accuracy", "margin"])
    real_fsync = os.fsync

    def fail(fd):  # the write of a temporary file fails: nothing is renamed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ArmetricsError, match="cannot write"):
        second.save(path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (path.read_bytes(), path.with_suffix(".samples.npz").read_bytes()) == before
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    samples.load(Report.load(path))  # still a matching pair

    real_replace, calls = os.replace, []

    def replace_side_file_only(src, dst):  # killed between the two renames: new side file, old report
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_side_file_only)
    with pytest.raises(ArmetricsError):
        second.save(path)
    monkeypatch.setattr(os, "replace", real_replace)
    assert str(calls[0]).endswith(".samples.npz")  # side file first, the report last
    with pytest.raises(SamplesError, match="does not belong"):  # a mismatched pair is refused, never paired
        samples.load(Report.load(path))


# --------------------------------------------------------------------------- hostile side files
def _npz(arrays: dict, pickled: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in arrays.items():
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, np.asanyarray(v), allow_pickle=pickled)
    return buf.getvalue()


def _hostile(report: Report, raw: bytes, tmp_path, manifest_changes=None) -> Report:
    """``report`` saved with the side file ``raw``, its manifest made to match the bytes
    (as an attacker who controls both files would), loaded back."""
    data = json.loads(report.to_json())
    data["samples"].update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw), **(manifest_changes or {}))
    (tmp_path / "h.json").write_text(json.dumps(data))
    (tmp_path / "h.samples.npz").write_bytes(raw)
    return Report.load(tmp_path / "h.json")


def _arrays(report: Report) -> dict:
    with np.load(io.BytesIO(report.files[samples.SUFFIX]), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("case, words", [
    ("dtype", "has dtype float32, not the float64"),
    ("length", "has shape (199,), not the (200,)"),
    ("pickle", "Python objects"),
    ("extra", "holds 'evil', which the report does not declare"),
    ("missing", "lacks 'margin.logit_margin'"),
    ("not a zip", "not a readable .npz"),
    ("index", "not ascending sample positions"),
    ("declared dtype", "declares dtype 'object'"),
])
def test_hostile_side_files_are_refused_in_one_line(base, tmp_path, case, words):
    arrays = _arrays(base)
    changes = None
    if case == "dtype":
        arrays["confidence.max_prob"] = arrays["confidence.max_prob"].astype(np.float32)
    elif case == "length":
        arrays["confidence.max_prob"] = arrays["confidence.max_prob"][:-1]
    elif case == "pickle":
        arrays["confidence.max_prob"] = np.array([{"x": 1}] * N, dtype=object)
    elif case == "extra":
        arrays["evil"] = np.zeros(3)
    elif case == "missing":
        del arrays["margin.logit_margin"]
    elif case == "index":
        arrays["margin.index"] = arrays["margin.index"][::-1].copy()
    elif case == "declared dtype":
        probes = json.loads(json.dumps(base.data["samples"]["probes"]))
        probes["margin"]["columns"]["logit_margin"]["dtype"] = "object"
        changes = {"probes": probes}
    raw = b"PK\x03\x04 not really a zip" if case == "not a zip" else _npz(arrays, pickled=case == "pickle")
    with pytest.raises(SamplesError) as e:
        samples.load(_hostile(base, raw, tmp_path, changes))
    assert_one_line(e, words, "analyze the model again")


def test_huge_side_files_are_refused_before_reading(base, tmp_path, monkeypatch):
    raw = base.files[samples.SUFFIX]
    report = _hostile(base, raw, tmp_path)
    monkeypatch.setattr(samples, "MAX_BYTES", len(raw) - 1)
    with pytest.raises(SamplesError) as e:
        samples.load(report)
    assert_one_line(e, "more than the", "armetrics reads")
    with pytest.raises(SamplesError) as e:  # in memory too
        samples.load(base)
    assert_one_line(e, "more than the")
    monkeypatch.undo()
    buf = io.BytesIO()  # a member whose header declares 80 MB of int64, with no data behind it
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10**7,)})
    arrays = _arrays(base)
    raw = _npz({k: v for k, v in arrays.items() if k != "source_index"})
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members["source_index.npy"] = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    huge = _hostile(base, out.getvalue(), tmp_path, {"n": 10**7})
    with pytest.raises(SamplesError) as e:
        samples.load(huge)
    assert_one_line(e, "h.samples.npz: source_index declares shape (10000000,)", "truncated or corrupt")
    with pytest.raises(SamplesError) as e:  # more samples than any data source holds
        samples.load(_hostile(base, out.getvalue(), tmp_path, {"n": 10**8}))
    assert_one_line(e, "samples.n is not a count")
