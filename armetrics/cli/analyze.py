"""``armetrics analyze`` (one model, or a sweep with ``--out-dir``) and ``armetrics probes``.

The sweep itself is :func:`armetrics.sweep.run_sweep`, which returns rows and reports
progress through a callback; this module prints both.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from .. import interrupt
from ..errors import ArmetricsError, ConfigError, one_line
from . import debug_option

PROBE_ORDER = ("accuracy", "spectrum", "margin", "confidence", "smoothness", "robust_accuracy")
"""The order of the built-in probes in the default ``--probes`` (and so in reports and the
table); a built-in probe not listed here follows, by name."""


def default_probes() -> str:
    """``--probes``' default: every built-in probe (registered from a module of
    :mod:`armetrics.probes`; plugins are selected by name), in :data:`PROBE_ORDER`."""
    from ..registry import get_probe, list_probes

    builtin = [n for n in list_probes() if get_probe(n).__module__.startswith("armetrics.probes.")]
    rank = {name: i for i, name in enumerate(PROBE_ORDER)}
    return ",".join(sorted(builtin, key=lambda n: (rank.get(n, len(rank)), n)))


class _DefaultProbes:
    """Click calls it when ``--probes`` is not given, and prints it in ``--help``: the
    registry (so torch) is imported only then, not to start the command."""

    def __call__(self) -> str:
        return default_probes()

    __str__ = __call__


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated numbers, e.g. {name} 0.4914,0.4822,0.4465") from None


def _arch_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--arch-kwargs is not JSON ({exc.msg}): write e.g. --arch-kwargs '{{\"num_classes\": 10}}'") from None
    except (RecursionError, ValueError):
        raise ConfigError("--arch-kwargs is nested too deeply or too large: write a flat JSON object, "
                          "e.g. --arch-kwargs '{\"num_classes\": 10}'") from None
    if not isinstance(value, dict):
        raise ConfigError("--arch-kwargs must be a JSON object, e.g. '{\"depth\": 28}'")
    return value


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def format_summary(report) -> str:
    m, d = report.model, report.data.get("data")
    head = f"model {m.get('name')} ({m.get('format')}, {m.get('num_parameters', 0) / 1e6:.2f}M parameters)"
    if d:
        head += f"   data {d['source']} n={d['n']} seed={d['seed']}"
    lines = [head]
    if m.get("nonfinite_parameters"):
        lines.append(f"warning: non-finite weights in {', '.join(m['nonfinite_parameters'][:5])}")
    for probe in report.probes:
        summary = report.summary(probe)
        keys = _headline(probe)
        if keys:
            summary = {k: summary[k] for k in keys if k in summary}
        secs = report.data["probes"][probe].get("seconds")
        for i, (k, v) in enumerate(summary.items()):
            left = probe if i == 0 else ""
            tail = f"   ({secs:.2f}s)" if i == 0 and secs is not None else ""
            lines.append(f"  {left:<18} {k:<28} {_fmt(v)}{tail}")
    return "\n".join(lines)


def _headline(probe: str) -> tuple[str, ...] | None:
    from ..registry import get_probe

    try:
        return get_probe(probe).headline
    except ConfigError:  # a report from a probe that is not installed here
        return None


def format_sweep(rows) -> str:
    """The final table of a sweep: one line per :data:`armetrics.sweep.Row`."""
    width = max(len(m) for m, _, _ in rows)
    lines = [f"{'model':<{width}}  status   detail"]
    lines += [f"{m:<{width}}  {status:<7}  {one_line(detail)}" for m, status, detail in rows]
    return "\n".join(lines)


def _sweep_event(event: str, model: str, done: int, total: int) -> None:
    """The sweep's progress lines on stderr (see :data:`armetrics.sweep.OnEvent`)."""
    click.echo(f"analyzing {model} ..." if event == "start" else f"[{done}/{total}] {model}: ok", err=True)


@click.command("analyze")
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@click.option("--arch", metavar="SPEC", help="Architecture for weight-only files: pkg.mod:fn, file.py:fn or robustbench:NAME.")
@click.option("--arch-kwargs", metavar="JSON", help="Keyword arguments for the architecture callable, as a JSON object.")
@click.option("--probes", type=str, default=_DefaultProbes(), show_default=True,
              help="Comma-separated probe names (see `armetrics probes`).")
