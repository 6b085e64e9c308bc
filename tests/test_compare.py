"""compare(): summary.csv, figures, index.html, config checks, leaderboard correlation."""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import struct
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr
from torch import nn

import armetrics as am
from armetrics.comparison import compare, eps_from_name
from armetrics.errors import ConfigError, ReportError
from armetrics.plots import hist_quantiles
from armetrics.registry import list_probes

#: figures each probe makes possible
FIGURES_OF = {
    "spectrum": {"spectrum_layers.png", "spectrum_distribution.png"},
    "margin": {"margin_hist.png"},
    "confidence": {"confidence_hist.png", "reliability.png"},
    "smoothness": {"smoothness_layers.png"},
    "robust_accuracy": {"accuracy_robust.png"},
}
#: small, fast options for the probes that have them
FAST = {
    "smoothness": {"max_samples": 8, "bootstrap": 0, "iters": 2, "pgd_steps": 1, "directions": 1},
    "robust_accuracy": {"steps": 2},
}


class TinyCNN(nn.Module):
    """conv-bn-relu-conv-relu-pool-linear on 3x8x8 inputs, 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        return self.fc(self.pool(torch.relu(self.conv2(h))).flatten(1))


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = TinyCNN().eval()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.5, 2.0)
        net.fc.weight.mul_(1 + 3 * seed)  # different confidence / margin scales
    return net


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    """As conftest's ``tiny_npz`` (64 random 3x8x8 images, labels 0..9), module-scoped."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    y[:10] = np.arange(10)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


def probes_available() -> list[str]:
    """Every built-in probe (all must be registered: the test fails otherwise)."""
    wanted = ["accuracy", "spectrum", "margin", "confidence", "smoothness", "robust_accuracy"]
    assert set(wanted) <= set(list_probes())
    return wanted


def fast_options(probes):
    from armetrics.registry import get_probe

    out = {}
    for p in probes:
        opts = get_probe(p).options()
        chosen = {k: v for k, v in FAST.get(p, {}).items() if k in opts}
        if chosen:
            out[p] = chosen
    return out


@pytest.fixture(scope="module")
def reports(npz, tmp_path_factory) -> list[Path]:
    """Reports of two real tiny CNNs named by their eps, saved in the opposite of eps order."""
    d = tmp_path_factory.mktemp("reports")
    probes = probes_available()
    data = am.load_data(npz, batch_size=32)
    paths = []
    for seed, name in ((1, "tiny_eps8"), (0, "tiny_eps0")):
        r = am.analyze(make_net(seed), data, probes, options=fast_options(probes), seed=0)
        r.data["model"]["name"] = name
        paths.append(r.save(d / f"{name}.json"))
    return paths


@pytest.fixture(scope="module")
def result(reports, tmp_path_factory):
    """compare() of one in-memory Report and one report file; checks it changed neither."""
    before = [p.read_bytes() for p in reports]
    first = am.Report.load(reports[0])
    snapshot = copy.deepcopy(first.data)
    res = compare([first, reports[1]], tmp_path_factory.mktemp("cmp") / "out")
    res.unchanged = first.data == snapshot and [p.read_bytes() for p in reports] == before
    return res


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_csv_rows_columns_and_values(result, reports):
    loaded = [am.Report.load(p) for p in reports]
    rows = read_csv(result.summary_csv)
    assert [r["model"] for r in rows] == ["tiny_eps0", "tiny_eps8"]  # ordered by eps, not input
    assert [r["eps"] for r in rows] == [repr(0.0), repr(8 / 255)]
    expected_cols = {f"{p}.{k}" for r in loaded for p in r.probes for k in r.summary(p)}
    header = list(rows[0])
    assert set(header) - {"model", "source", "sha256", "eps", "eps_from", "data_source", "data_n", "data_seed",
                          "data_note"} == expected_cols
    assert len(header) == len(set(header))
    by_name = {r.model["name"]: r for r in loaded}
    for row in rows:
        rep = by_name[row["model"]]
        assert row["sha256"] == rep.model["sha256"][:12]
        assert int(row["data_n"]) == rep.data["data"]["n"] == 64
        assert row["data_note"] == ""
        for p in rep.probes:
            for k, v in rep.summary(p).items():
                cell = row[f"{p}.{k}"]
                if v is None:
                    assert cell == ""
                else:
                    assert float(cell) == v, (p, k)


