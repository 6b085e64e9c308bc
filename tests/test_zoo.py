"""armetrics.zoo: the RobustBench models joined with the shipped leaderboard, offline."""

from __future__ import annotations

import json
import socket
from importlib import resources
from pathlib import Path

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
    part = model_dir / "cifar10" / "Linf" / f"{ensemble['name']}.pt_m0.pt" if ensemble is not None else None
    if part is not None:  # only part of an ensemble: not present
        part.write_bytes(b"w")
    try:
        with _NoNetwork():
            again = {r["name"]: r for r in zoo_mod.zoo("cifar10", "Linf", model_dir)}
        assert [n for n, r in again.items() if r["weights_present"]] == [single["name"]]
        assert again[single["name"]]["missing_weights"] == []
        if part is not None:
            assert [m["path"] for m in again[ensemble["name"]]["missing_weights"]] == ensemble["weight_paths"][1:]
    finally:
        path.unlink()
        if part is not None:
            part.unlink()


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
    with pytest.raises(ArmetricsError, match="or all"):
        zoo_mod.zoo("all", "L3", listing[0])


@pytest.fixture(scope="module")
def everything(listing):
    """``--dataset all --threat-model all`` against the same empty model dir."""
    with _NoNetwork():
        return zoo_mod.zoo("all", "all", listing[0])


def test_all_lists_every_section_of_model_dicts(listing, everything):
    from robustbench.model_zoo import model_dicts

    expected = [(ds.value, tm.value, name) for ds, sec in model_dicts.items() for tm, entries in sec.items()
                for name in sorted(entries)]  # from robustbench itself, never a typed list
    assert [(r["dataset"], r["threat_model"], r["name"]) for r in everything] == expected
    assert {ds for ds, _, _ in expected} == {"cifar10", "cifar100", "imagenet"}
    assert {(ds, tm) for ds, tm, _ in expected} >= {("cifar10", "corruptions"), ("imagenet", "corruptions")}
    cifar = [r for r in everything if (r["dataset"], r["threat_model"]) == ("cifar10", "Linf")]
    assert cifar == listing[1]  # a section of "all" is that section's listing
    with _NoNetwork():
        imagenet = zoo_mod.zoo("imagenet", "all", listing[0])
    assert imagenet == [r for r in everything if r["dataset"] == "imagenet"]


def test_every_missing_file_has_its_path_and_source(listing, everything):
    model_dir = listing[0]
    for row in everything:
        assert len(row["weight_sources"]) == len(row["weight_paths"]) >= 1
        assert [m["path"] for m in row["missing_weights"]] == row["weight_paths"]  # nothing is in the dir
        assert all(str(p).startswith(str(model_dir / row["dataset"] / row["threat_model"] / row["name"]))
                   for p in row["weight_paths"])
        assert all(s and s.startswith("https://") for s in row["weight_sources"]), row["name"]
    by = {(r["dataset"], r["threat_model"], r["name"]): r for r in everything}
    carmon = by["cifar10", "Linf", "Carmon2019Unlabeled"]
    assert carmon["weight_sources"] == ["https://drive.google.com/uc?id=15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ"]
    assert len(by["cifar10", "Linf", "Chen2020Adversarial"]["weight_sources"]) == 3  # an ensemble: 3 files
    xcit = by["cifar10", "Linf", "Debenedetti2022Light_XCiT-S12"]  # robustbench fetches it through timm
    assert xcit["weight_sources"][0].endswith("debenedetti2022light-xcit-s-cifar10-linf.pth.tar")
    assert by["imagenet", "Linf", "Standard_R50"]["weight_sources"][0].startswith("https://download.pytorch.org/")
    assert by["imagenet", "Linf", "Salman2020Do_R18"]["preprocessing"] == "Res256Crop224"
    assert carmon["preprocessing"] is None


