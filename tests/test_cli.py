"""The armetrics command: analyze, probes, one-line errors, nothing overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import armetrics as am
from armetrics_testkit import CHECKPOINTS, EXAMPLES

CKPT = str(CHECKPOINTS / "small_cnn_eps0.pt")
ARCH = f"{EXAMPLES / 'models.py'}:small_cnn"


def assert_one_line_error(proc, match: str, code: int = 1):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    # the cost estimate printed before the data pass (an error after the pass follows it) is no part of the error
    lines = [line for line in proc.stderr.strip().splitlines()
             if line.strip() and not line.startswith(("estimate: ", "note: about "))]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") or code == 2
    assert match in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    """An ImageFolder of 120 CIFAR-10 test images (PNG, lossless) from the packaged sample."""
    root = tmp_path_factory.mktemp("cifar")
    d = am.load_data("cifar10-sample", n=120, seed=5)
    i = 0
    for x, y in d:
        for img, label in zip(x, y):
            folder = root / d.info.classes[int(label)]
            folder.mkdir(exist_ok=True)
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i:04d}.png")
            i += 1
    return root


def test_analyze_image_folder_equals_plain_loop(cli, cifar_folder, tmp_path):
    out = tmp_path / "r.json"
    proc = cli("analyze", CKPT, "--arch", ARCH, "--probes", "accuracy", "--data", str(cifar_folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = am.Report.load(out)
    model = am.load_model(CKPT, arch=ARCH)
    data = am.load_data(cifar_folder)
    correct = total = 0
    with torch.no_grad():
        for x, y in data:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert report.summary("accuracy")["accuracy"] == correct / total
    assert total == 120
    assert "accuracy" in proc.stdout and f"{correct / total:.4g}" in proc.stdout


def test_json_to_stdout(cli_inproc):
    proc = cli_inproc("analyze", CKPT, "--arch", ARCH, "-n", "50", "--out", "-", "--quiet")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["data"]["n"] == 50 and d["probes"]["accuracy"]["summary"]["n"] == 50


def test_probes_command(cli_inproc):
    proc = cli_inproc("probes")
    assert proc.returncode == 0
    assert "accuracy" in proc.stdout and "--set accuracy.per_class=<bool>" in proc.stdout


@pytest.mark.parametrize("args,match,code", [
    (["--probes", "acuracy"], "unknown probe 'acuracy': did you mean accuracy", 1),
    (["--set", "accuracy.per_clas=true"], "valid options: per_class", 1),
    (["--set", "accuracyper_class"], "malformed --set", 1),
    (["--set", "accuracy.per_class=maybe"], "expected true or false", 1),
    (["-n", "0"], "-n must be an integer of at least 1", 1),
    (["--data", "/no/such/dir"], "does not exist", 1),
    (["--arch-kwargs", "{bad"], "--arch-kwargs is not JSON", 1),
    (["--mean", "0.5,x", "--std", "1,1,1"], "--mean takes comma-separated numbers", 1),
])
def test_cli_errors_are_one_line(cli_inproc, args, match, code):
    proc = cli_inproc("analyze", CKPT, "--arch", ARCH, *args)
    assert_one_line_error(proc, match, code)


def test_missing_arch_and_file(cli, cli_inproc, tmp_path):
    assert_one_line_error(cli("analyze", CKPT), "pass --arch SPEC")  # a real process, once
    assert_one_line_error(cli_inproc("analyze", str(tmp_path / "nope.pt")), "does not exist")


def test_debug_shows_traceback(cli):
    proc = cli("analyze", CKPT, "--probes", "acuracy", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_failed_run_overwrites_nothing(cli_inproc, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("precious")
    proc = cli_inproc("analyze", CKPT, "--arch", ARCH, "--data", str(tmp_path / "missing"), "--out", str(out))
    assert proc.returncode == 1
    assert out.read_text() == "precious"


def test_unwritable_out(cli_inproc, tmp_path):
    out = tmp_path / "no_dir" / "r.json"
    proc = cli_inproc("analyze", CKPT, "--arch", ARCH, "-n", "20", "--out", str(out))
    assert_one_line_error(proc, "cannot write")
    assert not out.exists()


def test_usage_error_exit_2(cli_inproc):
    proc = cli_inproc("analyze")
    assert proc.returncode == 2
    proc = cli_inproc("analyze", "a.pt", "b.pt")
    assert proc.returncode == 2 and "--out-dir" in proc.stderr


def test_sweep_out_dir_resumes(cli_inproc, tmp_path):
    cli = cli_inproc
    out = tmp_path / "reports"
    bad = tmp_path / "broken.pt"
    bad.write_text("<html>quota exceeded</html>")
    proc = cli("analyze", CKPT, str(bad), "--arch", ARCH, "-n", "20", "--out-dir", str(out), "--quiet")
    assert proc.returncode == 1
    assert "failed" in proc.stdout and "HTML page" in proc.stdout
    first = (out / "small_cnn_eps0.json").read_text()
    proc = cli("analyze", CKPT, "--arch", ARCH, "-n", "20", "--out-dir", str(out), "--quiet")
    assert proc.returncode == 0 and "skipped" in proc.stdout
    assert (out / "small_cnn_eps0.json").read_text() == first
    proc = cli("analyze", CKPT, "--arch", ARCH, "-n", "21", "--out-dir", str(out), "--quiet")
    assert "ok" in proc.stdout and (out / "small_cnn_eps0.json").read_text() != first


def test_default_probes_are_the_built_ins_in_their_fixed_order():
    from armetrics.cli.analyze import PROBE_ORDER, default_probes
    from armetrics.registry import get_probe, list_probes

    builtin = {n for n in list_probes() if get_probe(n).__module__.startswith("armetrics.probes.")}
    names = default_probes().split(",")
    assert default_probes().startswith("accuracy,spectrum,margin,confidence,smoothness,robust_accuracy")
    assert set(names) == builtin and len(names) == len(builtin)  # a new built-in joins, after PROBE_ORDER
    assert set(PROBE_ORDER) <= builtin  # no stale name in the order


def test_debug_is_one_option_read_by_main(cli_inproc, monkeypatch):
    from armetrics.cli import _begin, cli
    from armetrics.errors import ConfigError

    for name, command in cli.commands.items():
        (debug,) = [p for p in command.params if p.name == "debug"]
        assert debug.callback is _begin and not debug.expose_value, name
    monkeypatch.setenv("ARMETRICS_DEBUG", "")  # restored after the test: --debug sets it
    with pytest.raises(ConfigError, match="unknown probe"):  # --debug after the command: the traceback
        cli_inproc("analyze", CKPT, "--arch", ARCH, "--probes", "acuracy", "--debug")
    monkeypatch.setenv("ARMETRICS_DEBUG", "")
    # the argv is not scanned: a model file named --debug is a model file
    assert_one_line_error(cli_inproc("analyze", "--arch", ARCH, "--", "--debug"), "does not exist")


def test_sweep_returns_rows_and_prints_nothing(tmp_path, capsys):
    from armetrics.sweep import run_sweep

    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    events = []
    rows = run_sweep([CKPT, str(bad), CKPT], tmp_path / "out", {"arch": ARCH}, None, "spectrum", {}, 0, "cpu", False,
                     on_event=lambda *event: events.append(event))
    assert capsys.readouterr() == ("", "")
    assert [(m, status) for m, status, _ in rows] == [(CKPT, "ok"), (str(bad), "failed")]
    assert rows[0][2].startswith(str(tmp_path / "out" / "small_cnn_eps0.json")) and "recognised checkpoint" in rows[1][2]
    assert events == [("start", CKPT, 0, 2), ("ok", CKPT, 1, 2), ("start", str(bad), 1, 2)]
    again = run_sweep([CKPT], tmp_path / "out", {"arch": ARCH}, None, "spectrum", {}, 0, "cpu", False)
    assert again == [(CKPT, "skipped", f"{tmp_path / 'out' / 'small_cnn_eps0.json'} is up to date")]


def test_sweep_redoes_a_report_whose_side_file_is_gone(tmp_path):
    from armetrics.sweep import run_sweep

    data = am.load_data("cifar10-sample", n=8)
    args = (tmp_path / "out", {"arch": ARCH}, data, "confidence", {}, 0, "cpu", False)
    assert [s for _, s, _ in run_sweep([CKPT], *args)] == ["ok"]
    side = tmp_path / "out" / "small_cnn_eps0.samples.npz"
    assert side.exists()
    assert [s for _, s, _ in run_sweep([CKPT], *args)] == ["skipped"]
    side.unlink()
    assert [s for _, s, _ in run_sweep([CKPT], *args)] == ["ok"] and side.exists()


def test_every_submodule_is_an_attribute_and_import_is_light():
    import subprocess
    import sys

    code = """if True:
    import json, pkgutil, sys
    import armetrics
    light = [m for m in ('torch', 'numpy', 'matplotlib', 'click') if m in sys.modules]
    import armetrics.sweep
    library_click = 'click' in sys.modules
    names = sorted(m.name for m in pkgutil.iter_modules(armetrics.__path__) if not m.name.startswith('_'))
    kinds = {n: type(getattr(armetrics, n)).__name__ for n in names}
    import armetrics.comparison, armetrics.cli.compare, armetrics.cli.analyze
    after = [type(armetrics.compare).__name__, type(armetrics.cli.compare).__name__, type(armetrics.cli.analyze).__name__]
    print(json.dumps([light, library_click, kinds, after]))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    light, library_click, kinds, after = json.loads(out)
    assert light == [] and library_click is False
    assert {"comparison", "sweep", "checks", "safeio", "export_check", "zipcheck", "npz", "interrupt",
            "distributed", "cli"} <= set(kinds)
    assert set(kinds.values()) == {"module"}, kinds
    assert after == ["function", "module", "module"]
    assert am.compare.__module__ == "armetrics.comparison"