def test_every_expected_figure_is_a_png(result):
    assert set(FIGURES_OF) <= set(probes_available())  # every probe with a figure ran
    expected = set().union(*FIGURES_OF.values()) | {"headline.png"}  # the paper's four panels: all probes ran
    assert set(result.figures) == expected
    assert len(expected) >= 3  # at least spectrum / margin / confidence figures
    for name, path in result.figures.items():
        assert path == result.out / name
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert 400 < width < 2500 and 250 < height < 1600, (name, width, height)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "a":
            self.links.append(a["href"])
        if tag in ("script", "link") or any(str(v).startswith(("http://", "https://", "//"))
                                            for k, v in attrs if k in ("src", "href")):
            self.external.append((tag, a))


def test_html_images_and_links_resolve(result):
    page = result.html.read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(page)
    assert sorted(refs.imgs) == sorted(result.figures)
    for ref in refs.imgs + refs.links:
        assert (result.html.parent / ref).is_file(), ref
    assert refs.external == []
    for name in result.models:
        assert name in page


def _dict(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def test_incompatible_probe_config_is_an_error(reports, tmp_path):
    data = _dict(reports[0])
    probe = "margin"  # every built-in probe ran (probes_available)
    data["probes"][probe]["config"]["bins"] = 7
    other = tmp_path / "other.json"
    am.Report(data).save(other)
    with pytest.raises(ReportError, match=rf"probe '{probe}' with different options: bins=") as err:
        compare([reports[1], other], tmp_path / "out")
    assert "\n" not in str(err.value) and f"--set {probe}.bins" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_reports_of_different_probe_revisions_are_an_error(reports, tmp_path):
    """A report made before a probe's method changed (its revision) is not compared with a newer one."""
    data = _dict(reports[0])
    assert data["probes"]["robust_accuracy"]["revision"] == 2  # early exit changed its numbers
    del data["probes"]["robust_accuracy"]["revision"]  # as a report written before that
    old = tmp_path / "old.json"
    am.Report(data).save(old)
    with pytest.raises(ReportError, match=r"probe 'robust_accuracy' with different method revisions \(2 in .* vs 1 in "
                                          r".*\): re-run `armetrics analyze` for .*old\.json") as err:
        compare([reports[1], old], tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert "revision" not in _dict(reports[0])["probes"]["margin"]  # revision 1 is not written


def test_fingerprint_follows_probe_revisions(monkeypatch):
    """Sweeps reuse a report only at an equal fingerprint: a probe's new revision changes it,
    and revision-1 probes leave fingerprints as they were (no key added)."""
    from armetrics import sweep
    from armetrics.probes.margin import Margin

    args = ("m.pt", {}, None, ["margin"], {}, 0)
    before = sweep.fingerprint(*args)
    monkeypatch.setattr(Margin, "revision", 2)
    after = sweep.fingerprint(*args)
    assert after != before
    monkeypatch.setattr(Margin, "revision", 1)
    assert sweep.fingerprint(*args) == before


def test_in_memory_report_is_compatible_with_its_saved_copy(npz, tmp_path):
    data = am.load_data(npz, batch_size=64)
    probes = ["margin", "accuracy"]
    rep = am.analyze(make_net(0), data, probes)
    saved = am.Report.load(rep.save(tmp_path / "r.json"))
    res = compare([rep, saved], tmp_path / "out")  # e.g. margin.norms: a tuple in memory, a list on disk
    assert len(read_csv(res.summary_csv)) == 2


def test_newer_schema_is_an_error(reports, tmp_path):
    data = _dict(reports[0])
    data["schema"] = "armetrics.report/99"
    path = tmp_path / "new.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match="newer.*upgrade armetrics"):
        compare([reports[1], path], tmp_path / "out")
    with pytest.raises(ReportError, match="not an armetrics report"):
        (tmp_path / "foreign.json").write_text('{"hello": 1}')
        compare([tmp_path / "foreign.json"], tmp_path / "out")


def with_data(report: am.Report, n: int, seed: int, name: str) -> am.Report:
    data = copy.deepcopy(report.data)
    data["data"].update(n=n, seed=seed)
    data["model"]["name"] = name
    return am.Report(data)


def test_different_data_selection_is_noted(tmp_path):
    base = fake_report("a.pt", "a", {"v": 1.0})
    a, b = with_data(base, 64, 0, "a"), with_data(base, 32, 5, "b")
    res = compare([a, b], tmp_path / "out")
    rows = {r["model"]: r for r in read_csv(res.summary_csv)}
    assert rows["b"]["data_note"] == "different data: source=cifar10-sample n=32 seed=5"
    assert rows["a"]["data_note"] == "different data: source=cifar10-sample n=64 seed=0"  # no majority: both
    assert any("different data selections" in n for n in res.notes)
    assert "different data selections" in res.html.read_text()
    res = compare([a, b, with_data(base, 64, 0, "c")], tmp_path / "out3")
    rows = {r["model"]: r for r in read_csv(res.summary_csv)}
    assert rows["a"]["data_note"] == rows["c"]["data_note"] == ""
    assert rows["b"]["data_note"] == ("different data: source=cifar10-sample n=32 seed=5 "
                                      "(most reports: source=cifar10-sample n=64 seed=0)")
    res = compare([a, with_data(base, 64, 0, "c")], tmp_path / "same")
    assert res.notes == [] and all(r["data_note"] == "" for r in read_csv(res.summary_csv))


def test_directory_argument_and_cli(tmp_path, capsys):
    from armetrics.cli import cli, main
    from armetrics.cli.compare import compare_cmd

    cli.add_command(compare_cmd)
    folder = tmp_path / "reports"
    folder.mkdir()
    for name, v in (("m1", 1.0), ("m2", 2.0)):
        fake_report(f"{name}.pt", name, {"v": v}).save(folder / f"{name}.json")
    out = tmp_path / "viacli"
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(folder), "--out", str(out)])
    assert exc.value.code == 0
    stdout = capsys.readouterr().out
    assert "compared 2 reports: m1, m2" in stdout
    assert [r["fake.v"] for r in read_csv(out / "summary.csv")] == ["1.0", "2.0"]
    assert (out / "index.html").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "missing.json"), "--out", str(out)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: report") and "does not exist" in err[0]
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(folder), "--out", str(out), "--against", "paper"])
    assert exc.value.code == 2


