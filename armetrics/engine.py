"""``analyze()``: run the selected probes on a model — weight-only probes first, then
ONE streamed pass over the data shared by every data probe.

Per batch the model runs forward exactly once: under ``torch.no_grad`` unless a probe
updating the batch sets ``needs_input_grad``, then with the input requiring grad and
the graph handed to the probes as ``batch.graph`` (dropped once they are done with it).
Forward hooks capture (clone) only the layers the probes of the batch asked for, and
the captured features are dropped after the batch. Extra passes (``smoothness``'s
perturbed inputs, attacks) are the probes' own, made inside their ``update``.

With ``on_estimate`` the data pass is preceded by its cost estimate
(:mod:`armetrics.estimation`); during the pass an overall progress bar and one per data
probe run on stderr (:mod:`armetrics.progress`), a probe's moved by ``batch.advance``
inside its ``update`` and by the rest of its samples of the batch after it.

The per-sample values the data probes keep (``ProbeResult.samples``) become the
report's ``.samples.npz`` side file (:mod:`armetrics.samples`), with the identity of the
images (data content hash, selection, seed) in the report.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import __version__, checks, distributed, interrupt, samples as side_samples
from .data import Data, load_data
from .errors import ConfigError, DataError, ProbeError, first_line
from .functional import first_output, twice_differentiable
from .hooks import Taps, check_captured, tap_outputs
from .linalg import all_finite
from .loading import eval_mode
from .options import resolve_options
from .probe import Batch, Context, Graph, Probe, ProbeResult
from .registry import get_probe
from .progress import Bars
from .report import SCHEMA, Report, to_jsonable

if TYPE_CHECKING:
    from .estimation import Estimate


def make_probes(probes: Iterable[str | Probe] | str, options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Probe]:
    """Instantiate probes by name with their options (``{"margin": {"bins": 30}}``)."""
    if isinstance(probes, str):
        probes = [p.strip() for p in probes.split(",") if p.strip()]
    elif isinstance(probes, Probe):
        probes = [probes]
    elif not isinstance(probes, Iterable) or isinstance(probes, (bytes, Mapping)):
        raise ConfigError(f"probes must be probe names (a list or a comma-separated string such as 'accuracy,margin'), "
                          f"got {probes!r}: see `armetrics probes`")
    probes = list(probes)
    bad = next((p for p in probes if not isinstance(p, (str, Probe))), None)
    if bad is not None:
        raise ConfigError(f"probes must be probe names or Probe instances, got {bad!r}: see `armetrics probes`")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"options must map probe names to their options, e.g. {{'margin': {{'bins': 30}}}}, got {options!r}")
    options = dict(options or {})
    for name, opts in options.items():
        if not isinstance(opts, Mapping):
            raise ConfigError(f"options[{name!r}] must map option names to values, e.g. {{'bins': 30}}, got {opts!r}")
    out: list[Probe] = []
    names = []
    for p in probes:
        if isinstance(p, Probe):
            out.append(p)
            names.append(p.name)
            continue
        cls = get_probe(p)
        kwargs = resolve_options(p, cls.options(), options.get(p, {}))
        out.append(cls(**kwargs))
        names.append(p)
    if not out:
        raise ConfigError("no probes selected: pass e.g. --probes accuracy (see `armetrics probes`)")
    for name in options:
        if name not in names:
            raise ConfigError(f"--set names probe {name!r}, which is not selected: add it to --probes ({', '.join(names)})")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"probe {', '.join(sorted(dup))} selected twice: name each probe once")
    return out


def weights_sha256(model: nn.Module) -> str:
    """Hash of the state_dict (names, shapes, dtypes, bytes): identifies in-memory weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_section(model: nn.Module) -> dict[str, Any]:
    info = getattr(model, "armetrics_info", None)
    base = info.to_dict() if info is not None else {
        "source": "<in-memory>", "name": type(model).__name__, "format": "module",
        "sha256": None, "arch": f"{type(model).__module__}.{type(model).__qualname__}", "notes": []}
    if not base.get("sha256"):
        base["sha256"] = weights_sha256(model)
    base["num_parameters"] = int(sum(p.numel() for p in model.parameters()))
    bad = [n for n, p in model.named_parameters() if not all_finite(p.detach())]
    bad += [n for n, b in model.named_buffers() if not all_finite(b)]
    if bad:
        base["nonfinite_parameters"] = bad
    return base