@click.option("--data", "data_src", default="cifar10-sample", show_default=True, metavar="SRC",
              help="cifar10-sample, an ImageFolder dir (ImageNet WordNet-id folders get the 1000 ImageNet labels), "
                   "a cifar-10-batches-py or cifar-100-python dir, a CIFAR-10-C / CIFAR-100-C / ImageNet-C dir "
                   "(with --corruption), or an .npz with x and y.")
@click.option("--preprocess", metavar="NAME", default=None,
              help="Resize/crop each image first: Res256Crop224, BicubicRes256Crop224, Res224, Crop288 or none "
                   "(default: the preprocessing a robustbench: model records, else none).")
@click.option("--corruption", metavar="NAME", default=None,
              help="With a CIFAR-10-C, CIFAR-100-C or ImageNet-C dir: the corruption (fog, snow, ...).")
@click.option("--severity", type=int, default=None, help="With --corruption: the severity, 1..5.")
@click.option("-n", "n", type=int, default=None, help="Number of images (default: all of SRC).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="Which images, their order, and probe randomness (an integer >= 0).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--set", "sets", multiple=True, metavar="PROBE.OPT=VALUE", help="A probe option; repeatable.")
@click.option("--mean", metavar="M1,M2,M3", help="Per-channel mean the model expects inputs normalized with.")
@click.option("--std", metavar="S1,S2,S3", help="Per-channel std the model expects inputs normalized with.")
@click.option("--model-dir", default="models", show_default=True, help="RobustBench model directory (DIR/<dataset>/<threat>/<NAME>.pt).")
@click.option("--dataset", default="cifar10", show_default=True, help="RobustBench dataset for robustbench:NAME.")
@click.option("--threat-model", default="Linf", show_default=True, help="RobustBench threat model for robustbench:NAME.")
@click.option("--trust-code", "--trust-pickle", "trust_code", is_flag=True,
              help="Run code the checkpoint carries: pickled Python objects, TorchScript, non-tensor ops of "
                   "torch.export programs. Only for files whose source you trust (--trust-pickle: the same).")
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="Write the report JSON here ('-' for stdout).")
@click.option("--out-dir", type=click.Path(file_okay=False), help="With several models: one report each, DIR/<name>.json.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="With --out-dir: analyze models here one by one, or one Ray task per model.")
@click.option("--ray-address", metavar="ADDR", help="Ray cluster address (default: start Ray locally).")
@click.option("--task-cpus", type=float, default=1, show_default=True, help="CPUs each Ray task requests.")
@click.option("--task-gpus", type=float, default=0, show_default=True, help="GPUs each Ray task requests.")
@click.option("--no-samples", is_flag=True,
              help="Do not write the per-sample side file (REPORT.samples.npz) that claims and audits pair models by.")
@click.option("--estimate", "estimate_only", is_flag=True,
              help="Print the estimated time of each probe and in total, then exit: nothing is run or written.")
@click.option("--quiet", is_flag=True, help="No progress bars, estimate or notes.")
@debug_option
def analyze_cmd(models, arch, arch_kwargs, probes, data_src, preprocess, corruption, severity, n, batch_size, seed,
                device, sets, mean, std, model_dir, dataset, threat_model, trust_code, out, out_dir, executor,
                ray_address, task_cpus, task_gpus, no_samples, estimate_only, quiet) -> None:
    """Analyze MODEL (a checkpoint file or robustbench:NAME) with the selected probes."""

    from .. import checks, distributed
    from ..engine import analyze as run_analysis, make_probes
    from ..options import parse_sets
    from ..report import check_output_path

    checks.device(device)  # before joining a process group or reading anything
    checks.seed(seed, "--seed", allow_none=False)
    checks.integer(batch_size, "--batch-size", minimum=1)
    if n is not None:
        checks.integer(n, "-n", minimum=1)
    d, device = distributed.init_from_env(device)  # under torchrun: one shard per rank

    options = parse_sets(sets)
    selected = make_probes(probes, options)  # validate names and options before loading anything
    if len(models) > 1 and not out_dir:
        raise click.UsageError("several MODELs need --out-dir DIR (one report per model)")
    if out and out_dir:
        raise click.UsageError("use --out for one model or --out-dir for several, not both")
    load_kwargs = dict(arch=arch, arch_kwargs=_arch_kwargs(arch_kwargs), trust_code=trust_code,
                       model_dir=model_dir, dataset=dataset, threat_model=threat_model,
                       mean=_floats(mean, "--mean"), std=_floats(std, "--std"), device=device)
    from ..data import load_data

    needs_data = any(p.needs_data for p in selected)  # what engine.analyze decides from the same probes
    spec = _data_spec(models, arch, load_kwargs, bool(out_dir), needs_data, data_src, preprocess, corruption,
                      severity, n, batch_size, seed)
    inputs = _input_files(models, arch, data_src if needs_data else None, load_kwargs)
    if out and out != "-":
        check_output_path(out, inputs)  # before anything is loaded: a wrong --out costs nothing
    progress = False if quiet else None
    if executor != "local" and not out_dir:
        raise click.UsageError("--executor ray runs sweeps: give --out-dir DIR")
    if estimate_only:
        return _print_estimates(models, arch, load_kwargs, spec, probes, options, seed, device, d)
    if out_dir:
        from ..sweep import model_data_spec, run_sweep

        # zoo models with a preprocessing of their own get their data in the sweep, per preprocessing
        shared = spec is not None and all(model_data_spec(m, load_kwargs, spec) == spec for m in models)
        data = load_data(**spec) if shared else None
        rows = run_sweep(models, Path(out_dir), load_kwargs, data, probes, options, seed, device, progress,
                         data_spec=spec, inputs=inputs, executor=executor, ray_address=ray_address,
                         task_cpus=task_cpus, task_gpus=task_gpus, on_event=None if quiet else _sweep_event,
                         samples=not no_samples)
        if d is None or d.is_main:
            click.echo(format_sweep(rows))
        sys.exit(0 if all(status != "failed" for _, status, _ in rows) else 1)
    model, data = _load_model_and_data(models[0], arch, load_kwargs, spec)
    if not quiet:
        _architecture_notes(model)
    report = run_analysis(model, data, probes, options=options, seed=seed, device=device, progress=progress,
                          out_path=None if out in (None, "-") else out, samples=not no_samples,
                          on_estimate=None if quiet else _echo_estimate)
    if report is not None:  # None: a non-zero rank of a distributed run (rank 0 reports)
        _print_report(report, out, quiet, inputs)


def _architecture_notes(model) -> None:
    """An architecture found from the weights: say which, and why (stderr)."""
    for note in getattr(getattr(model, "armetrics_info", None), "notes", []):
        if note.startswith("architecture: "):
            click.echo(note, err=True)


def _echo_estimate(estimate) -> None:
    """The cost estimate, on stderr before the data pass."""
    click.echo(str(estimate), err=True)


def _print_estimates(models, arch: str | None, load_kwargs: dict, spec: dict | None, probes, options, seed: int,
                     device: str, d) -> None:
    """``--estimate``: each model's estimate (:func:`armetrics.estimation.estimate`) on
    stdout, prefixed by the model with several; nothing is written (on rank 0 only)."""
    from ..estimation import estimate

    if d is not None and not d.is_main:
        return
    for source in models:
        model, data = _load_model_and_data(source, arch, load_kwargs, spec)
        result = estimate(model, data, probes, options=options, seed=seed, device=device)
        click.echo(f"{source}: {result}" if len(models) > 1 else str(result))


def _data_spec(models, arch: str | None, load_kwargs: dict, sweep: bool, needs_data: bool, data_src: str,
               preprocess: str | None, corruption: str | None, severity: int | None, n, batch_size: int,
               seed: int) -> dict | None:
    """The keyword arguments of ``load_data`` (also a sweep's data fingerprint; the data
    options only when given, so fingerprints of plain runs stay as they were), or None
    when no probe needs data. Checked before anything is loaded: the data options, and that
    a zoo model of a dataset with no packaged sample is not run on ``cifar10-sample``."""
    from .. import corruptions, preprocess as preprocessing
    from ..data import no_sample_error

    preprocessing.resolve(preprocess)
    corruptions.check_options(corruption, severity)
    if not needs_data:
        return None
    datasets = [ds for ds in (_zoo_dataset(m, arch, load_kwargs) for m in models) if ds is not None]
    source = click.get_current_context().get_parameter_source("data_src")
    if source == click.core.ParameterSource.DEFAULT and any(ds != "cifar10" for ds in datasets):
        raise no_sample_error(next(ds for ds in datasets if ds != "cifar10")) or ConfigError(
            "this zoo model's dataset has no packaged sample: pass --data")
    options = {"preprocess": preprocess, "corruption": corruption, "severity": severity}
    return {"source": data_src, "n": n, "batch_size": batch_size, "seed": seed,
            **{k: v for k, v in options.items() if v is not None}}


def _zoo_dataset(model: str, arch: str | None, load_kwargs: dict) -> str | None:
    """The RobustBench dataset of ``robustbench:...`` (or of a weight file with ``--arch
    robustbench:...``); None for other models or a malformed name (the load reports it)."""
    from ..sweep import zoo_entry

    entry = zoo_entry(model, {**load_kwargs, "arch": arch})
    return entry[0] if entry is not None else None


def _load_model_and_data(source: str, arch: str | None, load_kwargs: dict, spec: dict | None):
    """(model, data): without ``--preprocess``, the data gets the preprocessing the model
    records (``model.armetrics_info.preprocessing``, set for zoo models): a zoo model is
    loaded first; other models after the data (a bad data source costs no model load), the
    data loaded again in the rare case such a model records one."""
    from ..data import load_data
    from ..loading import load_model

    if spec is None:
        return load_model(source, **load_kwargs), None
    if spec.get("preprocess") is None and _zoo_dataset(source, arch, load_kwargs) is not None:
        model = load_model(source, **load_kwargs)
        return model, load_data(**{**spec, "preprocess": _declared_preprocessing(model, source)})
    data = load_data(**spec)
    model = load_model(source, **load_kwargs)
    declared = _declared_preprocessing(model, source) if spec.get("preprocess") is None else None
    if declared is not None and declared != data.info.preprocessing:
        data = load_data(**{**spec, "preprocess": declared})
    return model, data


def _declared_preprocessing(model, source: str) -> str | None:
    """The preprocessing name the loaded model records (None: none), checked."""
    from ..preprocess import resolve

    name = getattr(getattr(model, "armetrics_info", None), "preprocessing", None)
    try:
        prep = resolve(name, f"the preprocessing of {source}")
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or pass --preprocess NAME)") from None
    return prep.name if prep is not None else None