def test_accuracy_only_reports_make_no_figures(tmp_path, npz):
    data = am.load_data(npz, batch_size=64)
    reps = [am.analyze(make_net(s), data, ["accuracy"]) for s in (0, 1)]
    (tmp_path / "out").mkdir()
    stale = b"stale figure of an earlier comparison"
    (tmp_path / "out" / "margin_hist.png").write_bytes(stale)  # listed in that comparison's manifest
    (tmp_path / "out" / ".armetrics-compare.json").write_text(
        json.dumps({"files": {"margin_hist.png": hashlib.sha256(stale).hexdigest()}}))
    (tmp_path / "out" / "reliability.png").write_bytes(b"the user's own figure")  # not listed: never removed
    (tmp_path / "out" / "notes.txt").write_text("the user's own file")
    res = am.compare(reps, tmp_path / "out")  # am.compare is the function (the module is armetrics.comparison)
    assert res.figures == {}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".armetrics-compare.json", "index.html", "notes.txt", "reliability.png", "summary.csv"]
    assert "No figures" in res.html.read_text()
    rows = read_csv(res.summary_csv)
    assert [float(r["accuracy.accuracy"]) for r in rows] == [r.summary("accuracy")["accuracy"] for r in reps]
    assert rows[0]["model"] != rows[1]["model"]  # same class name: labels made unique


def test_eps_from_name():
    assert eps_from_name("small_cnn_eps8") == 8 / 255
    assert eps_from_name("small_cnn_eps0") == 0.0
    assert eps_from_name("wrn_eps_4_255") == 4 / 255
    assert eps_from_name("resnet_l2_eps0.5") == 0.5
    assert eps_from_name("resnet18") is None


