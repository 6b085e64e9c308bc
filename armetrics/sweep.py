"""Several models -> one report each in a directory; resumable and failure-tolerant.

A model whose report already exists with the same *fingerprint* (model file hash,
loading options, probe configs, data selection, seed) is skipped, so a sweep that
was interrupted and restarted recomputes only what had not finished. Reports are
written atomically by this (the driver) process, so an interrupted sweep leaves no
half-written report. A model that fails is recorded and the sweep goes on.

Executors: ``local`` analyzes the models one after another in this process;
``ray`` runs one Ray task per model (``ray.init(address)``, local when no address),
each with its own CPU/GPU request, and writes each report as its task finishes.

This module prints nothing: :func:`run_sweep` returns one row per model and reports
progress through a callback; the ``armetrics analyze --out-dir`` command prints both.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import interrupt
from .errors import ArmetricsError, ConfigError, ReportError, first_line
from .safeio import sha256_file

FAILURES = (ArmetricsError, RuntimeError, ValueError, TypeError, OSError)

Row = tuple[str, str, str]
"""One model's outcome: ``(model, status, detail)``; status is ``ok``, ``skipped`` or ``failed``."""

OnEvent = Callable[[str, str, int, int], None]
"""Progress callback ``on_event(event, model, done, total)``: event ``"start"`` before a model
is analyzed here (local executor), ``"ok"`` once its report is written; ``done`` counts the
models finished so far (ok or failed, skipped ones not counted) of the ``total`` to compute."""


def report_name(model: str) -> str:
    """File stem of a model's report: the file stem, or the zoo name."""
    base = model.split(":", 1)[1].replace("/", "_") if model.startswith("robustbench:") else Path(model).stem
    return re.sub(r"[^\w.+-]", "_", base) or "model"


def model_identity(model: str, load_kwargs: dict | None = None) -> str:
    """What names a model uniquely: the resolved path of a file, the full zoo name."""
    if model.startswith("robustbench:"):
        from ._robustbench import parse_name

        kw = load_kwargs or {}
        try:
            ds, tm, name = parse_name(model, kw.get("dataset", "cifar10"), kw.get("threat_model", "Linf"))
        except ArmetricsError:
            return model
        return f"robustbench:{ds}/{tm}/{name}"
    return str(Path(model).resolve())


def report_names(models: Sequence[str], load_kwargs: dict | None = None) -> dict[str, str]:
    """A report file stem for each distinct model: its :func:`report_name`, and where two
    models share one (``a/model.pt``, ``b/model.pt``), the stem plus 8 hex digits of the
    model's resolved path — the same for a path whatever else is in the sweep."""
    stems = {m: report_name(m) for m in dict.fromkeys(models)}
    identities = {m: model_identity(m, load_kwargs) for m in stems}
    owners: dict[str, set[str]] = {}
    for m, stem in stems.items():
        owners.setdefault(stem, set()).add(identities[m])
    return {m: stem if len(owners[stem]) == 1 else f"{stem}-{hashlib.sha256(identities[m].encode()).hexdigest()[:8]}"
            for m, stem in stems.items()}


