"""The probe interface: what a probe declares, receives and returns.

A probe is a class registered by name (see :mod:`armetrics.registry`). Its options
are the keyword-only arguments of ``__init__``, annotated with their type (and
optionally ``Annotated[type, "help", Range(low, high)]``); the base class checks each
against its :class:`Range` and stores it on ``self`` under the same name before the
body of ``__init__`` runs.
State that is accumulated over the data is declared once with :meth:`Probe.add_state`
together with how two shards of it merge, so that ``a.merge(b)`` on two halves of
the data equals one run over all of it (data-parallel runs rely on this).

Life cycle, driven by :func:`armetrics.engine.analyze`::

    probe = ProbeClass(**options)
    probe.setup(ctx)                 # model known; declare hooks via feature_layers()
    for batch in data:               # only when probe.needs_data and wants_batch(...)
        probe.update(batch)          # batch.logits, batch.features[name], batch.graph;
                                     # batch.advance(k): k more samples done (progress bar)
    result = probe.compute()         # -> ProbeResult

Per-sample values (one number, or one per layer row, for each sample the probe saw) go
into a :class:`SampleRecorder` state and come back as ``ProbeResult.samples``; the
engine writes them into the report's ``.samples.npz`` side file (:mod:`armetrics.samples`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, ProbeError, shorten
from .functional import seeded_generator

Reduce = typing.Union[str, Callable[[Any, Any], Any]]


@dataclass
class Context:
    """What a probe can know before the data pass.

    ``results`` holds the results of the weight-only probes already computed in this
    run (they always run first), e.g. ``margin`` reads ``spectrum``'s sigma_max values.
    ``input_shape`` is one sample's shape ``(C, H, W)`` when data is given.
    """

    model: nn.Module
    device: torch.device
    seed: int = 0
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    results: dict[str, "ProbeResult"] = field(default_factory=dict)
    out_path: str | None = None
    #: whether probes keep per-sample values for the report's ``.samples.npz`` side file
    #: (``analyze(samples=...)``; probes read it through :meth:`Probe.keeps_samples`)
    samples: bool = True


@dataclass
class Graph:
    """The batch's shared forward pass with its autograd graph: ``batch.graph``, given
    when a probe updating the batch sets ``needs_input_grad``.

    x: the input as a leaf that requires grad (the values of ``batch.x``), (B, C, H, W).
    logits: the model output computed from ``x``, with its graph, (B, K).
    features: the captured layer outputs of that pass (the ``feature_layers()`` of the
        probes updating this batch) with their graph; each a clone taken when its module
        ran, so in-place ops further on (``ReLU(inplace=True)``) changed neither its
        value nor its gradient.
    calls: how often each captured module ran in the pass (features hold its last call).
    aliases: captured modules whose output *is* the model output (e.g. the last Linear).

    Differentiate under ``torch.enable_grad()`` with ``torch.autograd.grad(...,
    retain_graph=True)``, with respect to ``x`` (no parameter gets a gradient): other
    probes of the batch may use the same graph.
    """

    x: torch.Tensor
    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    calls: dict[str, int]
    aliases: frozenset[str]


@dataclass
class Batch:
    """One batch of the shared data pass.

    x: inputs in [0, 1], shape (B, C, H, W), on the run's device.
    y: integer labels, shape (B,).
    logits: the model's output for ``x`` (computed once, shared by all probes), (B, K).
    features: outputs of the layers some probe asked for, by module name (clones taken
        when the module ran, without graph); valid only during this ``update`` call
        (the engine drops them after the batch).
    offset: index of the batch's first sample in the run's data order, so randomness
        derived from it (:meth:`rng`) is the same however the data is sharded.
    graph: the same forward pass with its autograd graph (:class:`Graph`) when a probe
        updating this batch sets ``needs_input_grad``, else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    model: nn.Module
    offset: int = 0
    seed: int = 0
    graph: Graph | None = None
    graph_users: set[str] = field(default_factory=set, repr=False)
    #: set by the engine while a probe updates this batch: what :meth:`advance` reports to
    #: (that probe's progress bar); None outside the engine's data pass
    on_advance: Callable[[int], None] | None = field(default=None, repr=False, compare=False)

    def advance(self, k: int) -> None:
        """Say that the probe now updating has finished ``k`` more of its samples of this
        batch, from inside a long ``update`` (e.g. per sub-chunk): its progress bar moves on
        at once. When ``update`` returns the engine credits the samples not reported yet, so
        a probe need not call it; outside the engine's data pass it does nothing."""
        if self.on_advance is not None:
            self.on_advance(int(k))

    def release_graph(self, probe: "Probe") -> None:
        """Say that ``probe`` is done with :attr:`graph`. Once every probe that asked for
        it is done the batch drops it, so the activations it holds can be freed while a
        probe goes on with passes of its own; the engine also releases it for each
        probe after its ``update``."""
        self.graph_users.discard(probe.name)
        if not self.graph_users:
            self.graph = None

    def sample_rngs(self, stream: str, positions) -> list[torch.Generator]:
        """One generator per sample: sample ``i`` of the batch gets the generator
        :meth:`rng` would give a batch starting at that sample, i.e. seeded by (run seed,
        the sample's index in the run, stream). Draws then depend on the sample alone,
        not on batch size or sharding."""
        return [dataclasses.replace(self, offset=self.offset + int(i)).rng(stream) for i in positions]

    def rng(self, stream: str = "") -> torch.Generator:
        """A generator seeded by (run seed, batch offset, stream name), on x's device."""
        return seeded_generator(self.seed, self.offset, stream, device=self.x.device)


