"""Several models -> one report each in a directory; resumable and failure-tolerant.

A model whose report already exists with the same *fingerprint* (model file hash,
loading options, probe configs, data selection, seed) is skipped, so a sweep that
was interrupted and restarted recomputes only what had not finished. Reports are
written atomically by this (the driver) process, so an interrupted sweep leaves no
half-written report. A model that fails is recorded and the sweep goes on.

Executors: ``local`` analyzes the models one after another in this process;
``ray`` runs one Ray task per model (``ray.init(address)``, local when no address),
each with its own CPU/GPU request, and writes each report as its task finishes.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from . import interrupt
from .errors import ArmetricsError, ConfigError, ReportError

FAILURES = (ArmetricsError, RuntimeError, ValueError, TypeError, OSError)


def report_name(model: str) -> str:
    """File stem of a model's report: the file stem, or the zoo name."""
    base = model.split(":", 1)[1].replace("/", "_") if model.startswith("robustbench:") else Path(model).stem
    return re.sub(r"[^\w.+-]", "_", base) or "model"


def fingerprint(model: str, load_kwargs: dict, data_spec: dict | None, probes, options, seed: int) -> str:
    """What determines a model's report; equal fingerprints mean the report can be reused."""
    from .engine import make_probes
    from .loading import sha256_file

    path = Path(model)
    key: dict[str, Any] = {
        "model": model,
        "sha256": sha256_file(path) if path.is_file() else None,
        "load": {k: v for k, v in load_kwargs.items() if k != "device"},
        "probes": {p.name: p.config for p in make_probes(probes, options)},
        "data": data_spec,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def existing_fingerprint(path: Path) -> str | None:
    from .report import Report

    try:
        return Report.load(path).data.get("run", {}).get("fingerprint")
    except ReportError:
        return None


def analyze_one(model: str, load_kwargs: dict, data: Any, probes, options, seed: int, device: str, progress) -> dict:
    """Load and analyze one model; the report as a dict. ``data`` is a Data or a spec
    dict for :func:`armetrics.data.load_data` (what a remote task receives)."""
    from .data import load_data
    from .engine import analyze
    from .loading import load_model

    if isinstance(data, dict):
        data = load_data(**data)
    net = load_model(model, **load_kwargs)
    report = analyze(net, data, probes, options=options, seed=seed, device=device, progress=progress)
    return None if report is None else report.to_dict()


def run_sweep(models: Sequence[str], out_dir: Path, load_kwargs: dict, data, probes, options, seed: int,
              device: str, progress, quiet: bool, data_spec: dict | None = None, executor: str = "local",
              ray_address: str | None = None, task_cpus: float = 1, task_gpus: float = 0) -> bool:
    """Analyze each model into ``out_dir/<name>.json``; print a final table. True if none failed."""
    from . import distributed
    from .report import Report

    d = distributed.current()
    main = d is None or d.is_main
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArmetricsError(f"cannot create --out-dir {out_dir} ({exc.strerror}): choose a writable directory") from None
    for stale in out_dir.glob(".*.json.*.tmp"):  # left by a run killed mid-write
        if main:
            stale.unlink(missing_ok=True)

    rows: dict[str, tuple[str, str]] = {}
    todo: list[tuple[str, Path, str]] = []
    names: dict[str, int] = {}
    for model in models:
        name = report_name(model)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name}-{names[name]}"
        path = out_dir / f"{name}.json"
        try:
            fp = fingerprint(model, load_kwargs, data_spec, probes, options, seed)
        except FAILURES as exc:
            rows[model] = ("failed", _first_line(exc))
            continue
        if path.exists() and existing_fingerprint(path) == fp:
            rows[model] = ("skipped", f"{path} is up to date")
        else:
            todo.append((model, path, fp))

    def finished(model: str, path: Path, fp: str, result: dict | Exception, seconds: float) -> None:
        if isinstance(result, BaseException):
            rows[model] = ("failed", _first_line(result))
            return
        if result is not None:
            report = Report(result)
            report.data["run"]["fingerprint"] = fp
            interrupt.check()
            report.save(path)
        rows[model] = ("ok", f"{path} ({seconds:.1f}s)")
        if not quiet and main:
            done = sum(1 for s, _ in rows.values() if s != "skipped")
            click.echo(f"[{done}/{len(todo)}] {model}: ok", err=True)

    if executor == "ray":
        _run_ray(todo, finished, load_kwargs, data_spec, probes, options, seed, device, ray_address, task_cpus, task_gpus, quiet)
    else:
        for model, path, fp in todo:
            if not quiet and main:
                click.echo(f"analyzing {model} ...", err=True)
            t = time.perf_counter()
            try:
                result: Any = analyze_one(model, load_kwargs, data, probes, options, seed, device, progress)
            except FAILURES as exc:
                result = exc
            finished(model, path, fp, result, time.perf_counter() - t)
            distributed.barrier(d)

    ordered = [(m, *rows[m]) for m in dict.fromkeys(models) if m in rows]
    if main:
        width = max(len(m) for m, _, _ in ordered)
        click.echo(f"{'model':<{width}}  status   detail")
        for m, status, detail in ordered:
            click.echo(f"{m:<{width}}  {status:<7}  {detail}")
    return all(status != "failed" for _, status, _ in ordered)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _run_ray(todo, finished: Callable, load_kwargs, data_spec, probes, options, seed, device, address, cpus, gpus, quiet) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: run `pip install 'armetrics[ray]'` (or `pip install ray`)") from None
    # remote workers may start in another directory: hand them absolute paths
    def absolute(value: str | None) -> str | None:
        if value and ":" in value and value.split(":", 1)[0].endswith(".py"):
            file, fn = value.rsplit(":", 1)
            return f"{Path(file).resolve()}:{fn}"
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    load_kwargs = {**load_kwargs, "arch": absolute(load_kwargs.get("arch")),
                   "model_dir": str(Path(load_kwargs.get("model_dir", "models")).resolve())}
    if data_spec is not None:
        data_spec = {**data_spec, "source": absolute(data_spec["source"])}
    todo = [(absolute(model), path, fp, model) for model, path, fp in todo]
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ArmetricsError(f"cannot start or reach Ray at {address or 'a local instance'} ({_first_line(exc)}): check --ray-address") from None

    def task(model):
        import armetrics.sweep as sw

        t = time.perf_counter()
        try:
            return sw.analyze_one(model, load_kwargs, data_spec, probes, options, seed, device, False), time.perf_counter() - t
        except sw.FAILURES as exc:
            return ArmetricsError(f"{type(exc).__name__}: {_first_line(exc)}") if not isinstance(exc, ArmetricsError) else exc, time.perf_counter() - t

    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(task)
    pending = {remote.remote(target): (model, path, fp) for target, path, fp, model in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        model, path, fp = pending.pop(done[0])
        try:
            result, seconds = ray.get(done[0])
        except Exception as exc:  # the task itself died (worker crash, OOM)
            result, seconds = exc, 0.0
        finished(model, path, fp, result, seconds)