def code_sha256(spec: str | None) -> str | None:
    """Hash of the code an ``--arch`` spec runs: the ``.py`` file, or the source file of
    ``package.module``; for ``robustbench:NAME`` the robustbench version."""
    if not spec:
        return None
    if spec.startswith("robustbench:"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"robustbench {version('robustbench')}"
        except PackageNotFoundError:
            return None
    target = spec.rsplit(":", 1)[0]
    if target.endswith(".py"):
        path = Path(target)
    else:
        import importlib.util

        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin or not Path(found.origin).is_file():
            return None
        path = Path(found.origin)
    try:
        return sha256_file(path, "--arch file") if path.is_file() else None
    except ArmetricsError:  # unreadable: the load that follows names the problem
        return None


def _weights_sha256(model: str, load_kwargs: dict) -> list[str | None]:
    from .loading import model_files

    paths = model_files(model, load_kwargs.get("model_dir", "models"), load_kwargs.get("dataset", "cifar10"),
                        load_kwargs.get("threat_model", "Linf"))
    return [sha256_file(p, "model file") if p.is_file() else None for p in paths]


def zoo_entry(model: str, load_kwargs: dict) -> tuple[str, str, str] | None:
    """(dataset, threat model, name) when ``model`` is a zoo entry (``robustbench:...``,
    or a file with ``--arch robustbench:...``); None otherwise, and for a malformed name
    (the load reports it)."""
    arch = load_kwargs.get("arch") or ""
    spec = model if model.startswith("robustbench:") else arch if arch.startswith("robustbench:") else None
    if spec is None:
        return None
    from . import _robustbench

    try:
        return _robustbench.parse_name(spec, load_kwargs.get("dataset", "cifar10"),
                                       load_kwargs.get("threat_model", "Linf"))
    except ArmetricsError:
        return None


def zoo_preprocessing(model: str, load_kwargs: dict) -> str | None:
    """The preprocessing RobustBench records for ``model`` when it is a zoo entry, read
    from the zoo's tables without loading anything; None otherwise."""
    entry = zoo_entry(model, load_kwargs)
    if entry is None:
        return None
    from . import _robustbench

    try:
        return _robustbench.preprocessing(entry[2], entry[0], entry[1])
    except ArmetricsError:
        return None


def model_data_spec(model: str, load_kwargs: dict, data_spec: dict | None) -> dict | None:
    """``model``'s ``load_data`` arguments in a sweep: ``data_spec``, with the preprocessing
    a zoo model records when ``data_spec`` names none (ImageNet entries differ: most
    ``Res256Crop224``, XCiT ``BicubicRes224Crop224``, ...), as a single analysis does."""
    if data_spec is None or data_spec.get("preprocess") is not None:
        return data_spec
    prep = zoo_preprocessing(model, load_kwargs)
    return data_spec if prep is None else {**data_spec, "preprocess": prep}


def fingerprint(model: str, load_kwargs: dict, data_spec: dict | None, probes, options, seed: int,
                data_id: str | None = None, samples: bool = True) -> str:
    """What determines a model's report; equal fingerprints mean the report can be reused:
    the model (resolved path and weight file hashes), the ``--arch`` code's hash, the
    loading options, probe configs and revisions (``Probe.revision``), the data selection and its content (``data_id``,
    :meth:`armetrics.data.Data.fingerprint`), the seed and the armetrics version."""
    from . import __version__
    from .engine import make_probes

    made = make_probes(probes, options)
    key: dict[str, Any] = {
        "armetrics": __version__,
        "model": model_identity(model, load_kwargs),
        "sha256": _weights_sha256(model, load_kwargs),
        "arch_code": code_sha256(load_kwargs.get("arch")),
        "load": {k: v for k, v in load_kwargs.items() if k != "device"},
        "probes": {p.name: p.config for p in made},
        "data": data_spec,
        "data_content": data_id,
        "seed": seed,
    }
    if not samples:  # (only then: fingerprints of default runs stay as they were)
        key["samples"] = False
    revisions = {p.name: p.revision for p in made if p.revision > 1}
    if revisions:  # a probe whose method changed its numbers: older reports are not reused
        key["revisions"] = revisions
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def existing_fingerprint(path: Path) -> str | None:
    from .report import Report

    try:
        run = Report.load(path).data.get("run")
    except ReportError:
        return None
    value = run.get("fingerprint") if isinstance(run, dict) else None
    return value if isinstance(value, str) else None


def analyze_one(model: str, load_kwargs: dict, data: Any, probes, options, seed: int, device: str, progress,
                out_path: str | Path | None = None, samples: bool = True):
    """Load and analyze one model; the :class:`~armetrics.report.Report` (None on a
    non-zero rank). ``data`` is a Data or a spec dict for :func:`armetrics.data.load_data`
    (what a remote task receives)."""
    from .data import load_data
    from .engine import analyze
    from .loading import load_model

    if isinstance(data, dict):
        data = load_data(**data)
    net = load_model(model, **load_kwargs)
    return analyze(net, data, probes, options=options, seed=seed, device=device, progress=progress, out_path=out_path,
                   samples=samples)


def run_sweep(models: Sequence[str], out_dir: Path, load_kwargs: dict, data, probes, options, seed: int,
              device: str, progress, data_spec: dict | None = None, executor: str = "local",
              ray_address: str | None = None, task_cpus: float = 1, task_gpus: float = 0,
              inputs: Sequence[str | Path] = (), on_event: OnEvent | None = None, samples: bool = True) -> list[Row]:
    """Analyze each model into ``out_dir/<name>.json``; one :data:`Row` per distinct model,
    in the order of ``models``. ``inputs``: files the sweep reads (``--arch`` file, data file)
    besides the models; no report or side file may resolve to one of them. ``progress``: the
    tqdm bar of each analysis; ``on_event`` (see :data:`OnEvent`) is called on rank 0 only.
    ``samples``: write per-sample side files (a report is up to date only with its own)."""
    from . import distributed
    from .report import Report

    d = distributed.current()
    main = d is None or d.is_main
    notify = on_event if on_event is not None and main else (lambda *_: None)
    _prepare_out_dir(out_dir, main)

    names = report_names(models, load_kwargs)
    protected = [*inputs, *(m for m in names if not m.startswith("robustbench:"))]
    specs = {m: model_data_spec(m, load_kwargs, data_spec) for m in names}
    data_of = _data_cache(data, data_spec)
    rows, todo = _plan(names, out_dir, protected, lambda model: fingerprint(
        model, load_kwargs, specs[model], probes, options, seed, _content_id(data_of(specs[model])), samples),
        samples)

    def done() -> int:  # models finished so far (ok or failed), for the progress events
        return sum(1 for status, _ in rows.values() if status != "skipped")

    def finished(model: str, path: Path, fp: str, result, seconds: float) -> None:
        if isinstance(result, BaseException):
            rows[model] = ("failed", first_line(result))
            return
        if result is not None:
            report = result if isinstance(result, Report) else Report(*result)  # (dict, side files) from Ray
            report.data["run"]["fingerprint"] = fp
            interrupt.check()
            try:
                report.save(path, inputs=protected)
            except ArmetricsError as exc:
                rows[model] = ("failed", first_line(exc))
                return
            interrupt.wrote(path)
        rows[model] = ("ok", _ok_detail(path, seconds, report if result is not None else None))
        notify("ok", model, done(), len(todo))

    if executor == "ray":
        _run_ray(todo, finished, load_kwargs, specs, probes, options, seed, device, ray_address, task_cpus, task_gpus,
                 samples)
    else:
        for model, path, fp in todo:
            notify("start", model, done(), len(todo))
            t = time.perf_counter()
            try:
                result: Any = analyze_one(model, load_kwargs, data_of(specs[model]), probes, options, seed, device,
                                          progress, out_path=path, samples=samples)
            except FAILURES as exc:
                result = exc
            finished(model, path, fp, result, time.perf_counter() - t)
            distributed.barrier(d)
    return [(m, *rows[m]) for m in dict.fromkeys(models) if m in rows]


def _data_cache(data, data_spec: dict | None) -> Callable[[dict | None], Any]:
    """``spec -> Data``: ``data`` (already loaded) for ``data_spec``, any other spec (a zoo
    model's own preprocessing) loaded once and kept for the models that share it."""
    from .data import load_data

    cache: dict[str, Any] = {}

    def data_of(spec: dict | None):
        if spec is None:
            return None
        if spec == data_spec and data is not None:
            return data
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in cache:
            cache[key] = load_data(**spec)
        return cache[key]

    return data_of


def _content_id(data) -> str | None:
    return data.fingerprint() if data is not None and hasattr(data, "fingerprint") else None


def _plan(names: dict[str, str], out_dir: Path, protected: list, fingerprint_of: Callable[[str], str],
          samples: bool = True) -> tuple[dict[str, tuple[str, str]], list[tuple[str, Path, str]]]:
    """Rows already known (``failed``: a refused path or an unreadable model; ``skipped``: an
    up-to-date report, with its per-sample side file when ``samples``) and what is left to
    analyze: ``(model, report path, fingerprint)``."""
    from .report import check_output_path

    rows: dict[str, tuple[str, str]] = {}
    todo: list[tuple[str, Path, str]] = []
    for model, name in names.items():
        path = out_dir / f"{name}.json"
        try:
            check_output_path(path, protected)
            fp = fingerprint_of(model)
        except FAILURES as exc:
            rows[model] = ("failed", first_line(exc))
            continue
        if path.exists() and existing_fingerprint(path) == fp and (not samples or _has_samples(path)):
            rows[model] = ("skipped", f"{path} is up to date")
        else:
            todo.append((model, path, fp))
    return rows, todo


def _ok_detail(path: Path, seconds: float, report) -> str:
    """An ok row's detail: the report's path and time, and the architecture found from the
    weights when there was one (the line ``analyze`` prints for a single model)."""
    notes = (report.model.get("notes") or []) if report is not None else []
    return f"{path} ({seconds:.1f}s)" + "".join(f"; {n}" for n in notes if str(n).startswith("architecture: "))


def _has_samples(path: Path) -> bool:
    """Whether the report at ``path`` has its per-sample side file, intact (a report
    without data, e.g. ``spectrum`` alone, has none to have)."""
    from .report import Report
    from .samples import load

    try:
        report = Report.load(path)
        if report.data.get("data") is None:
            return True
        load(report)
    except ArmetricsError:
        return False
    return True


def _prepare_out_dir(out_dir: Path, main: bool) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArmetricsError(f"cannot create --out-dir {out_dir} ({exc.strerror}): choose a writable directory") from None
    for stale in out_dir.glob(".*.json.*.tmp"):  # left by a run killed mid-write
        if main:
            stale.unlink(missing_ok=True)


def _run_ray(todo, finished: Callable, load_kwargs, specs: dict, probes, options, seed, device, address, cpus, gpus,
             samples: bool = True) -> None:
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
    specs = {m: None if spec is None else {**spec, "source": absolute(spec["source"])} for m, spec in specs.items()}
    todo = [(absolute(model), path, fp, model) for model, path, fp in todo]
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ArmetricsError(f"cannot start or reach Ray at {address or 'a local instance'} ({first_line(exc)}): check --ray-address") from None

    def task(model, path, data_spec):
        import armetrics.sweep as sw

        t = time.perf_counter()
        try:
            report = sw.analyze_one(model, load_kwargs, data_spec, probes, options, seed, device, False, out_path=path,
                                    samples=samples)
            return (None if report is None else (report.to_dict(), report.files)), time.perf_counter() - t
        except sw.FAILURES as exc:
            return ArmetricsError(f"{type(exc).__name__}: {first_line(exc)}") if not isinstance(exc, ArmetricsError) else exc, time.perf_counter() - t

    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(task)
    pending = {remote.remote(target, str(path), specs[model]): (model, path, fp) for target, path, fp, model in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        model, path, fp = pending.pop(done[0])
        try:
            result, seconds = ray.get(done[0])
        except Exception as exc:  # the task itself died (worker crash, OOM)
            result, seconds = exc, 0.0
        finished(model, path, fp, result, seconds)
