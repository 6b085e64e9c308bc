"""Cost estimate of a run, made before its data pass: ``armetrics.estimate(...)``,
``analyze(on_estimate=...)`` and ``armetrics analyze --estimate``.

Method. Every data probe's work, and the shared forward pass, is timed on slices of the
run's first batch and extrapolated to what the run will do:

- each item is first run once on 1 sample (the warm-up: one-time costs such as lazy
  initialisation are not counted; the shared forward is timed first, so the model is
  warm before any probe), then on 1 sample, then on the largest slice (at most
  ``max_slice``, the first batch and the samples the probe processes) that the
  estimate's budget for the item leaves room for, and again while room is left; the
  budget is 10% of what the item would cost were it proportional to the samples at the
  rate of the largest slice timed (an upper bound), or 2 s if that is more. A warm-up
  over the budget is the only point (an item that costs seconds per sample);
- a least-squares line through the points gives seconds per batch = ``fixed +
  per_sample * k`` (k: the samples processed), so a per-batch overhead measured on a
  small slice is not multiplied by the batch size (one point: ``per_sample`` alone);
- a probe's seconds are its setup plus the line summed over the batches it will see, at
  the number of samples it processes in each (:meth:`armetrics.probe.Probe.samples_in_batch`:
  ``wants_batch`` and ``smoothness.max_samples`` respected); the shared forward's are
  the line of each distinct set of active probes (with or without the input graph,
  the layers captured) summed over its batches at their full size, plus reading the
  batches from the data source.

Probes are timed as fresh instances built from the same options (``type(p)(**p.config)``),
set up on a copy of the run's context, with the run's seed (each slice is a batch at the
offset the run gives those samples); torch's RNG is forked and restored around the
estimate, so the run's results are the same with or without it. ``compute()`` is not
timed. Weight-only probes (``spectrum``) are not run by an estimate: before the data pass
of ``analyze`` they have already run, and their measured seconds are shown and counted;
``armetrics.estimate`` and ``--estimate`` list them as not included.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from . import checks, interrupt
from .data import Data
from .errors import ConfigError
from .engine import (_check_classes, _modes_restored, _resolve_data, _seeded_rng, _shared_forward, batch_layout,
                     check_model_and_data, make_context, make_probes, run_device)
from .hooks import tap_outputs
from .loading import eval_mode
from .probe import Context, Probe

#: the timing source (a module attribute: tests replace it, or pass ``clock=``)
CLOCK: Callable[[], float] = time.perf_counter
#: the largest slice (images of the first batch) an item is timed on
MAX_SLICE = 16
#: the estimate may spend this share of an item's predicted cost on timing it ...
SHARE = 0.1
#: ... or this many seconds, if that is more (the warm-up not counted)
FLOOR_S = 2.0
#: timings shorter than this are repeated (three runs, the fastest kept)
REPEAT_BELOW_S = 0.02
#: the estimated total above which the estimate names the options that cut it
LONG_RUN_S = 600.0
#: the options that cut a built-in probe's cost most, named in the long-run note
KNOBS: dict[str, tuple[str, ...]] = {"smoothness": ("max_samples", "layers"), "robust_accuracy": ("steps",)}
#: the label of the shared forward pass (and reading the data) in the estimate's line
SHARED = "shared forward"


@dataclass(frozen=True)
class Fit:
    """Seconds per batch of one item as a line in the samples ``k`` it processes:
    ``fixed + per_sample * k``, from timings on slices of ``sizes`` samples."""

    fixed: float
    per_sample: float
    sizes: tuple[int, ...] = ()

    def seconds(self, counts: Iterable[int]) -> float:
        """Seconds over batches processing ``counts`` samples each (batches of 0 cost nothing)."""
        return sum(self.fixed + self.per_sample * k for k in counts if k > 0)


@dataclass(frozen=True)
class Estimate:
    """A run's estimated cost, before its data pass.

    seconds: estimated seconds of each data probe (setup and updates), in run order.
    samples: how many samples each data probe will process.
    forward_seconds: the shared forward passes; data_seconds: reading the batches.
    weight_seconds: each weight-only probe's measured seconds (it ran before the data
        pass), or None when the estimate did not run it (``armetrics.estimate``).
    slice_size: the largest slice (images) anything was timed on.
    fits: the line of each item (probe names, and ``"forward"`` + the active probes).
    """

    seconds: dict[str, float]
    samples: dict[str, int]
    forward_seconds: float
    data_seconds: float
    weight_seconds: dict[str, float | None] = field(default_factory=dict)
    slice_size: int = 0
    fits: dict[str, Fit] = field(default_factory=dict, repr=False)

    @property
    def total(self) -> float:
        """Estimated seconds of the run: data probes, shared forward, reading, and the
        weight-only probes that ran (those not run are not included)."""
        weights = sum(v for v in self.weight_seconds.values() if v is not None)
        return sum(self.seconds.values()) + self.forward_seconds + self.data_seconds + weights

    @property
    def note(self) -> str | None:
        """When the total exceeds 10 minutes: the options that cut it most, else None."""
        if self.total <= LONG_RUN_S:
            return None
        costly = sorted(self.seconds, key=lambda name: -self.seconds[name])
        knobs = ["-n N (fewer images)"] + [f"--set {name}.{option}=..." for name in costly
                                           for option in KNOBS.get(name, ())]
        return f"note: about {duration(self.total)} in all; to cut it: {', '.join(knobs)}"

    def __str__(self) -> str:
        parts = [f"{name} {duration(s)} (ran)" for name, s in self.weight_seconds.items() if s is not None]
        parts += [f"{name} {duration(s)}" for name, s in self.seconds.items()]
        if self.seconds:
            parts.append(f"{SHARED} {duration(self.forward_seconds + self.data_seconds)}")
        parts.append(f"total {duration(self.total)}")
        tail = [f"timed on {self.slice_size} image{'s' if self.slice_size != 1 else ''}"] if self.slice_size else []
        skipped = [name for name, s in self.weight_seconds.items() if s is None]
        if skipped:
            tail.append(f"{', '.join(skipped)} not included: weight-only probes are not run for an estimate")
        text = f"estimate: {', '.join(parts)}" + (f" ({'; '.join(tail)})" if tail else "")
        return text + ("\n" + self.note if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: every field, the fits as ``{"fixed", "per_sample", "sizes"}``, and the total."""
        d = dataclasses.asdict(self)
        d["total"] = self.total
        return d


