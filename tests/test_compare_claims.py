"""The comparison page leads with the findings: the verdicts on the paper's claims
(judged by armetrics.claims on the reports' side files), the headline figure, then the
rest; every value escaped; no absolute path of the machine in anything written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import armetrics as am
from armetrics import claims
from armetrics.errors import ConfigError, SamplesError

PROBES = ["accuracy", "spectrum", "margin", "confidence", "smoothness"]
FAST = {"smoothness": {"max_samples": 6, "bootstrap": 0, "iters": 2, "pgd_steps": 1, "directions": 1}}
HOSTILE = '<script>alert("x")</script>&amp;\'"'


class Net(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, 10)
        with torch.no_grad():
            self.fc.weight.mul_(1 + 3 * seed)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[Path]:
    """Reports (with side files) of a standard (eps 0) and two robust (eps 4, 8) tiny nets."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("reports")
    np.savez(d / "tiny.npz", x=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), y=np.arange(48) % 10)
    data = am.load_data(d / "tiny.npz", batch_size=16)
    paths = []
    for seed, eps in ((0, 0), (1, 4), (2, 8)):
        r = am.analyze(Net(seed), data, PROBES, options=FAST, seed=0)
        r.data["model"]["name"] = f"tiny_eps{eps}"
        r.data["model"]["eps"] = f"{eps}/255"
        paths.append(r.save(d / f"tiny_eps{eps}.json"))
    return paths


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.attrs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [v or "" for _, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def test_claims_lead_the_page_and_equal_the_librarys(reports, tmp_path):
    res = am.compare(reports[::-1], tmp_path / "cmp")
    direct = claims.evaluate(reports[0], reports[1:])
    assert res.claims is not None and res.claims.to_dict() == direct.to_dict()
    written = json.loads((tmp_path / "cmp" / "claims.json").read_text())
    assert written == json.loads(json.dumps(direct.to_dict()))
    html = (tmp_path / "cmp" / "index.html").read_text()
    marks = ["Does adversarial training regularize", '<img src="headline.png"', "<h2>Figures</h2>",
             "<h2>Models</h2>", "<summary>Summary", "</body>"]
    at = [html.find(m) for m in marks]
    assert -1 not in at and at == sorted(at), dict(zip(marks, at))
    assert html.find("<table") > html.find("Does adversarial")  # no table before the verdicts
    table = html[at[0]:html.find("</table>", at[0])]
    for v in direct.verdicts:
        assert f"<span class=\"v v-{'not' if v.verdict == 'not reproduced' else v.verdict}\">{v.verdict}</span>" in table
    assert table.count("<tr") == len(direct.verdicts) + 1
    assert "eps=0" in table and "eps=8/255" in table  # reference and most robust model head the value columns
    assert (tmp_path / "cmp" / "headline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_headline_figure_has_four_panels_of_the_papers_quantities(reports, tmp_path):
    from armetrics.headline import plot_headline
    from armetrics.plots import make_series

    loaded = [am.Report.load(p) for p in reports]
    series = make_series(["a", "b", "c"], loaded)
    import matplotlib

    drawn = []
    orig = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **k):
        drawn.append([ax.get_title() for ax in fig.get_axes() if ax.get_visible() and ax.get_title()])
        return orig(fig, *a, **k)

    matplotlib.figure.Figure.savefig = spy
    try:
        assert plot_headline(series, tmp_path / "h.png", eps={"a": 0.0, "b": 4 / 255, "c": 8 / 255}) is not None
        for r in loaded:  # without spectrum: three panels
            del r.data["probes"]["spectrum"]
        plot_headline(series, tmp_path / "h3.png")
        for r in loaded:
            for p in ("accuracy", "margin", "confidence", "smoothness"):
                del r.data["probes"][p]
        assert plot_headline(series, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    finally:
        matplotlib.figure.Figure.savefig = orig
    assert [t[0] for t in drawn[0]] == ["4", "2", "3", "1"] and len(drawn[1]) == 3


def test_no_reference_no_claims_and_no_note(reports, tmp_path):
    res = am.compare(reports[1:], tmp_path / "cmp")
    assert res.claims is None and not (tmp_path / "cmp" / "claims.json").exists()
    assert not any("claims" in n for n in res.notes)
    assert "Does adversarial" not in (tmp_path / "cmp" / "index.html").read_text()
    with pytest.raises(ConfigError, match="no report has ε = 0.*--reference"):
        am.compare(reports[1:], tmp_path / "cmp2", claims=True)


def test_reference_by_name_and_off_switch(reports, tmp_path):
    res = am.compare(reports, tmp_path / "cmp", reference="tiny_eps4")
    assert res.claims.models[0]["name"] == "tiny_eps4"
    assert [m["name"] for m in res.claims.models[1:]] == ["tiny_eps0", "tiny_eps8"]
    assert am.compare(reports, tmp_path / "cmp", reference="tiny_eps4.json").claims.models[0]["name"] == "tiny_eps4"
    off = am.compare(reports, tmp_path / "cmp", claims=False)  # the earlier claims.json is armetrics' own: removed
    assert off.claims is None and not (tmp_path / "cmp" / "claims.json").exists()
    with pytest.raises(ConfigError, match="names no model of this comparison"):
        am.compare(reports, tmp_path / "cmp3", reference="nope")
    with pytest.raises(ConfigError, match="claims must be True, False or None"):
        am.compare(reports, tmp_path / "cmp3", claims="yes")


def test_missing_side_file_is_a_note_unless_claims_are_asked_for(reports, tmp_path):
    import shutil

    for p in reports:
        shutil.copy(p, tmp_path / p.name)
        if p.name != "tiny_eps8.json":
            shutil.copy(p.with_suffix(".samples.npz"), tmp_path / p.with_suffix(".samples.npz").name)
    copies = [tmp_path / p.name for p in reports]
    res = am.compare(copies, tmp_path / "cmp")
    assert res.claims is None
    assert any(n.startswith("The paper's claims were not judged: tiny_eps8.json has no per-sample side file")
               for n in res.notes)
    with pytest.raises(SamplesError, match="tiny_eps8.json has no per-sample side file"):
        am.compare(copies, tmp_path / "cmp2", claims=True)


def test_every_value_on_the_page_is_escaped_and_no_absolute_path_is_written(reports, tmp_path):
    outside = tmp_path / "elsewhere" / "weights.pt"
    hostile = []
    for i, p in enumerate(reports):
        r = am.Report.load(p)
        r.data["model"]["name"] = f"{HOSTILE}{i}"
        r.data["model"]["source"] = str(outside)
        r.data["data"]["source"] = str(tmp_path / "data" / f"{HOSTILE}.npz")
        for row in r.data["probes"]["spectrum"]["layers"]:
            row["name"] = f"<i>{row['name']}</i>"
        r.data["probes"]["margin"]["config"]["attack"] = HOSTILE
        hostile.append(r.save(tmp_path / f"h{i}.json"))
        (tmp_path / f"h{i}.samples.npz").write_bytes(p.with_suffix(".samples.npz").read_bytes())
    res = am.compare(hostile, tmp_path / "cmp")
    assert res.claims is not None  # the labels of claims and verdict notes are hostile too
    page = parse(res.html)
    assert set(page.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "a", "b",
                              "div", "table", "tr", "th", "td", "span", "code", "figure", "img", "figcaption",
                              "details", "summary", "ul", "li"}
    text = "".join(page.text)
    assert f"{HOSTILE}0" in text and f"attack={HOSTILE!r}" in text  # shown literally, as text
    for f in (tmp_path / "cmp").iterdir():
        assert str(tmp_path) not in f.read_bytes().decode("utf-8", "replace"), f.name
    assert "weights.pt" in text


def test_cli_compare_prints_the_verdicts_and_takes_reference(reports, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "armetrics", "compare", *map(str, reports), "--out",
                               str(tmp_path / "cmp"), *args], capture_output=True, text=True, timeout=300)

    ok = run()
    assert ok.returncode == 0, ok.stderr
    line = next(x for x in ok.stdout.splitlines() if x.startswith("claims: "))
    result = claims.evaluate(reports[0], reports[1:])
    assert line == "claims: " + ", ".join(f"{v.claim} {v.verdict}" for v in result.verdicts if "." not in v.claim)
    off = run("--no-claims")
    assert off.returncode == 0 and "claims:" not in off.stdout
    bad = run("--reference", "nope")
    assert bad.returncode != 0 and bad.stderr.startswith("error: --reference 'nope' names no model")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_shipped_pages_and_docs_carry_no_absolute_path(repo_root):
    pattern = re.compile(r"(?<![\w.:/])/(?:home|tmp|work|root|Users|private|var/folders)/")
    found = []
    for f in [*(repo_root / "docs").rglob("*"), *(repo_root / "examples").rglob("*.md")]:
        if f.is_file() and f.suffix in {".html", ".csv", ".json", ".md"}:
            text = f.read_text(errors="replace")
            found += [f"{f.relative_to(repo_root)}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not found, found
