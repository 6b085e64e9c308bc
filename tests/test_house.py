"""House rules a newcomer can rely on (issue 16): short functions, probes that do not
import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "armetrics"
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_60_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for p in sorted(PACKAGE.rglob("*.py")) for f in _functions(p)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "split these into named steps: " + "; ".join(long)


def test_no_probe_imports_another_probe():
    probes = {p.stem for p in (PACKAGE / "probes").glob("*.py") if p.stem != "__init__"}
    found = []
    for p in sorted((PACKAGE / "probes").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and (node.module or "") in probes:
                found.append(f"{p.name} imports .{node.module}")
            if isinstance(node, ast.ImportFrom) and node.level == 1 and not node.module:
                found += [f"{p.name} imports .{a.name}" for a in node.names if a.name in probes]
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("armetrics.probes."):
                found.append(f"{p.name} imports {node.module}")
    assert not found, "; ".join(found) + ": move shared code to armetrics/functional.py"
