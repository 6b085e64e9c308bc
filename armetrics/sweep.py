"""Several models -> one report each in a directory; resumable and failure-tolerant.

A model whose report already exists with the same *fingerprint* (model file hash,
loading options, probe configs, data selection, seed) is skipped, so a sweep that
was interrupted and restarted recomputes only what had not finished. Reports are
written atomically, so an interrupted sweep leaves no half-written file. A model
that fails is recorded and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

import click

from .errors import ArmetricsError, ReportError


def report_name(model: str) -> str:
    """File stem of a model's report: the file stem, or the zoo name."""
    base = model.split(":", 1)[1].replace("/", "_") if model.startswith("robustbench:") else Path(model).stem
    return re.sub(r"[^\w.+-]", "_", base) or "model"


def fingerprint(model: str, load_kwargs: dict, data, probes, options, seed: int) -> str:
    """What determines a model's report; equal fingerprints mean the report can be reused."""
    from .engine import make_probes
    from .loading import sha256_file

    path = Path(model)
    key: dict[str, Any] = {
        "model": model,
        "sha256": sha256_file(path) if path.is_file() else None,
        "load": {k: v for k, v in load_kwargs.items() if k != "device"},
        "probes": {p.name: p.config for p in make_probes(probes, options)},
        "data": data.info.to_dict() if data is not None else None,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def existing_fingerprint(path: Path) -> str | None:
    from .report import Report

    try:
        return Report.load(path).data.get("run", {}).get("fingerprint")
    except ReportError:
        return None


def run_sweep(models: Sequence[str], out_dir: Path, load_kwargs: dict, data, probes, options, seed: int,
              device: str, progress, quiet: bool) -> bool:
    """Analyze each model into ``out_dir/<name>.json``; print a final table. True if none failed."""
    from .engine import analyze
    from .loading import load_model

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArmetricsError(f"cannot create --out-dir {out_dir} ({exc.strerror}): choose a writable directory") from None
    rows = []
    names: dict[str, int] = {}
    for model in models:
        name = report_name(model)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}-{names[name]}"
        path = out_dir / f"{name}.json"
        t = time.perf_counter()
        try:
            fp = fingerprint(model, load_kwargs, data, probes, options, seed)
            if path.exists() and existing_fingerprint(path) == fp:
                rows.append((model, "skipped", f"{path} is up to date"))
                continue
            if not quiet:
                click.echo(f"analyzing {model} ...", err=True)
            net = load_model(model, **load_kwargs)
            report = analyze(net, data, probes, options=options, seed=seed, device=device, progress=progress, out_path=path)
            report.data["run"]["fingerprint"] = fp
            report.save(path)
            rows.append((model, "ok", f"{path} ({time.perf_counter() - t:.1f}s)"))
        except (ArmetricsError, RuntimeError, ValueError, TypeError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            rows.append((model, "failed", first))
    width = max(len(m) for m, _, _ in rows)
    click.echo(f"{'model':<{width}}  status   detail")
    for m, status, detail in rows:
        click.echo(f"{m:<{width}}  {status:<7}  {detail}")
    return all(status != "failed" for _, status, _ in rows)