def test_cli_all_prints_where_each_missing_file_goes(listing):
    from armetrics.cli.compare import zoo_cmd

    model_dir = listing[0]
    with _NoNetwork():
        res = CliRunner().invoke(zoo_cmd, ["--model-dir", str(model_dir), "--dataset", "all",
                                           "--threat-model", "corruptions"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["dataset", "threat", "name"]
    assert {ln.split()[1] for ln in lines[1:]} == {"corruptions"}
    assert {ln.split()[0] for ln in lines[1:]} == {"cifar10", "cifar100", "imagenet"}
    path = model_dir / "cifar10" / "corruptions" / "Hendrycks2020AugMix_WRN.pt"
    assert f"  {path}  <-  https://drive.google.com/uc?id=" in res.stderr
    with _NoNetwork():
        files = sum(len(r["weight_paths"]) for r in zoo_mod.zoo("all", "corruptions", model_dir))
    assert len([ln for ln in res.stderr.splitlines() if "  <-  " in ln]) == files > len(lines) - 1  # ensembles


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


# --------------------------------------------------------------------------- leaderboard records (issue 17)
# (tests of the listing, zoo() and format_table, are above; these are of the shipped
# records, lookup and the build in armetrics/_leaderboard_build.py)
SHARED_SOURCE = Path("/work/shared/data/robustbench-model-info.json")  # the flattened records it was built from
#: (dataset, threat, name) -> (clean %, robust %) as published (RobustBench model_info/ at 78fcc9e)
FIXED = {
    ("cifar10", "Linf", "Hendrycks2019Using"): ("87.11", "54.92"),
    ("cifar100", "Linf", "Hendrycks2019Using"): ("59.23", "28.42"),
    ("cifar10", "corruptions", "Hendrycks2020AugMix_ResNeXt"): ("95.83", "89.09"),
    ("cifar10", "corruptions", "Hendrycks2020AugMix_WRN"): ("95.08", "88.82"),
    ("cifar100", "corruptions", "Hendrycks2020AugMix_ResNeXt"): ("78.90", "65.14"),
    ("cifar100", "corruptions", "Hendrycks2020AugMix_WRN"): ("76.28", "64.11"),
}


def shipped_doc() -> dict:
    return json.loads(resources.files("armetrics").joinpath("_data", "robustbench-model-info.json").read_text())


def test_shipped_leaderboard_has_no_duplicate_keys():
    keys = [(r["dataset"], r["threat_model"], r["model"]) for r in raw_records()]
    assert len(keys) == len(set(keys)) == 236
    assert zoo_mod.duplicate_keys(raw_records()) == []
    assert len(zoo_mod.leaderboard()) == len(keys)  # every record reachable


@pytest.mark.parametrize("key", sorted(FIXED))
def test_records_that_were_labelled_cifar10_have_their_own_numbers(key):
    clean, robust = FIXED[key]
    rec = zoo_mod.lookup("robustbench:" + "/".join(key))
    assert rec["clean_accuracy"] == pytest.approx(float(clean) / 100, abs=1e-12)
    assert rec["robust_accuracy"] == pytest.approx(float(robust) / 100, abs=1e-12)
    assert rec["robust_metric"] == ("corruptions_acc" if key[1] == "corruptions" else "autoattack_acc")
    (row,) = [r for r in zoo_mod.leaderboard(key[0], key[1]) if r["name"] == key[2]]
    assert row == rec


def test_shipped_file_says_what_was_relabelled():
    moved = {(r["to"], r["threat_model"], r["model"]): (r["from"], r["clean_acc"]) for r in shipped_doc()["relabelled"]}
    assert moved == {k: ("cifar10", FIXED[k][0]) for k in FIXED if k[0] == "cifar100"}


def test_a_leaderboard_file_with_a_repeated_key_is_refused():
    from armetrics.errors import DataError

    raws = raw_records()
    twice = next(r for r in raws if r["model"] == "Hendrycks2019Using" and r["dataset"] == "cifar100")
    text = json.dumps({"models": [*raws, {**twice, "dataset": "cifar10"}]})
    with pytest.raises(DataError) as err:
        zoo_mod.index_leaderboard(text, "board.json")
    msg = str(err.value)
    assert "\n" not in msg and "board.json" in msg and "cifar10/Linf/Hendrycks2019Using" in msg
    assert "python -m armetrics._leaderboard_build" in msg
    assert len(zoo_mod.index_leaderboard(json.dumps({"models": raws}))) == len(raws)


def mislabelled(records: list[dict]) -> list[dict]:
    """The records as the flattened source had them: the three CIFAR-100 ones labelled cifar10."""
    wrong = {k for k in FIXED if k[0] == "cifar100"}
    return [{**r, "dataset": "cifar10"} if (r["dataset"], r["threat_model"], r["model"]) in wrong else r
            for r in records]


def test_build_gives_colliding_records_their_dataset_from_their_fields(tmp_path):
    from armetrics import _leaderboard_build as build

    doc = shipped_doc()
    src = tmp_path / "flat.json"
    src.write_text(json.dumps({"source": doc["source"], "note": doc["note"], "models": mislabelled(doc["models"])}))
    assert len(zoo_mod.duplicate_keys(mislabelled(doc["models"]))) == 3
    assert build.build(src) == doc  # the shipped file is what the build makes of it
    again = tmp_path / "again.json"
    again.write_text(json.dumps(doc))
    assert build.build(again)["models"] == doc["models"] and build.build(again)["relabelled"] == []


@pytest.mark.skipif(not SHARED_SOURCE.is_file(), reason="the shared source records are not on this machine")
def test_shipped_file_is_the_build_of_the_shared_source(tmp_path):
    from armetrics import _leaderboard_build as build

    out = tmp_path / "built.json"
    assert build.main([str(SHARED_SOURCE), "--out", str(out)]) == 0
    assert out.read_text() == resources.files("armetrics").joinpath("_data", "robustbench-model-info.json").read_text()


def test_build_refuses_a_collision_it_cannot_call(tmp_path):
    from armetrics import _leaderboard_build as build
    from armetrics.errors import DataError

    records = mislabelled(raw_records())
    for r in records:  # make the two Hendrycks2019Using records equally plausible for both datasets
        if r["model"] == "Hendrycks2019Using":
            r["clean_acc"] = "76.5"
    src = tmp_path / "flat.json"
    src.write_text(json.dumps({"models": records}))
    with pytest.raises(DataError, match=r"^cannot tell which dataset each record of cifar10/Linf/Hendrycks2019Using"):
        build.build(src)


def test_build_from_a_model_info_folder_takes_the_dataset_from_the_path(tmp_path):
    from armetrics import _leaderboard_build as build

    for dataset, clean in (("cifar10", "87.11"), ("cifar100", "59.23")):
        folder = tmp_path / "model_info" / dataset / "Linf"
        folder.mkdir(parents=True)
        (folder / "Hendrycks2019Using.json").write_text(json.dumps(
            {"dataset": "cifar10", "eps": "8/255", "clean_acc": clean, "autoattack_acc": "1.0"}))  # field: always cifar10
    (tmp_path / "model_info" / "cifar100" / "Linf" / "unaggregated_results.csv").write_text("not a record")
    doc = build.build(tmp_path / "model_info", commit="78fcc9e")
    assert [(r["dataset"], r["clean_acc"]) for r in doc["models"]] == [("cifar10", "87.11"), ("cifar100", "59.23")]
    assert [(r["from"], r["to"]) for r in doc["relabelled"]] == [("cifar10", "cifar100")]
    assert doc["source"].endswith("commit 78fcc9e")
    board = zoo_mod.index_leaderboard(json.dumps(doc))
    assert board[("cifar100", "Linf", "Hendrycks2019Using")]["clean_accuracy"] == pytest.approx(0.5923)