def duration(seconds: float) -> str:
    """``4.2s`` under 10 s, else ``m:ss`` or ``h:mm:ss``."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def estimate(
    model: nn.Module,
    data: "Data | str | Path | None" = None,
    probes: "Sequence[str | Probe] | str" = ("accuracy",),
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    device: "str | torch.device | None" = None,
    clock: Callable[[], float] | None = None,
    max_slice: int = MAX_SLICE,
) -> Estimate:
    """The estimated cost of ``analyze(model, data, probes, options=..., seed=..., device=...)``
    without running it (arguments as for :func:`armetrics.engine.analyze`). Weight-only
    probes are not run: ``weight_seconds`` lists them as None, ``total`` leaves them out.
    ``clock``: the timing source (default ``time.perf_counter``); ``max_slice``: the
    largest slice of the first batch to time on. Side effects as for ``analyze``: the
    model is moved to ``device``; torch's RNG and the modules' modes are left as they were."""
    check_model_and_data(model, data)
    seed = checks.seed(seed, allow_none=False)
    max_slice = checks.integer(max_slice, "max_slice", minimum=1)
    if clock is not None and not callable(clock):
        raise ConfigError(f"clock must be a function returning seconds (like time.perf_counter), got {type(clock).__name__}")
    probe_objs = make_probes(probes, options)
    device = run_device(model, device)
    with _seeded_rng(seed, device), _modes_restored(model):
        model = eval_mode(model.to(device))
        data_probes = [p for p in probe_objs if p.needs_data]
        weights: dict[str, float | None] = {p.name: None for p in probe_objs if not p.needs_data}
        data = _resolve_data(data, bool(data_probes), seed)
        if not data_probes:
            return Estimate({}, {}, 0.0, 0.0, weights)
        ctx = make_context(model, data, device, seed)
        return measure(model, data, data_probes, ctx, weights, clock=clock, max_slice=max_slice)


def measure(model: nn.Module, data: Data, probes: list[Probe], ctx: Context,
            weight_seconds: Mapping[str, float | None] | None = None, *, shard: tuple[int, int] | None = None,
            clock: Callable[[], float] | None = None, max_slice: int = MAX_SLICE) -> Estimate:
    """The estimate of the data pass of ``probes`` (set up or not: fresh copies are timed)
    over positions ``shard`` (default: all) of ``data``, with the run's model (eval mode,
    on ``ctx.device``) and context; see the module docstring for the method."""
    clock = clock or CLOCK
    start, stop = shard if shard is not None else (0, data.n)
    layout = batch_layout(start, stop, data.batch_size)
    timer = _Timer(model, data, ctx, clock, max_slice)
    fresh, setup = timer.fresh(probes)
    counts = {p.name: [p.samples_in_batch(o, k) for o, k in layout] for p in fresh}
    layers = {p.name: list(p.feature_layers()) for p in fresh}
    with _seeded_rng(ctx.seed, ctx.device), torch.no_grad(), \
            tap_outputs(model, sorted({n for names in layers.values() for n in names})) as taps:
        timer.taps, timer.layers = taps, layers
        forward, fits = timer.forward(fresh, layout, start)
        seconds = {}
        for p in fresh:
            fits[p.name] = timer.probe(p, layout, counts[p.name], setup[p.name])
            seconds[p.name] = setup[p.name] + fits[p.name].seconds(counts[p.name])
        reading = timer.reading(start, stop)
    slice_size = max((max(f.sizes) for f in fits.values() if f.sizes), default=0)
    return Estimate(seconds, {k: sum(v) for k, v in counts.items()}, forward, reading,
                    dict(weight_seconds or {}), slice_size, fits)


class _Timer:
    """Times the pieces of one estimate: fresh probes' setup, the shared forward of each
    set of active probes, each probe's update, reading the data (all with ``clock``)."""

    def __init__(self, model: nn.Module, data: Data, ctx: Context, clock: Callable[[], float], max_slice: int):
        self.model, self.data, self.ctx, self.clock, self.max_slice = model, data, ctx, clock, max_slice
        self.slices: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.taps: Any = None
        self.layers: dict[str, list[str]] = {}
        self.checked = False

    def fresh(self, probes: list[Probe]) -> tuple[list[Probe], dict[str, float]]:
        """Fresh instances of ``probes`` with their options, set up on a copy of the context, and their setup seconds."""
        ctx = dataclasses.replace(self.ctx, results=dict(self.ctx.results))
        fresh, setup = [], {}
        for p in probes:
            q = type(p)(**p.config)
            t = self.clock()
            q.setup(ctx)
            setup[p.name] = self.clock() - t
            fresh.append(q)
        return fresh, setup

    def slice(self, offset: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``size`` (<= max_slice) samples of the batch at ``offset``, on the device (cached)."""
        if offset not in self.slices:
            x, y = next(self.data.batches(offset, offset + self.max_slice))
            self.slices[offset] = (x.to(self.ctx.device), y.to(self.ctx.device))
        x, y = self.slices[offset]
        return x[:size], y[:size]

    def batch(self, probes: list[Probe], offset: int, size: int):
        """The shared forward's batch of ``probes`` on a slice (not timed)."""
        x, y = self.slice(offset, size)
        names = sorted({n for p in probes for n in self.layers[p.name]})
        batch = _shared_forward(self.model, x, y, self.taps, probes, names, offset, self.ctx.seed)
        if not self.checked:  # the error the data pass would give, before timing anything
            _check_classes(batch.logits, y, self.data)
            self.checked = True
        return batch

    def timed(self, run: Callable[[], Any]) -> float:
        """Seconds of ``run()`` (the device synchronised around it)."""
        interrupt.check()
        _sync(self.ctx.device)
        t = self.clock()
        run()
        _sync(self.ctx.device)
        return self.clock() - t

    def forward(self, probes: list[Probe], layout: list[tuple[int, int]], start: int) -> tuple[float, dict[str, Fit]]:
        """Seconds of the shared forward over the run's batches, by distinct set of active
        probes (each set's line timed on the first batch, summed over its batches)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for o, k in layout:
            active = tuple(i for i, p in enumerate(probes) if p.wants_batch(o, k))
            if active:
                groups.setdefault(active, []).append(k)
        first = layout[0][1] if layout else 0
        total, fits = 0.0, {}
        for active, sizes in groups.items():
            members = [probes[i] for i in active]
            work = lambda s, m=members: self.timed(lambda: self.batch(m, start, s))  # noqa: E731
            fit = _fit(work, min(first, self.max_slice), lambda f, z=sizes: f.seconds(z))
            fits["forward " + ",".join(p.name for p in members)] = fit
            total += fit.seconds(sizes)
        return total, fits

    def probe(self, p: Probe, layout: list[tuple[int, int]], counts: list[int], setup: float) -> Fit:
        """The line of ``p``'s update, timed on the first batch in which it processes samples."""
        j = next((j for j, k in enumerate(counts) if k > 0), None)
        if j is None:
            return Fit(0.0, 0.0)
        offset = layout[j][0]

        def work(s: int) -> float:
            batch = self.batch([p], offset, s)

            def run():
                p.update(batch)
                batch.release_graph(p)

            return self.timed(run)

        return _fit(work, min(counts[j], self.max_slice), lambda f: setup + f.seconds(counts))

    def reading(self, start: int, stop: int) -> float:
        """Seconds to read positions ``start:stop`` of the data (one slice read twice, the faster kept)."""
        size = min(self.max_slice, stop - start)
        if size <= 0:
            return 0.0
        read = lambda: next(self.data.batches(start, start + size))  # noqa: E731
        return min(self.timed(read), self.timed(read)) / size * (stop - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fit(work: Callable[[int], float], largest: int, predict: Callable[[Fit], float]) -> Fit:
    """Time ``work(s)`` (seconds of the item on ``s`` samples) on a warm-up sample, on 1
    sample, then on the largest slice (up to ``largest``) the budget leaves room for, and
    again while room is left: the estimate's own cost of the item, the next slice's
    predicted by the line so far, stays within :func:`_budget`. A warm-up over the budget
    is the only point. Returns the least-squares line through the points."""
    if largest < 1:
        return Fit(0.0, 0.0)
    warm = work(1)
    if warm > _budget(predict, warm):  # too dear to repeat: one-time costs are small next to it
        return Fit(0.0, warm, (1,))
    t, spent = _repeated(work, 1)
    points = [(1, t)]
    while points[-1][0] < largest:
        last, t = points[-1]
        line = _line(points) if len(points) > 1 else Fit(0.0, t)
        room = _budget(predict, t / last) - spent
        size = largest if line.per_sample <= 0 else min(largest, int((room - line.fixed) / line.per_sample))
        if size <= last:
            if len(points) > 1:
                break
            size = last + 1  # a line needs two sizes
        t, cost = _repeated(work, size)
        spent += cost
        points.append((size, t))
    return _line(points)


def _budget(predict: Callable[[Fit], float], rate: float) -> float:
    """What the estimate may spend on an item: ``max(FLOOR_S, SHARE * predict(...))`` of its
    cost were it proportional to the samples at ``rate`` seconds per sample, the rate of
    the largest slice timed (an upper bound: a fixed part per batch makes it smaller)."""
    return max(FLOOR_S, SHARE * predict(Fit(0.0, rate)))


def _repeated(work: Callable[[int], float], size: int) -> tuple[float, float]:
    """(seconds of ``work(size)``, seconds spent): one run, three when it is short (noise
    is large next to it: the fastest kept)."""
    times = [work(size)]
    if times[0] < REPEAT_BELOW_S:
        times += [work(size), work(size)]
    return min(times), sum(times)


def _line(points: list[tuple[int, float]]) -> Fit:
    """The least-squares line through the ``(size, seconds)`` points; when its slope or
    intercept comes out negative (timing noise), the line through 0 instead (cost
    proportional to the samples: on the side of overestimating a cheap item)."""
    sizes = tuple(s for s, _ in points)
    n = len(points)
    mean_s = sum(s for s, _ in points) / n
    mean_t = sum(t for _, t in points) / n
    var = sum((s - mean_s) ** 2 for s, _ in points)
    if var > 0:
        slope = sum((s - mean_s) * (t - mean_t) for s, t in points) / var
        fixed = mean_t - slope * mean_s
        if slope >= 0 and fixed >= 0:
            return Fit(fixed, slope, sizes)
    return Fit(0.0, sum(t * s for s, t in points) / sum(s * s for s, _ in points), sizes)