@dataclass
class Samples:
    """A probe's per-sample values, keyed by sample position.

    index: int64 (N,), ascending and unique: each value's position in the run's data
        order (0 .. n-1; ``source_index`` in the side file maps it to the image).
    columns: by name, float64 / bool / int64 arrays of shape (N,) (one value per sample)
        or (N, L) (one per layer row, in the order of ``rows``).
    units: by column name, what the value means and its units (e.g. ``"probability"``).
    rows: names of the L layer rows of the 2-D columns (the probe's report layer rows),
        None when every column is 1-D.
    """

    index: np.ndarray
    columns: dict[str, np.ndarray]
    units: dict[str, str] = field(default_factory=dict)
    rows: list[str] | None = None


class SampleRecorder:
    """Mergeable per-sample columns: chunks of ``(index, {name: values})`` added batch by
    batch (a few numbers per sample, never features), concatenated on merge and ordered
    by index in :meth:`result`, so merged shards equal one run. Declare it as a state:
    ``self.add_state("per_sample", SampleRecorder(), "merge")``."""

    def __init__(self) -> None:
        self.chunks: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    def add(self, index: torch.Tensor, **columns: torch.Tensor) -> None:
        """Record the values of the samples at run positions ``index`` (B,)."""
        self.chunks.append((index.detach().long().cpu(),
                            {k: v.detach().cpu() for k, v in columns.items()}))

    def merge(self, other: "SampleRecorder") -> None:
        self.chunks.extend(other.chunks)

    def result(self, units: Mapping[str, str], rows: list[str] | None = None) -> Samples | None:
        """The recorded values ordered by sample position (float columns as float64), or
        None when nothing was recorded."""
        if not self.chunks:
            return None
        index = torch.cat([i for i, _ in self.chunks])
        order = torch.argsort(index)
        columns = {}
        for name in self.chunks[0][1]:
            values = torch.cat([c[name] for _, c in self.chunks])[order]
            columns[name] = (values.double() if values.is_floating_point() else values).numpy()
        return Samples(index=index[order].numpy().astype(np.int64), columns=columns,
                       units={k: units[k] for k in columns if k in units}, rows=rows)