def test_hist_quantiles_match_numpy_on_fine_bins():
    rng = np.random.default_rng(1)
    values = rng.gamma(2.0, 1.0, size=20000)
    edges = np.linspace(0, values.max(), 2001)
    counts, _ = np.histogram(values, edges)
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    got = hist_quantiles(edges, counts, qs)
    want = np.quantile(values, qs)
    assert np.allclose(got, want, atol=2 * (edges[1] - edges[0]))
    assert all(math.isnan(v) for v in hist_quantiles(edges, np.zeros(2000), qs))


# --------------------------------------------------------------------------- leaderboard correlation
def raw_leaderboard() -> list[dict]:
    text = resources.files("armetrics").joinpath("_data", "robustbench-model-info.json").read_text()
    return json.loads(text)["models"]


def fake_report(source: str, name: str, summary: dict) -> am.Report:
    return am.Report({
        "schema": "armetrics.report/1", "armetrics_version": "0", "created": "2025-01-01T00:00:00Z",
        "model": {"source": source, "name": name, "sha256": "ab" * 32},
        "data": {"source": "cifar10-sample", "n": 100, "seed": 0, "num_classes": 10},
        "environment": {},
        "probes": {"fake": {"config": {}, "summary": summary, "layers": [], "distributions": {}, "seconds": 0.0}},
    })


def test_leaderboard_correlation_equals_scipy(tmp_path):
    board = [r for r in raw_leaderboard() if r["dataset"] == "cifar10" and r["threat_model"] == "Linf"]
    recs = [r for r in board if r["eps"] == "8/255"][:6] + [r for r in board if r["eps"] == "0.031"][:1]
    robust = [float(r.get("external", r.get("autoattack_acc"))) for r in recs]  # percent strings, as published
    rng = np.random.default_rng(3)
    x = [float(v) for v in rng.normal(size=len(recs))]
    y = [a + 10 * b for a, b in zip(robust, rng.normal(size=len(recs)))]  # a correlated key
    reps = [fake_report(f"robustbench:cifar10/Linf/{r['model']}", r["model"], {"x": xi, "y": yi, "few": None})
            for r, xi, yi in zip(recs, x, y)]
    reps[0].data["probes"]["fake"]["summary"]["few"] = 1.0
    reps[1].data["probes"]["fake"]["summary"]["few"] = 2.0
    reps.append(fake_report("/tmp/own.pt", "own_model", {"x": 100.0, "y": 100.0, "few": 3.0}))  # not on the board
    res = compare(reps, tmp_path / "out", against="leaderboard")
    rows = {r["key"]: r for r in read_csv(res.correlation_csv)}
    for key, vals in (("fake.x", x), ("fake.y", y)):
        want = spearmanr(vals, robust)
        assert int(rows[key]["n"]) == len(recs)
        assert float(rows[key]["spearman_rho"]) == pytest.approx(want.statistic, abs=1e-12)
        assert float(rows[key]["p_value"]) == pytest.approx(want.pvalue, rel=1e-9)
        # the same by hand: Pearson correlation of the ranks
        assert float(rows[key]["spearman_rho"]) == pytest.approx(np.corrcoef(rankdata(vals), rankdata(robust))[0, 1])
    few = rows["fake.few"]
    assert few["n"] == "2" and few["spearman_rho"] == "" and "fewer than 3" in few["note"]
    strength = {k: abs(spearmanr(v, robust).statistic) for k, v in (("fake.x", x), ("fake.y", y))}
    assert list(rows) == sorted(strength, key=lambda k: -strength[k]) + ["fake.few"]  # strongest first, NaN last
    assert "correlation.png" in res.figures and res.figures["correlation.png"].is_file()
    assert any("own_model" in n for n in res.notes)
    summary = {r["model"]: r for r in read_csv(res.summary_csv)}
    for rec, rob in zip(recs, robust):
        row = summary[rec["model"]]
        assert float(row["leaderboard.robust_accuracy"]) == pytest.approx(rob / 100)
        assert float(row["leaderboard.clean_accuracy"]) == pytest.approx(float(rec["clean_acc"]) / 100)
        assert row["eps_from"] == "leaderboard"
    assert summary["own_model"]["leaderboard.robust_accuracy"] == ""
    # ordered by eps (8/255, some published as 0.031), then leaderboard robust accuracy
    # (lowest first); unknown eps last
    order = [r["model"] for r in read_csv(res.summary_csv)]
    assert order[-1] == "own_model"
    assert {r["eps"] for r in recs} == {"8/255", "0.031"}
    assert {r["eps"] for r in read_csv(res.summary_csv)[:-1]} == {repr(8 / 255)}
    ranked = sorted(zip(recs, robust), key=lambda t: t[1])
    assert order[:-1] == [r["model"] for r, _ in ranked]


