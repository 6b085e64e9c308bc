"""armetrics.zoo: the RobustBench models joined with the shipped leaderboard, offline."""

from __future__ import annotations

import json
import socket
from importlib import resources

import pytest
from click.testing import CliRunner

from armetrics import zoo as zoo_mod
from armetrics.errors import ArmetricsError


def raw_records() -> list[dict]:
    text = resources.files("armetrics").joinpath("_data", "robustbench-model-info.json").read_text()
    return json.loads(text)["models"]


class _NoNetwork:
    """Fail loudly if anything tries to open a network connection."""

    def __enter__(self):
        self.mp = pytest.MonkeyPatch()

        def refuse(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args}")

        self.mp.setattr(socket.socket, "connect", refuse)
        self.mp.setattr(socket, "create_connection", refuse)
        return self

    def __exit__(self, *exc):
        self.mp.undo()


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    """The cifar10/Linf listing against an empty model dir (imports robustbench once, ~15 s)."""
    model_dir = tmp_path_factory.mktemp("models")
    with _NoNetwork():
        rows = zoo_mod.zoo("cifar10", "Linf", model_dir)
    return model_dir, rows


def test_listing_is_robustbench_joined_with_leaderboard(listing):
    from armetrics._robustbench import zoo_names

    _, rows = listing
    assert [r["name"] for r in rows] == zoo_names("cifar10", "Linf")  # left side: every robustbench model
    assert len(rows) > 50
    raw = {r["model"]: r for r in raw_records() if r["dataset"] == "cifar10" and r["threat_model"] == "Linf"}
    on_board = [r for r in rows if r["on_leaderboard"]]
    assert len(on_board) == len([r for r in rows if r["name"] in raw]) > 50
    for row in on_board:
        rec = raw[row["name"]]
        assert row["clean_accuracy"] == pytest.approx(float(rec["clean_acc"]) / 100, abs=1e-12)
        robust = rec["external"] if "external" in rec else rec["autoattack_acc"]
        assert row["robust_accuracy"] == pytest.approx(float(robust) / 100, abs=1e-12)
        assert row["robust_metric"] == ("external" if "external" in rec else "autoattack_acc")
        assert row["architecture"] == rec["architecture"]
        assert row["venue"] == " ".join(rec["venue"].replace("<br>", " ").split())  # "GitHub,<br>Sep 2019"
        num, _, den = rec["eps"].partition("/")
        assert row["eps"] == pytest.approx(float(num) / float(den or 1), rel=0.02)  # 0.031 is 8/255
    assert any(r["robust_metric"] == "external" for r in on_board)  # the override is exercised
    for row in rows:
        if not row["on_leaderboard"]:
            assert row["clean_accuracy"] is None and row["robust_accuracy"] is None
    assert not any(r["weights_present"] for r in rows)


def test_weights_present_when_file_exists(listing):
    model_dir, rows = listing
    single = next(r for r in rows if len(r["weight_paths"]) == 1)
    ensemble = next((r for r in rows if len(r["weight_paths"]) > 1), None)
    path = model_dir / "cifar10" / "Linf" / f"{single['name']}.pt"
    assert single["weight_paths"] == [str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    if ensemble is not None:  # only part of an ensemble: not present
        (model_dir / "cifar10" / "Linf" / f"{ensemble['name']}.pt_m0.pt").write_bytes(b"w")
    try:
        with _NoNetwork():
            again = {r["name"]: r for r in zoo_mod.zoo("cifar10", "Linf", model_dir)}
        assert [n for n, r in again.items() if r["weights_present"]] == [single["name"]]
    finally:
        path.unlink()


def test_cli_table_and_json(listing):
    from armetrics.cli.compare import zoo_cmd

    model_dir, rows = listing
    runner = CliRunner()
    res = runner.invoke(zoo_cmd, ["--model-dir", str(model_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(json.dumps(rows))
    res = runner.invoke(zoo_cmd, ["--model-dir", str(model_dir)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["name", "architecture", "eps", "clean%", "robust%", "weights", "venue"]
    board = next(r for r in rows if r["on_leaderboard"])
    line = next(ln for ln in lines if ln.startswith(board["name"] + " "))
    assert f"{100 * board['clean_accuracy']:.2f}" in line and f"{100 * board['robust_accuracy']:.2f}" in line
    assert len(lines) == len(rows) + 1


def test_unknown_dataset_is_one_line_error(listing):
    with pytest.raises(ArmetricsError) as err:
        zoo_mod.zoo("mnist", "Linf", listing[0])
    assert "mnist" in str(err.value) and "\n" not in str(err.value)


def test_lookup_and_parsers():
    recs = [r for r in raw_records() if r["dataset"] == "cifar10" and r["threat_model"] == "L2"]
    rec = recs[0]
    got = zoo_mod.lookup(f"robustbench:cifar10/L2/{rec['model']}")
    assert got["name"] == rec["model"] and got["clean_accuracy"] == pytest.approx(float(rec["clean_acc"]) / 100)
    assert zoo_mod.lookup(f"robustbench:{rec['model']}", threat_model="L2")["name"] == rec["model"]
    assert zoo_mod.lookup(f"robustbench:{rec['model']}") is None  # default Linf: not that record
    assert zoo_mod.lookup("robustbench:cifar10/Linf/NoSuchModel") is None
    assert zoo_mod.lookup("models/cnn.pt") is None
    assert zoo_mod.parse_percent("59.53") == pytest.approx(0.5953)
    assert zoo_mod.parse_percent(None) is None and zoo_mod.parse_percent("n/a") is None
    assert zoo_mod.parse_eps("8/255") == 8 / 255 and zoo_mod.parse_eps("0.5") == 0.5 and zoo_mod.parse_eps(None) is None
    assert not any("<" in (r["venue"] or "") for r in zoo_mod.leaderboard())
    assert any(r["venue"] == "GitHub, Sep 2019" for r in zoo_mod.leaderboard())
    corr = [r for r in zoo_mod.leaderboard("cifar10", "corruptions")]
    assert corr and all(r["robust_metric"] == "corruptions_acc" for r in corr)


@pytest.mark.parametrize("eps, text", [(8 / 255, "8/255"), (0.0, "0"), (0.5, "0.5"), (1 / 255, "1/255"),
                                       (0.031, "0.031"), (None, "–"), (float("nan"), "–"), (4.5 / 255, "0.0176471")])
def test_format_eps(eps, text):
    """One wording of a radius for the page and the figures: k/255 only for k >= 1."""
    from armetrics.zoo import format_eps

    assert format_eps(eps) == text