@dataclass
class ProbeResult:
    """What a probe returns.

    summary: scalar results by key (floats; NaN/inf allowed, saved as JSON null).
    layers: one dict per layer, each with at least ``name`` (a ``named_modules`` name).
    distributions: histograms ``{"edges": [...], "counts": [...]}`` by name.
    details: any further JSON-able data (e.g. a reliability diagram).
    files: side files of the report by suffix (``{".spectrum.npz": b"..."}``), not part
        of the JSON: ``Report.save(path)`` writes them beside the report (``r.json`` ->
        ``r.spectrum.npz``) together with it, so nothing is written during the run.
    samples: per-sample values (:class:`Samples`), which the engine writes into the
        report's ``.samples.npz`` side file; None for none.
    """

    summary: dict[str, float]
    layers: list[dict[str, Any]] = field(default_factory=list)
    distributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    samples: Samples | None = None


@dataclass(frozen=True)
class Range:
    """Inclusive bounds of a numeric option, declared in its annotation and checked when
    the probe is built: ``bins: Annotated[int, "histogram bins", Range(1, MAX_BINS)]``.
    ``positive=True`` excludes the lower bound (``Range(0, positive=True)``: > 0). The
    value must also be a finite number (an integer for an ``int`` option); None passes
    (an optional option left unset)."""

    low: float | None = None
    high: float | None = None
    positive: bool = False

    def __str__(self) -> str:
        """``1..100000``, ``>=0``, ``>0``, ``>0,<=5``."""
        if self.low is not None and self.high is not None and not self.positive:
            return f"{self.low:g}..{self.high:g}"
        low = "" if self.low is None else f"{'>' if self.positive else '>='}{self.low:g}"
        high = "" if self.high is None else f"<={self.high:g}"
        return ",".join(t for t in (low, high) if t)

    def problem(self, value: Any, integer: bool) -> str | None:
        """What is wrong with ``value`` (a phrase), or None."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a finite number"
        if integer and not float(value).is_integer():
            return "must be an integer"
        too_low = self.low is not None and (value <= self.low if self.positive else value < self.low)
        too_high = self.high is not None and value > self.high
        if not (too_low or too_high):
            return None
        if self.low is not None and self.high is not None and not self.positive:
            return f"must be between {self.low:g} and {self.high:g}"
        low = f"> {self.low:g}" if self.positive else f">= {self.low:g}"
        if self.low is not None and self.high is not None:
            return f"must be {low} and at most {self.high:g}"
        return f"must be {low}" if self.low is not None else f"must be at most {self.high:g}"


@dataclass(frozen=True)
class Option:
    """One typed option of a probe."""

    name: str
    type: Any
    default: Any
    help: str = ""
    range: Range | None = None

    @property
    def choices(self) -> tuple | None:
        if typing.get_origin(self.type) is typing.Literal:
            return typing.get_args(self.type)
        return None

    def describe_type(self) -> str:
        if self.choices:
            return "|".join(map(str, self.choices))
        origin = typing.get_origin(self.type)
        if origin in (list, tuple):
            return "list"
        if origin is typing.Union or origin is types.UnionType:
            args = [a for a in typing.get_args(self.type) if a is not type(None)]
            return "|".join(getattr(a, "__name__", str(a)) for a in args) + "|none"
        return getattr(self.type, "__name__", str(self.type))

    def check(self, probe: str, value: Any) -> None:
        """ConfigError when ``value`` is outside the declared range."""
        if self.range is None:
            return
        args = typing.get_args(self.type)
        integer = self.type is int or (int in args and float not in args)
        problem = self.range.problem(value, integer)
        if problem:
            example = f": e.g. --set {probe}.{self.name}={self.default}" if self.default is not None else ""
            raise ConfigError(f"{probe}.{self.name} {problem}, got {shorten(repr(value))}{example}")


def options_of(cls_or_init: Any) -> dict[str, Option]:
    """The options of a probe class (or of one ``__init__``): its keyword-only arguments,
    with the help text and :class:`Range` of their ``Annotated`` metadata."""
    init = cls_or_init.__init__ if isinstance(cls_or_init, type) else cls_or_init
    hints = typing.get_type_hints(init, include_extras=True)
    out: dict[str, Option] = {}
    for p in inspect.signature(init).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        ann = hints.get(p.name, type(p.default))
        help_text, bounds = "", None
        if typing.get_origin(ann) is typing.Annotated:
            ann, *meta = typing.get_args(ann)
            help_text = next((m for m in meta if isinstance(m, str)), "")
            bounds = next((m for m in meta if isinstance(m, Range)), None)
        out[p.name] = Option(p.name, ann, p.default, help_text, bounds)
    return out


def _binding(init: Callable) -> Callable:
    """``init`` preceded by what every probe's ``__init__`` would repeat: each option
    checked against its declared :class:`Range` and stored on ``self`` under its name
    (the body may still replace a value by a normalised one)."""
    signature = inspect.signature(init)
    declared: dict[str, Option] = {}

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not declared:
            declared.update(options_of(init))
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        probe = type(self).name or type(self).__name__
        for name, option in declared.items():
            option.check(probe, bound.arguments[name])
        for name in declared:
            setattr(self, name, bound.arguments[name])
        init(self, *args, **kwargs)

    return __init__


def _reduce(kind: Reduce, a: Any, b: Any) -> Any:
    if callable(kind):
        return kind(a, b)
    if kind == "sum":
        return a + b
    if kind == "max":
        return torch.maximum(a, b) if isinstance(a, torch.Tensor) else max(a, b)
    if kind == "min":
        return torch.minimum(a, b) if isinstance(a, torch.Tensor) else min(a, b)
    if kind == "cat":
        if isinstance(a, torch.Tensor):
            return torch.cat([a, b])
        return list(a) + list(b)
    if kind == "merge":
        return _merged(a, b)
    raise ValueError(f"unknown reduce {kind!r}")


def _merged(a: Any, b: Any) -> Any:
    """``"merge"``: a copy of ``a`` with ``b`` merged in by the value's own ``merge``;
    lists/tuples of mergeables merge element by element, and None (not made yet, e.g.
    a histogram whose range comes from the first batch) takes the other side."""
    if a is None or b is None:
        return copy.deepcopy(b if a is None else a)
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            raise ProbeError(f"cannot merge state lists of lengths {len(a)} and {len(b)}")
        return type(a)(_merged(x, y) for x, y in zip(a, b))
    merged = copy.deepcopy(a)
    merged.merge(b)
    return merged


@functools.lru_cache(maxsize=None)
def _declares(cls: type, option: str) -> bool:
    """Whether probe class ``cls`` has the option ``option`` (cached per class)."""
    return option in options_of(cls)


class Probe:
    """Base class of all probes. Subclasses write ``__init__`` (options), ``update``
    (per batch) and ``compute``; weight-only probes set ``needs_data = False`` and
    write only ``compute``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    #: summary keys the CLI's table shows (None: all of them; the report has everything)
    headline: ClassVar[tuple[str, ...] | None] = None
    #: the probe's numbers for a given config: bump it when a change of method changes
    #: them, so that reports made before are not taken for the same result (sweeps reuse
    #: a report only when its fingerprint, which holds the revisions above 1, is equal;
    #: reports record a revision above 1 in the probe's entry)
    revision: ClassVar[int] = 1
    #: whether ``update`` differentiates through the shared forward pass: the engine then
    #: runs it with the input requiring grad and hands the graph over as ``batch.graph``
    #: (an instance may set it in ``__init__`` or ``setup`` from its options)
    needs_input_grad: bool = False

    def __init__(self) -> None:
        self._states: dict[str, tuple[Reduce, Any]] = {}
        self.ctx: Context | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _binding(cls.__dict__["__init__"])

    # ----- options -------------------------------------------------------------
    @classmethod
    def options(cls) -> dict[str, Option]:
        return options_of(cls)

    @property
    def config(self) -> dict[str, Any]:
        """The option values of this instance (what the report records)."""
        return {k: getattr(self, k) for k in self.options()}

    # ----- state ---------------------------------------------------------------
    def add_state(self, name: str, default: Any, reduce: Reduce) -> None:
        """Declare accumulated state ``name`` with its start value and how shards merge:
        ``"sum"``, ``"max"``, ``"min"``, ``"cat"``, ``"merge"`` (the value's own
        ``merge`` method; element by element for a list of such values; None merges as
        "not made yet") or a callable ``(a, b) -> merged``. Call it in ``__init__`` or in
        ``setup(ctx)`` (when the state's shape depends on the model or the data)."""
        if not hasattr(self, "_states"):
            raise ProbeError(f"{type(self).__name__}.__init__ must call super().__init__()")
        self._states[name] = (reduce, copy.deepcopy(default))
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        for name, (_, default) in self._states.items():
            setattr(self, name, copy.deepcopy(default))

    def merge(self, other: "Probe | Mapping[str, Any]") -> "Probe":
        """Fold another shard into self: a probe of the same class and config, or the
        :meth:`state_dict` of one (e.g. from another rank). Returns self."""
        if isinstance(other, Probe):
            if type(other) is not type(self) or other.config != self.config:
                raise ProbeError(f"cannot merge probe {self.name!r} with a probe of another config")
            other = other.state_dict()
        self._check_names(other, "merge")
        for name, (reduce, _) in self._states.items():
            setattr(self, name, _reduce(reduce, getattr(self, name), other[name]))
        return self

    def state_dict(self) -> dict[str, Any]:
        """The accumulated state by name (the values themselves, not copies)."""
        return {name: getattr(self, name) for name in self._states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the accumulated state by ``state`` (a :meth:`state_dict` of a probe of
        the same class and config, set up the same way)."""
        self._check_names(state, "load")
        for name in self._states:
            setattr(self, name, copy.deepcopy(state[name]))

    def _check_names(self, state: Mapping[str, Any], what: str) -> None:
        if not isinstance(state, Mapping) or set(state) != set(self._states):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ProbeError(f"cannot {what} state {got} into probe {self.name!r}, whose state is "
                             f"{sorted(self._states)}: use the state_dict of the same probe, set up the same way")

    # ----- life cycle ----------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        """Called once before the data pass (or before ``compute`` for weight-only probes)."""
        self.ctx = ctx

    @property
    def keeps_samples(self) -> bool:
        """Whether to record per-sample values (``Context.samples``; True before setup)."""
        return self.ctx is None or self.ctx.samples

    def feature_layers(self) -> list[str]:
        """Module names whose outputs this probe wants in ``batch.features``."""
        return []

    def wants_batch(self, offset: int, size: int) -> bool:
        """Whether ``update`` should see the batch of samples ``offset .. offset+size-1``
        of the run (default: every batch). A probe that measures part of the data only
        (``smoothness.max_samples``) says no to the rest: the engine then neither calls
        its ``update`` nor captures its features or graph for that batch."""
        return True

    def samples_in_batch(self, offset: int, size: int) -> int:
        """How many of the batch's samples (``offset .. offset+size-1`` of the run) ``update``
        will process: what the cost estimate (:mod:`armetrics.estimation`) extrapolates to
        and the probe's progress bar counts. Default: all ``size`` when :meth:`wants_batch`
        says yes, else 0 — for a probe with an integer option ``max_samples`` (the first N
        samples of the run, as ``smoothness.max_samples``) only those below it. Override it
        with :meth:`wants_batch` when the probe measures another part of the data."""
        if not self.wants_batch(offset, size):
            return 0
        limit = getattr(self, "max_samples", None) if _declares(type(self), "max_samples") else None
        if isinstance(limit, bool) or not isinstance(limit, int):
            return size
        return max(0, min(size, limit - offset))

    def update(self, batch: Batch) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def compute(self) -> ProbeResult:  # pragma: no cover - interface
        raise NotImplementedError