def _result_entry(probe: Probe, result: ProbeResult, seconds: float) -> dict[str, Any]:
    entry = {"config": probe.config, "summary": result.summary, "layers": result.layers,
             "distributions": result.distributions, "seconds": seconds}
    if probe.revision > 1:
        entry["revision"] = probe.revision
    if result.details:
        entry["details"] = result.details
    return entry


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        out = model(x)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        raise DataError(
            f"the model rejected input of shape {tuple(x.shape)} ({first_line(exc)}): "
            f"give data of the size the model expects (--data) or check --arch"
        ) from None
    out = first_output(out)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ProbeError(f"the model returned {shape}, not logits of shape (batch, classes): wrap it to return logits")
    return out


def _check_classes(logits: torch.Tensor, y: torch.Tensor, data: Data) -> None:
    """The model's number of outputs must match the data: the declared classes when the
    source names them (ImageFolder, CIFAR, .npz with ``classes``), else the labels."""
    k = logits.shape[1]
    if data.info.classes and k != data.num_classes:
        raise DataError(
            f"the model outputs {k} classes but the data has {data.num_classes}: use data of the "
            f"model's dataset (or a model trained for these labels)"
        )
    if y.numel() and int(y.max()) >= k:
        raise DataError(f"label {int(y.max())} is out of range for a model with {k} classes: labels must be 0..{k - 1}; check --data")


def analyze(
    model: nn.Module,
    data: "Data | str | Path | None" = None,
    probes: "Sequence[str | Probe] | str" = ("accuracy",),
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    device: "str | torch.device | None" = None,
    progress: bool | None = None,
    out_path: str | Path | None = None,
    samples: bool = True,
    on_estimate: "Callable[[Estimate], None] | None" = None,
) -> Report | None:
    """Run ``probes`` on ``model`` and return a :class:`~armetrics.report.Report`.

    ``data``: a :class:`~armetrics.data.Data`, a source name/path (see
    :func:`~armetrics.data.load_data`), or None for the packaged ``cifar10-sample``
    (only loaded when a data probe is selected). ``options``: per-probe keyword
    options. ``progress``: progress bars on stderr, an overall one and one per data probe
    with its own ETA (:mod:`armetrics.progress`; default: when stderr is a terminal).
    ``out_path``: where the report will be saved; probes may name side files after it
    (``ProbeResult.files``), which :meth:`Report.save` writes together with the report.
    ``samples``: keep the data probes' per-sample values (correctness, max-prob, entropy,
    margins, per-layer smoothness ratios) as the report's ``.samples.npz`` side file and
    record the images' identity in its ``data`` section (what :mod:`armetrics.claims`
    pairs models by); False: neither. ``on_estimate``: called, after the weight-only
    probes ran and before the data pass, with the run's cost estimate
    (:class:`~armetrics.estimation.Estimate`: the data probes timed on a slice of the
    first batch, the weight probes' measured seconds); the estimate changes no result.
    None (the default): no estimate is made.

    Inside a ``torch.distributed`` process group (e.g. under ``torchrun``) each rank
    analyzes its shard of the batches; rank 0 returns the merged report, the other
    ranks return None (see :mod:`armetrics.distributed`).

    Side effects on the caller: none on torch's global RNG (the run seeds a fork of it
    with ``seed``) nor on the training/eval mode of the model's submodules (eval during
    the run, restored afterwards). The model is moved to ``device`` in place
    (``model.to``) and stays there; with ``device=None`` it runs where its first
    parameter lives and is not moved.
    """
    started = time.perf_counter()
    check_model_and_data(model, data)
    seed = checks.seed(seed, allow_none=False)
    if progress is not None and not isinstance(progress, bool):
        raise ConfigError(f"progress must be True, False or None, got {progress!r}")
    if out_path is not None and not isinstance(out_path, (str, Path)):
        raise ConfigError(f"out_path must be a path, got {type(out_path).__name__}")
    if not isinstance(samples, bool):
        raise ConfigError(f"samples must be True or False, got {samples!r}")
    if on_estimate is not None and not callable(on_estimate):
        raise ConfigError(f"on_estimate must be a function taking the Estimate, got {type(on_estimate).__name__}")
    probe_objs = make_probes(probes, options)
    device = run_device(model, device)
    with _seeded_rng(seed, device), _modes_restored(model):
        return _run(model.to(device), data, probe_objs, seed=seed, device=device, progress=progress,
                    out_path=out_path, started=started, samples=samples, on_estimate=on_estimate)