def test_unknown_against_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="leaderboard"):
        compare([fake_report("x.pt", "x", {"a": 1.0})], tmp_path / "out", against="paper")


def test_compare_does_not_modify_reports(result):
    assert result.unchanged


# --------------------------------------------------------------------------- issue 17: groups and labels
def board_record(dataset: str, threat: str, name: str) -> dict:
    (rec,) = [r for r in raw_leaderboard() if (r["dataset"], r["threat_model"], r["model"]) == (dataset, threat, name)]
    return rec


def board_robust(rec: dict) -> float:
    """A raw record's robust accuracy as a fraction, as armetrics.zoo reads it."""
    return float(next(rec[f] for f in ("external", "autoattack_acc", "corruptions_acc") if f in rec)) / 100


def group_reports(rng) -> tuple[list[am.Report], dict[tuple[str, str], list[tuple[float, float]]]]:
    """Reports of cifar10 Linf (6), L2 (4) and corruptions (1) leaderboard models, one name
    under both Linf and L2; and per group, the (key value, robust accuracy) pairs."""
    board = raw_leaderboard()
    shared = "Wang2023Better_WRN-28-10"
    reps, pairs = [], {}
    for (d, t), n in ((("cifar10", "Linf"), 6), (("cifar10", "L2"), 4), (("cifar10", "corruptions"), 1)):
        names = ([shared] if t != "corruptions" else []) + [
            r["model"] for r in board if (r["dataset"], r["threat_model"]) == (d, t) and r["model"] != shared]
        for name in names[:n]:
            x = float(rng.normal()) + (3.0 if t == "L2" else 0.0)  # L2 values all larger: pooling would mix scales
            reps.append(fake_report(f"robustbench:{d}/{t}/{name}", name, {"x": x}))
            pairs.setdefault((d, t), []).append((x, board_robust(board_record(d, t, name))))
    return reps, pairs


def test_leaderboard_correlation_is_per_dataset_and_threat_model(tmp_path):
    reps, pairs = group_reports(np.random.default_rng(5))
    assert {g: len(p) for g, p in pairs.items()} == {("cifar10", "Linf"): 6, ("cifar10", "L2"): 4,
                                                     ("cifar10", "corruptions"): 1}
    res = compare(reps, tmp_path / "out", against="leaderboard")
    assert {"Wang2023Better_WRN-28-10 (Linf)", "Wang2023Better_WRN-28-10 (L2)"} <= set(res.models)
    rows = read_csv(res.correlation_csv)
    assert list(rows[0]) == ["key", "dataset", "threat_model", "models", "n", "spearman_rho", "p_value", "note"]
    by_group = {(r["dataset"], r["threat_model"]): r for r in rows if r["key"] == "fake.x"}
    assert set(by_group) == set(pairs)  # one row per group, none pooled
    for group, ps in pairs.items():
        row = by_group[group]
        assert int(row["models"]) == int(row["n"]) == len(ps)
        if len(ps) < 3:
            assert row["spearman_rho"] == "" and "fewer than 3" in row["note"]
            continue
        want = spearmanr([x for x, _ in ps], [y for _, y in ps])  # by hand, on the same numbers
        assert float(row["spearman_rho"]) == pytest.approx(want.statistic, abs=1e-12)
        assert float(row["p_value"]) == pytest.approx(want.pvalue, rel=1e-9)
    assert [(r["dataset"], r["threat_model"]) for r in rows] == [("cifar10", "Linf"), ("cifar10", "L2"),
                                                                 ("cifar10", "corruptions")]  # largest group first
    note = next(n for n in res.notes if "per (dataset, threat model)" in n)
    assert "cifar10/Linf (6 models), cifar10/L2 (4 models), cifar10/corruptions (1 model)" in note
    page = res.html.read_text()
    assert note in page
    for heading in ("cifar10 / Linf: 6 models", "cifar10 / L2: 4 models", "cifar10 / corruptions: 1 model"):
        assert f"<h3>{heading}</h3>" in page


