"""The probe interface: what a probe declares, receives and returns.

A probe is a class registered by name (see :mod:`armetrics.registry`). Its options
are the keyword-only arguments of ``__init__``, annotated with their type (and
optionally ``Annotated[type, "help"]``) and stored on ``self`` under the same name.
State that is accumulated over the data is declared once with :meth:`Probe.add_state`
together with how two shards of it merge, so that ``a.merge(b)`` on two halves of
the data equals one run over all of it (data-parallel runs rely on this).

Life cycle, driven by :func:`armetrics.engine.analyze`::

    probe = ProbeClass(**options)
    probe.setup(ctx)                 # model known; declare hooks via feature_layers()
    for batch in data:               # only when probe.needs_data
        probe.update(batch)          # batch.logits + batch.features[name]
    result = probe.compute()         # -> ProbeResult
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from .errors import ProbeError
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


@dataclass
class Batch:
    """One batch of the shared data pass.

    x: inputs in [0, 1], shape (B, C, H, W), on the run's device.
    y: integer labels, shape (B,).
    logits: the model's output for ``x`` (computed once, shared by all probes), (B, K).
    features: outputs of the layers some probe asked for, by module name; valid only
        during this ``update`` call (the engine drops them after the batch).
    offset: index of the batch's first sample in the run's data order, so randomness
        derived from it (:meth:`rng`) is the same however the data is sharded.
    """

    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    features: dict[str, torch.Tensor]
    model: nn.Module
    offset: int = 0
    seed: int = 0

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
class ProbeResult:
    """What a probe returns.

    summary: scalar results by key (floats; NaN/inf allowed, saved as JSON null).
    layers: one dict per layer, each with at least ``name`` (a ``named_modules`` name).
    distributions: histograms ``{"edges": [...], "counts": [...]}`` by name.
    details: any further JSON-able data (e.g. a reliability diagram).
    files: side files of the report by suffix (``{".spectrum.npz": b"..."}``), not part
        of the JSON: ``Report.save(path)`` writes them beside the report (``r.json`` ->
        ``r.spectrum.npz``) together with it, so nothing is written during the run.
    """

    summary: dict[str, float]
    layers: list[dict[str, Any]] = field(default_factory=list)
    distributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """One typed option of a probe."""

    name: str
    type: Any
    default: Any
    help: str = ""

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


def options_of(cls: type) -> dict[str, Option]:
    """The options of a probe class: the keyword-only arguments of its ``__init__``."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    out: dict[str, Option] = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        ann = hints.get(p.name, type(p.default))
        help_text = ""
        if typing.get_origin(ann) is typing.Annotated:
            ann, *meta = typing.get_args(ann)
            help_text = next((m for m in meta if isinstance(m, str)), "")
        out[p.name] = Option(p.name, ann, p.default, help_text)
    return out


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
        merged = copy.deepcopy(a)
        merged.merge(b)
        return merged
    raise ValueError(f"unknown reduce {kind!r}")


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

    def __init__(self) -> None:
        self._states: dict[str, tuple[Reduce, Any]] = {}
        self.ctx: Context | None = None

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
        ``merge`` method) or a callable ``(a, b) -> merged``."""
        if not hasattr(self, "_states"):
            raise ProbeError(f"{type(self).__name__}.__init__ must call super().__init__()")
        self._states[name] = (reduce, copy.deepcopy(default))
        setattr(self, name, copy.deepcopy(default))

    def reset(self) -> None:
        for name, (_, default) in self._states.items():
            setattr(self, name, copy.deepcopy(default))

    def merge(self, other: "Probe") -> "Probe":
        """Fold the state of ``other`` (same probe, same config, another shard) into self."""
        if type(other) is not type(self) or other.config != self.config:
            raise ProbeError(f"cannot merge probe {self.name!r} with a probe of another config")
        for name, (reduce, _) in self._states.items():
            setattr(self, name, _reduce(reduce, getattr(self, name), getattr(other, name)))
        return self

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._states}

    # ----- life cycle ----------------------------------------------------------
    def setup(self, ctx: Context) -> None:
        """Called once before the data pass (or before ``compute`` for weight-only probes)."""
        self.ctx = ctx

    def feature_layers(self) -> list[str]:
        """Module names whose outputs this probe wants in ``batch.features``."""
        return []

    def update(self, batch: Batch) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def compute(self) -> ProbeResult:  # pragma: no cover - interface
        raise NotImplementedError
