"""benchmarks/run.py keeps working (it never asserts times: only that rows are produced)."""

import json
import os
import subprocess
import sys


def test_benchmark_script_quick_row(tmp_path, repo_root):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "run.py"), "--quick", "--only", "data_probes",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["bench"] for r in rows] == ["data_probes"]
    assert rows[0]["ratio"] > 0 and "goal" in rows[0]
    assert "margin+confidence+accuracy" in proc.stdout


def test_zoo_coverage_rows_and_page(tmp_path, repo_root, monkeypatch):
    """benchmarks/zoo_coverage.py: the zoo comes from robustbench (all 206 entries of
    1.1.1, every dataset), a ``last``-wrapped entry is saved the way it is distributed,
    and the page lists each row with its outcome and reason."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_coverage", repo_root / "benchmarks" / "zoo_coverage.py")
    zc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zc)
    entries = zc.entries()
    assert len(entries) == len(set(entries)) >= 200
    assert {d for d, _, _ in entries} == {"cifar10", "cifar100", "imagenet"}
    model, files = zc._distributed_files("Andriushchenko2020Understanding", "cifar10", "Linf", str(tmp_path))
    (path, obj), = files.items()
    assert path == tmp_path / "cifar10" / "Linf" / "Andriushchenko2020Understanding.pt" and set(obj) == {"last"}
    assert obj["last"].keys() == model.state_dict().keys()
    _, files = zc._distributed_files("Chen2020Adversarial", "cifar10", "Linf", str(tmp_path))  # 3 members
    assert [p.name for p in files] == [f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]
    monkeypatch.setattr(zc, "PAGE", tmp_path / "zoo-coverage.md")
    a, b, c = [zc.key(*e) for e in entries if e[:2] == ("cifar10", "Linf")][:3]
    rows = {a: {"dataset": "cifar10", "threat_model": "Linf", "name": a.split("/")[2], "architecture": "WideResNet",
                "parameters": 36_479_194, "load_ok": True, "logits_equal": True, "probes_ok": True, "seconds": 9.5,
                "spectrum_fft_seconds": 3.0},
            b: {"dataset": "cifar10", "threat_model": "Linf", "name": b.split("/")[2], "load_ok": False,
                "reason": "robustbench cannot construct it: RuntimeError: needs | CUDA"}}
    sizes = {a: (1, "sig"), b: (1, "sig"), c: (1, "sig")}
    assert zc._fft_twin(c, sizes, rows) == a and zc._fft_twin(a, sizes, rows) is None  # b failed: not a twin
    rows[c] = {**rows[a], "name": c.split("/")[2], "spectrum_fft_same_as": a}
    del rows[c]["spectrum_fft_seconds"]
    zc.write_page(rows, entries)
    text = (tmp_path / "zoo-coverage.md").read_text()
    assert f"3 of the {len(entries)} entries" in text and "2 load by name" in text
    name_a, name_b, name_c = (k.split("/")[2] for k in (a, b, c))
    assert f"| cifar10 | Linf | {name_a} | WideResNet | 36.5M | yes | yes | yes | 3.0 | 9.5 |  |" in text
    assert f"| cifar10 | Linf | {name_c} | WideResNet | 36.5M | yes | yes | yes | = {name_a} | 9.5 |  |" in text
    assert f"| cifar10 | Linf | {name_b} |  |  | NO |  |  |  |  | robustbench cannot construct it: RuntimeError: needs \\| CUDA |" in text
    table = [line for line in text.splitlines() if line.startswith("| cifar") or line.startswith("| imagenet")]
    assert len(table) == len(entries) and sum("not run yet" in line for line in table) == len(entries) - 3


def test_identify_benchmark_warm_rows(repo_root, architecture_index, monkeypatch):
    """benchmarks/identify.py's warm rows: both commands run and the row has both times."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("identify_bench", repo_root / "benchmarks" / "identify.py")
    ib = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ib)
    monkeypatch.setattr(ib, "CASES", ["torchvision.models:resnet18"])  # the session index's one candidate
    (row,) = ib.warm(architecture_index, repeat=1)
    assert row["spec"] == "torchvision.models:resnet18" and row["explicit_s"] > 0 and row["identified_s"] > 0
    assert abs(row["extra_s"] - (row["identified_s"] - row["explicit_s"])) <= 0.011  # each rounded to 0.01