def check_model_and_data(model: Any, data: Any) -> None:
    """ConfigError / DataError unless ``model`` is a module and ``data`` a Data, a name or a path (or None)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (e.g. from armetrics.load_model), got {type(model).__name__}")
    if data is not None and not isinstance(data, (Data, str, Path)):
        raise DataError(f"data must be an armetrics Data (armetrics.load_data), a source name or a path, "
                        f"got {type(data).__name__}: wrap tensors with numpy.savez('d.npz', x=..., y=...) or load_data")


def run_device(model: nn.Module, device: "str | torch.device | None") -> torch.device:
    """The checked device of a run: ``device``, or where the model's first parameter lives (cpu without one)."""
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    return checks.device(device, "device (--device)")


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` for the run, and the caller's state back
    afterwards: the CPU generator and that of ``device`` are forked and seeded (as
    ``torch.manual_seed`` seeds them); no other device's generator is touched."""
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerator else [],
                               device_type=device.type if accelerator else None):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif accelerator:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


@contextlib.contextmanager
def _modes_restored(model: nn.Module) -> Iterator[None]:
    """The run sees the model in eval mode; afterwards every submodule is back in the
    training/eval mode the caller left it in (set directly: an overridden ``train()``
    is not called)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            if m.training != training:
                m.training = training


def _run(model: nn.Module, data: "Data | str | Path | None", probe_objs: list[Probe], *, seed: int,
         device: torch.device, progress: bool | None, out_path: str | Path | None, started: float,
         samples: bool = True, on_estimate: "Callable[[Estimate], None] | None" = None) -> Report | None:
    """The run itself, once the arguments are checked: weight probes, the data pass, the report."""
    model = eval_mode(model)
    weight_probes = [p for p in probe_objs if not p.needs_data]
    data_probes = [p for p in probe_objs if p.needs_data]
    data = _resolve_data(data, bool(data_probes), seed)
    ctx = make_context(model, data, device, seed, out_path, samples)
    d = distributed.current()
    files: dict[str, bytes] = {}  # the report's side files by suffix (ProbeResult.files), written by Report.save
    entries = _run_weight_probes(weight_probes, ctx, d, files)
    if on_estimate is not None and data_probes and (d is None or d.is_main):
        from .estimation import measure

        weights = {p.name: entries[p.name]["seconds"] for p in weight_probes}
        on_estimate(measure(model, data, data_probes, ctx, weights, shard=_shard_range(data, d)))
    run: dict[str, Any] = {"seed": seed}
    per_sample: dict[str, Any] = {}
    if data_probes:
        stats = _run_data_probes(model, data, data_probes, ctx, progress, d, entries, files, per_sample)
        if stats is None:
            return None
        run.update(stats)
    elif d is not None and not d.is_main:
        return None
    run["seconds"] = time.perf_counter() - started
    report = _report_dict(model, data if data_probes else None, device, run,
                          {p.name: entries[p.name] for p in probe_objs})
    if samples and data_probes:
        _attach_samples(report, files, data, per_sample)
    return Report(to_jsonable(report), files=files)


def make_context(model: nn.Module, data: "Data | None", device: torch.device, seed: int,
                 out_path: str | Path | None = None, samples: bool = True) -> Context:
    """What the probes of a run know before the data pass (:class:`~armetrics.probe.Context`)."""
    return Context(model=model, device=device, seed=seed,
                   num_classes=data.num_classes if isinstance(data, Data) else None,
                   input_shape=data.sample_shape() if isinstance(data, Data) else _declared_input(model),
                   out_path=str(out_path) if out_path else None, samples=samples)


def _declared_input(model: nn.Module) -> tuple[int, ...] | None:
    """The input shape the model's loader recorded (``ModelInfo.input_shape``), if any."""
    shape = getattr(getattr(model, "armetrics_info", None), "input_shape", None)
    return tuple(shape) if shape else None


def _attach_samples(report: dict[str, Any], files: dict[str, bytes], data: Data, per_sample: dict[str, Any]) -> None:
    """The per-sample side file (``files``) and its description (``report["samples"]``),
    and the identity of the images in the data section: ``content`` (the source's
    content hash) and ``fingerprint`` (content, classes, selection and labels)."""
    raw, manifest = side_samples.encode(data.order, data.labels(), per_sample)
    files[side_samples.SUFFIX] = raw
    report["samples"] = manifest
    report["data"]["content"] = data.content_id()
    report["data"]["fingerprint"] = data.fingerprint()


def _resolve_data(data: "Data | str | Path | None", needed: bool, seed: int) -> "Data | None":
    """The data to stream: loaded (default ``cifar10-sample``) when a data probe runs, else
    a given :class:`Data` as is and anything else dropped untouched."""
    if needed:
        return load_data(data if data is not None else "cifar10-sample", seed=seed) if not isinstance(data, Data) else data
    return data if isinstance(data, Data) else None  # weight-only run: data is never touched


def _run_weight_probes(probes: list[Probe], ctx: Context, d: "distributed.Dist | None",
                       files: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Set up and compute the weight-only probes once (on the main rank, then broadcast);
    their results go to ``ctx.results`` for later probes; returns the report entries."""
    entries: dict[str, dict[str, Any]] = {}
    if d is None or d.is_main:
        for p in probes:
            t = time.perf_counter()
            p.setup(ctx)
            result = p.compute()
            ctx.results[p.name] = result
            entries[p.name] = _result_entry(p, result, time.perf_counter() - t)
            files.update(result.files)
    if d is not None and probes:
        ctx.results, entries = distributed.broadcast((ctx.results, entries), d)
    return entries


def _run_data_probes(model: nn.Module, data: Data, probes: list[Probe], ctx: Context, progress: bool | None,
                     d: "distributed.Dist | None", entries: dict[str, dict[str, Any]],
                     files: dict[str, bytes], per_sample: dict[str, Any]) -> dict[str, Any] | None:
    """The shared data pass, the merge of other ranks' states and each probe's compute
    (entries, side files and per-sample values added in place). Returns the run
    statistics, or None on a rank other than the main one (which writes no report)."""
    stats, seconds = _data_pass(model, data, probes, ctx, progress if d is None or d.is_main else False, d)
    if d is not None:
        shards = distributed.gather(([p.state_dict() for p in probes], stats), d)
        if not d.is_main:
            return None
        _merge_shards(probes, [states for states, _ in shards[1:]])
        stats = {k: sum(s[k] for _, s in shards) for k in stats}  # totals over ranks
        stats["world_size"] = d.world
    for p, spent in zip(probes, seconds):
        t = time.perf_counter()
        result = p.compute()
        entries[p.name] = _result_entry(p, result, spent + time.perf_counter() - t)
        files.update(result.files)
        if result.samples is not None:
            per_sample[p.name] = result.samples
    return stats


def _report_dict(model: nn.Module, data: "Data | None", device: torch.device, run: dict[str, Any],
                 probes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's sections (before :func:`to_jsonable`); ``data`` None for a weight-only run."""
    return {
        "schema": SCHEMA,
        "armetrics_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_section(model),
        "data": data.info.to_dict() if isinstance(data, Data) else None,
        "environment": {"torch": torch.__version__, "device": str(device), "python": platform.python_version(),
                        "platform": platform.platform(), "threads": torch.get_num_threads()},
        "run": run,
        "probes": probes,
    }


def _merge_shards(probes: list[Probe], shards: list[list[dict]]) -> None:
    """Fold other ranks' states (in rank order) into this rank's probes."""
    for states in shards:
        for p, state in zip(probes, states):
            p.merge(state)


def _shard_range(data: Data, d: "distributed.Dist | None") -> tuple[int, int]:
    """The positions ``[start, stop)`` of the selection this process streams."""
    lo, hi = distributed.shard(len(data), d)
    return lo * data.batch_size, min(hi * data.batch_size, data.n)


def batch_layout(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    """``(offset, size)`` of each batch over positions ``start:stop`` (as ``Data.batches``)."""
    return [(lo, min(batch_size, stop - lo)) for lo in range(start, stop, batch_size)]


def _data_pass(model, data: Data, probes: list[Probe], ctx: Context, progress: bool | None,
               d: "distributed.Dist | None" = None) -> tuple[dict, list[float]]:
    """Stream this process's batches through the model once, feeding every data probe
    that wants the batch (a batch no probe wants is not run). Returns the run
    statistics and each probe's own seconds (setup and updates)."""
    seconds = [0.0] * len(probes)
    for i, p in enumerate(probes):
        t = time.perf_counter()
        p.setup(ctx)
        seconds[i] += time.perf_counter() - t
    layers = [list(p.feature_layers()) for p in probes]
    start, stop = _shard_range(data, d)
    totals = [sum(p.samples_in_batch(o, k) for o, k in batch_layout(start, stop, data.batch_size)) for p in probes]
    bars = Bars([p.name for p in probes], totals, max(stop - start, 0),
                enabled=sys.stderr.isatty() if progress is None else progress)
    forward_seconds, offset, batches, checked = 0.0, start, 0, False
    with tap_outputs(model, sorted({n for names in layers for n in names})) as taps, torch.no_grad():
        try:
            for x, y in data.batches(start, stop):
                interrupt.check()
                active = [i for i, p in enumerate(probes) if p.wants_batch(offset, len(y))]
                if active:
                    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                    t = time.perf_counter()
                    batch = _shared_forward(model, x, y, taps, [probes[i] for i in active],
                                            sorted({n for i in active for n in layers[i]}), offset, ctx.seed)
                    forward_seconds += time.perf_counter() - t
                    if not checked or (y.numel() and int(y.max()) >= batch.logits.shape[1]):
                        _check_classes(batch.logits, y, data)
                        checked = True
                    _update_probes(probes, active, batch, seconds, bars)
                    del batch
                offset += len(y)
                batches += 1
                bars.images(len(y))
        finally:
            bars.close()
    return {"batches": batches, "samples": offset - start, "forward_seconds": forward_seconds}, seconds


def _update_probes(probes: list[Probe], active: list[int], batch: Batch, seconds: list[float], bars: Bars) -> None:
    """Each active probe's ``update`` of the batch (timed into ``seconds``), its graph
    released after it; ``batch.advance`` moves the probe's bar, which is then credited
    with the rest of the probe's samples of the batch."""
    for i in active:
        tracker = bars.tracker(i, probes[i].samples_in_batch(batch.offset, len(batch.y)))
        batch.on_advance = tracker
        t = time.perf_counter()
        try:
            probes[i].update(batch)
        finally:
            batch.on_advance = None
        batch.release_graph(probes[i])
        seconds[i] += time.perf_counter() - t
        tracker.finish()


def _shared_forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, taps: Taps, probes: list[Probe],
                    names: list[str], offset: int, seed: int) -> Batch:
    """The batch's one forward pass: its logits, the outputs of the layers ``names``
    and, when one of ``probes`` sets ``needs_input_grad``, the pass's graph
    (:class:`~armetrics.probe.Graph`; the input then requires grad)."""
    users = {p.name for p in probes if p.needs_input_grad}
    taps.clear()
    taps.active = set(names)
    try:
        with torch.enable_grad() if users else contextlib.nullcontext(), \
                twice_differentiable() if users else contextlib.nullcontext():
            x_in = x.detach().requires_grad_() if users else x
            logits = _forward(model, x_in)
    finally:
        taps.active = frozenset()  # probes' own passes do not touch the shared features
    check_captured(taps.outputs, names)
    features = {n: taps.outputs[n] for n in names}
    graph = None
    if users:
        graph = Graph(x=x_in, logits=logits, features=features, calls={n: taps.calls[n] for n in names},
                      aliases=frozenset(n for n in names if taps.is_same(n, logits)))
        features = {n: v.detach() for n, v in features.items()}
        logits = logits.detach()
    taps.clear()
    return Batch(x=x, y=y, logits=logits, features=features, model=model, offset=offset, seed=seed,
                 graph=graph, graph_users=users)
