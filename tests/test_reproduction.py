"""The paper-reproduction pipeline runs end to end on a tiny subset with the shipped
checkpoints, and the shipped checkpoints load as the README says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import armetrics as am

EPS = (0, 2, 4, 8)


@pytest.mark.parametrize("eps", EPS)
def test_shipped_checkpoints_load_and_have_cards(eps, checkpoints_dir, examples_dir):
    ckpt = checkpoints_dir / f"small_cnn_eps{eps}.pt"
    card = json.loads(ckpt.with_suffix(".json").read_text())
    model = am.load_model(ckpt, arch=f"{examples_dir / 'models.py'}:small_cnn", arch_kwargs=card["arch_kwargs"])
    assert model.armetrics_info.format == "state_dict"
    assert card["eps"] == f"{eps}/255"
    assert ckpt.stat().st_size < 5 * 2**20
    for key in ("clean_accuracy", "pgd_accuracy_8", "epochs", "seed"):
        assert key in card


def test_reproduction_pipeline_smoke(tmp_path, examples_dir, repo_root):
    doc = tmp_path / "docs" / "repro.md"
    img = tmp_path / "docs" / "img"
    proc = subprocess.run(
        [sys.executable, str(examples_dir / "reproduce_paper.py"), "-n", "12", "--out", str(tmp_path / "reports"),
         "--img", str(img), "--doc", str(doc),
         "--set", "smoothness.max_samples=3", "--set", "smoothness.bootstrap=20", "--set", "smoothness.pgd_steps=2",
         "--set", "smoothness.iters=3", "--set", "robust_accuracy.steps=2"],
        capture_output=True, text=True, cwd=repo_root, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = doc.read_text()
    verdicts = re.findall(r"^\| (\d(?:\.\w+)?)(?: \(check\))?(?: [A-Z][^|]*)? \|.* \| (?:\*\*)?"
                          r"(reproduced|partly|not reproduced|inconclusive)(?:\*\*)?(?: \(\d+/\d+ layers\))? \|$", text, re.M)
    assert [c for c, _ in verdicts if "." not in c] == ["1", "2", "3", "4"]
    assert {"1.sigma_std", "1.sigma_max", "1.cv", "1.anisotropy"} <= {c for c, _ in verdicts}
    # every verdict in the document is the library's on the reports the script wrote
    from armetrics import claims

    paths = sorted((tmp_path / "reports").glob("*.json"), key=lambda p: int(re.search(r"eps(\d+)", p.name).group(1)))
    result = claims.evaluate(paths[0], paths[1:], reps=1000, seed=0)
    assert dict(verdicts) == {v.claim: v.verdict for v in result.verdicts}
    assert result.markdown(notes=False) in text
    # `armetrics compare` (claims on by default: one report has eps 0) gives the document's verdicts
    cmp = subprocess.run([sys.executable, "-m", "armetrics", "compare", *map(str, paths), "--out", str(tmp_path / "cmp")],
                         capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    page_claims = json.loads((tmp_path / "cmp" / "claims.json").read_text())
    assert {v["claim"]: v["verdict"] for v in page_claims["verdicts"]} == dict(verdicts)
    assert "claims: 1 " in cmp.stdout
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (doc.parent / link).is_file(), link
    reports = sorted((tmp_path / "reports").glob("*.json"))
    assert len(reports) == len(EPS)
    for r in reports:
        rep = am.Report.load(r)
        assert set(rep.probes) == {"accuracy", "spectrum", "margin", "confidence", "smoothness", "robust_accuracy"}
        assert rep.data["data"]["n"] == 12
        assert r.with_suffix(".samples.npz").is_file()