def _print_report(report, out: str | None, quiet: bool, inputs: list[Path]) -> None:
    """The summary table; with ``--out`` the report written (``-``: JSON on stdout, table on stderr)."""
    table = format_summary(report)
    if out == "-":
        click.echo(report.to_json(), nl=False)
        click.echo(table, err=True)
        return
    if out is None and not quiet:
        table += "\n(the table shows headline keys; --out FILE.json saves the full report)"
    if out:
        interrupt.check()
        report.save(out, inputs=inputs)  # refuses side files or the report over an input
        interrupt.wrote(out)
    click.echo(table)
    if out and not quiet:
        click.echo(f"report written to {out}", err=True)


def _input_files(models, arch: str | None, data_src: str | None, load_kwargs: dict) -> list[Path]:
    """The files a run reads — model files (also a zoo entry's weights in --model-dir),
    the --arch .py file, the data file or directory: no output may replace one of them."""
    from ..loading import model_files

    files: list[Path] = []
    for m in models:
        try:
            files += model_files(m, load_kwargs["model_dir"], load_kwargs["dataset"], load_kwargs["threat_model"])
        except ArmetricsError:
            pass  # the load reports a bad zoo name
    if arch and ":" in arch and arch.rsplit(":", 1)[0].endswith(".py"):
        files.append(Path(arch.rsplit(":", 1)[0]))
    if data_src and data_src != "cifar10-sample":
        files.append(Path(data_src))
    return files


@click.command("probes")
@click.argument("pattern", required=False)
@debug_option
def probes_cmd(pattern) -> None:
    """List the probes: name, meaning, options (PATTERN filters names, e.g. 'm*')."""
    from ..registry import get_probe, list_probes

    for name in list_probes(pattern):
        cls = get_probe(name)
        kind = "data" if cls.needs_data else "weights only"
        click.echo(f"{name}  [{kind}]  {cls.description}")
        for opt in cls.options().values():
            default = "none" if opt.default is None else opt.default
            bounds = f" {opt.range}" if opt.range else ""
            click.echo(f"    --set {name}.{opt.name}=<{opt.describe_type()}{bounds}>  default {default}"
                       + (f"  {opt.help}" if opt.help else ""))