def test_same_name_is_labelled_by_threat_model_then_dataset(tmp_path):
    name = "Wang2023Better_WRN-28-10"
    reps = [fake_report(f"robustbench:{d}/{t}/{name}", name, {"x": float(i)})
            for i, (d, t) in enumerate((("cifar10", "Linf"), ("cifar10", "L2"), ("cifar100", "Linf")))]
    res = compare(reps, tmp_path / "out", against="leaderboard")
    assert sorted(res.models) == sorted([f"{name} (L2)", f"{name} (cifar10/Linf)", f"{name} (cifar100/Linf)"])
    rows = {r["model"]: r for r in read_csv(res.summary_csv)}
    assert float(rows[f"{name} (L2)"]["leaderboard.robust_accuracy"]) == pytest.approx(0.8368)
    assert float(rows[f"{name} (cifar100/Linf)"]["leaderboard.robust_accuracy"]) == pytest.approx(board_robust(
        board_record("cifar100", "Linf", name)))
    two = compare(reps[:2], tmp_path / "two")  # threat alone tells them apart (no leaderboard needed)
    assert sorted(two.models) == [f"{name} (L2)", f"{name} (Linf)"]


def test_label_falls_back_to_sha_then_counter(tmp_path):
    name = "Wang2023Better_WRN-28-10"
    same = [fake_report(f"robustbench:cifar10/Linf/{name}", name, {"x": 1.0}) for _ in range(2)]  # same sha
    other = fake_report(f"robustbench:cifar10/L2/{name}", name, {"x": 2.0})
    res = compare([*same, other], tmp_path / "out")
    assert sorted(res.models) == [f"{name} (L2)", f"{name} (Linf) #1", f"{name} (Linf) #2"]
    own = [fake_report(f"/ckpt/{k}.pt", "net", {"x": float(k)}) for k in range(2)]  # not RobustBench: no threat
    own[1].data["model"]["sha256"] = "cd" * 32
    assert sorted(compare(own, tmp_path / "own").models) == ["net [abababab]", "net [cdcdcdcd]"]
    clash = [fake_report("/ckpt/a.pt", "net (Linf)", {"x": 1.0}), *same[:1],
             fake_report(f"robustbench:cifar10/L2/{name}", "net", {"x": 3.0}),
             fake_report(f"robustbench:cifar10/Linf/{name}", "net", {"x": 4.0})]
    labels = compare(clash, tmp_path / "clash").models  # a name equal to another's qualified label: numbered
    assert len(set(labels)) == len(labels) == 4
    assert sorted(labels) == sorted([name, "net (L2)", "net (Linf) #1", "net (Linf) #2"])


def test_fixed_leaderboard_records_reach_the_comparison(tmp_path):
    """cifar10/Linf Hendrycks2019Using was shown with its CIFAR-100 numbers (59.23 / 28.42)."""
    reps = [fake_report(f"robustbench:{d}/Linf/Hendrycks2019Using", "Hendrycks2019Using", {"x": 1.0})
            for d in ("cifar10", "cifar100")]
    res = compare(reps, tmp_path / "out", against="leaderboard")
    rows = {r["model"]: r for r in read_csv(res.summary_csv)}
    assert float(rows["Hendrycks2019Using (cifar10/Linf)"]["leaderboard.clean_accuracy"]) == pytest.approx(0.8711)
    assert float(rows["Hendrycks2019Using (cifar10/Linf)"]["leaderboard.robust_accuracy"]) == pytest.approx(0.5492)
    assert float(rows["Hendrycks2019Using (cifar100/Linf)"]["leaderboard.clean_accuracy"]) == pytest.approx(0.5923)
    assert float(rows["Hendrycks2019Using (cifar100/Linf)"]["leaderboard.robust_accuracy"]) == pytest.approx(0.2842)
