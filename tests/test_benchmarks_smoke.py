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

    import torch

    spec = importlib.util.spec_from_file_location("zoo_coverage", repo_root / "benchmarks" / "zoo_coverage.py")
    zc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zc)
    entries = zc.entries()
    assert len(entries) == len(set(entries)) >= 200
    assert {d for d, _, _ in entries} == {"cifar10", "cifar100", "imagenet"}
    files = zc._distributed_files(torch.nn.Linear(2, 2), "Andriushchenko2020Understanding", "cifar10", {"gdrive_id": "x"})
    assert list(files) == ["Andriushchenko2020Understanding.pt"] and set(files["Andriushchenko2020Understanding.pt"]) == {"last"}
    monkeypatch.setattr(zc, "PAGE", tmp_path / "zoo-coverage.md")
    rows = {"a": {"dataset": "cifar10", "threat_model": "Linf", "name": "A", "architecture": "WideResNet",
                  "parameters": 36_479_194, "load_ok": True, "logits_equal": True, "probes_ok": True, "seconds": 9.5},
            "b": {"dataset": "cifar10", "threat_model": "Linf", "name": "B", "load_ok": False,
                  "reason": "robustbench cannot construct it: RuntimeError: needs | CUDA"}}
    zc.write_page(rows, len(entries))
    text = (tmp_path / "zoo-coverage.md").read_text()
    assert f"2 of the {len(entries)} entries" in text and "1 load by name" in text
    assert "| cifar10 | Linf | A | WideResNet | 36.5M | yes | yes | yes | not run | 9.5 |  |" in text
    assert "| cifar10 | Linf | B |  |  | NO |  |  |  |  | robustbench cannot construct it: RuntimeError: needs \\| CUDA |" in text
