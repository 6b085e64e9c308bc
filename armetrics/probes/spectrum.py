"""``spectrum``: per-layer singular value distributions of Conv2d/Linear layers."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn

from .. import checks, interrupt
from ..errors import ArmetricsError, ConfigError, ProbeError, first_line
from ..hooks import select_layers
from ..npz import npz_bytes  # noqa: F401  (re-exported: spectrum.npz_bytes)
from ..linalg import LINEAR_TYPES, TracedLayer, all_finite, parallel_map, singular_values, trace_layers
from ..probe import Probe, ProbeResult, Range
from ..registry import register_probe
from ..report import side_path
from ..stats import Histogram

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STAT_KEYS = ("sigma_max", "sigma_min", "mean", "std", "cv", "condition_number", "stable_rank", "effective_rank",
             *(f"q{round(q * 100):02d}" for q in QUANTILES))
DEFAULT_INPUT = (3, 32, 32)
#: suffix of the ``save_values`` side file (``r.json`` -> ``r.spectrum.npz``)
VALUES_SUFFIX = ".spectrum.npz"
#: option bounds: a run must stay bounded in time and memory whatever the options
MAX_BINS = 10_000
MAX_INPUT_PIXELS = 512 * 512  # H*W of input_size (ImageNet's 224x224 and 512x512 fit)
MAX_INPUT_CHANNELS = 4096


def spectrum_stats(sigma: np.ndarray, complete: bool = True) -> dict[str, float]:
    """Statistics of one layer's singular values ``sigma`` (1-D, >= 0, any order).

    sigma_max, sigma_min: largest / smallest value; mean, std: their mean and population
    standard deviation (ddof = 0); cv = std / mean; condition_number =
    sigma_max / sigma_min (inf when sigma_min = 0); stable_rank = sum sigma^2 /
    sigma_max^2; effective_rank = exp(-sum p_i log p_i) with p = sigma / sum sigma
    (0 log 0 = 0); qNN: the NN-th percentile (linear interpolation). With
    ``complete=False`` (only the top values are known) sigma_min and
    condition_number are None and the rest describe the known values only.
    """
    s = np.asarray(sigma, dtype=np.float64)
    smax, smin = float(s.max()), float(s.min())
    mean, std = float(s.mean()), float(s.std())
    total = float(s.sum())
    p = s[s > 0] / total if total > 0 else np.ones(1)
    out = {
        "sigma_max": smax,
        "sigma_min": smin if complete else None,
        "mean": mean,
        "std": std,
        "cv": std / mean if mean > 0 else math.nan,
        "condition_number": (smax / smin if smin > 0 else math.inf) if complete else None,
        "stable_rank": float((s**2).sum() / smax**2) if smax > 0 else math.nan,
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())) if total > 0 else math.nan,
    }
    for q, v in zip(QUANTILES, np.quantile(s, QUANTILES)):
        out[f"q{round(q * 100):02d}"] = float(v)
    return out


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Model-level summary of the layer rows: cv_mean, std_mean (means over layers),
    condition_number_median (median over layers; inf counts as the largest),
    sigma_max_max, sigma_max_product (product of the layers' sigma_max, the Lipschitz
    bound of the linear layers in series), log_sigma_max_sum (its natural log).
    Layers without statistics (non-finite weights) are left out and counted in
    ``nonfinite_layers``."""
    ok = [r for r in rows if r.get("sigma_max") is not None]
    smax = [r["sigma_max"] for r in ok]
    cond = [r["condition_number"] for r in ok if r.get("condition_number") is not None]
    cv, std = _finite(r["cv"] for r in ok), _finite(r["std"] for r in ok)
    log_sum = math.fsum(math.log(v) if v > 0 else -math.inf for v in smax) if smax else math.nan
    return {
        "cv_mean": float(np.mean(cv)) if cv else math.nan,
        "std_mean": float(np.mean(std)) if std else math.nan,
        "condition_number_median": float(np.median(cond)) if cond else math.nan,
        "sigma_max_max": max(smax) if smax else math.nan,
        "sigma_max_product": math.prod(smax) if smax else math.nan,
        "log_sigma_max_sum": log_sum,
        "num_layers": len(rows),
        "nonfinite_layers": sum(1 for r in rows if r.get("nonfinite")),
    }


@register_probe("spectrum")
class Spectrum(Probe):
    """Per-layer singular value distributions of Conv2d/Linear weights (conv+BN folded).

    Per layer (forward order): ``sigma_max``, ``sigma_min``, ``mean``, ``std``, ``cv`` =
    std/mean, ``condition_number`` = sigma_max/sigma_min, ``stable_rank`` =
    sum sigma^2/sigma_max^2, ``effective_rank`` = exp(entropy of sigma/sum sigma),
    ``count``, quantiles ``q05..q95``, ``folded_bn`` (the BatchNorm folded in, or None),
    a histogram of the values on [0, sigma_max] in ``distributions[layer]``. The
    values are dimensionless gains (output change per unit input change) of the
    layer's linear map, as chosen by ``method`` (see ``armetrics.linalg``).
    Summary: ``cv_mean``, ``std_mean``, ``condition_number_median``,
    ``sigma_max_max``, ``sigma_max_product``, ``log_sigma_max_sum``.
    """

    headline = ('cv_mean', 'std_mean', 'condition_number_median', 'sigma_max_max')

    needs_data = False

    def __init__(
        self,
        *,
        method: Annotated[Literal["reshape", "fft", "power"],
                          "reshape: kernel as C_out x C_in*k*k matrix; fft: exact circular stride-1 conv operator; "
                          "power: top-k of the true (strided, zero-padded) operator"] = "reshape",
        fold_bn: Annotated[bool, "fold an eval-mode BatchNorm that directly follows a layer into it"] = True,
        layers: Annotated[list[str] | None, "comma list of layer name globs (default: every Conv2d/Linear)"] = None,
        bins: Annotated[int, "histogram bins per layer, on [0, sigma_max]", Range(1, MAX_BINS)] = 50,
        save_values: Annotated[bool, "write all singular values to <report>.spectrum.npz"] = False,
        input_size: Annotated[tuple[int, ...] | None, "C,H,W of one input for the forward trace and fft/power "
                                                      "(default: the data's, else 3,32,32)"] = None,
        k: Annotated[int, "number of top singular values computed by method=power (at most a layer's rank)", Range(1)] = 6,
    ):
        super().__init__()
        self.layers = list(layers) if layers else None
        self.input_size = _input_size(input_size) if input_size else None

    # ------------------------------------------------------------------ layer selection
    def _select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return select_layers(model, self.layers, option="spectrum.layers", types=LINEAR_TYPES, include_root=True)

    def _trace(self, model: nn.Module, input_shape: tuple[int, ...], details: dict) -> dict[str, TracedLayer]:
        try:
            return {t.name: t for t in trace_layers(model, input_shape)}
        except ArmetricsError:
            raise
        except Exception as exc:  # the model's own forward failed on the dummy input
            first = first_line(exc, 160)
            if self.method != "reshape":
                raise ProbeError(
                    f"spectrum could not trace the model on an input of shape {input_shape} ({first}): "
                    f"set the model's input size with --set spectrum.input_size=C,H,W"
                ) from None
            details["trace_error"] = (f"forward trace on {input_shape} failed ({first}): layers in module order, "
                                      f"no BatchNorm folded (set spectrum.input_size=C,H,W)")
            return {}

    # ------------------------------------------------------------------ compute
    def compute(self) -> ProbeResult:
        model = self.ctx.model
        input_shape = self.input_size or (tuple(self.ctx.input_shape) if self.ctx.input_shape else DEFAULT_INPUT)
        details: dict[str, Any] = {"method": self.method, "input_shape": list(input_shape)}
        selected = self._select(model)
        if not selected:
            return ProbeResult(summary=summarize([]), details={**details, "note": "the model has no Conv2d/Linear layer"})
        traced = self._trace(model, input_shape, details)
        modules = dict(selected)
        order = [n for n in traced if n in modules]
        order += [n for n in modules if n not in traced]  # never reached by the forward pass: last
        ranks = self._check_k(modules, traced)

        rows, dists, saved = [], {}, {}
        for row, sigma in self._layers(order, modules, traced, ranks):
            name = row["name"]
            rows.append(row)
            if sigma is not None:
                hi = row["sigma_max"] if row["sigma_max"] > 0 else 1.0
                hist = Histogram.linear(0.0, hi, self.bins)
                hist.update(sigma)
                dists[name] = hist.to_dict()
                saved[name] = sigma
        files = {}
        if self.save_values:
            if self.ctx.out_path:  # written by Report.save together with the report, never before
                files[VALUES_SUFFIX] = npz_bytes(saved)
                details["values_path"] = str(values_path(self.ctx.out_path))
            else:
                details["values_path"] = None
                details["values_note"] = ("save_values needs the report's output path (-o/--out or "
                                          "analyze(out_path=...)): values not saved")
        return ProbeResult(summary=summarize(rows), layers=rows, distributions=dists, details=details, files=files)

    def _layers(self, order: list[str], modules: dict[str, nn.Module], traced: dict[str, TracedLayer],
                ranks: dict[str, int]) -> list[tuple[dict[str, Any], np.ndarray | None]]:
        """Every layer's (row, singular values), in ``order``. With ``reshape`` (one small
        matrix per layer) the layers are spread over ``torch.get_num_threads()`` worker
        threads, each with single-threaded LAPACK: multithreaded LAPACK on one matrix at a
        time is slower for these sizes, and much slower on a busy machine
        (benchmarks/README.md); ``fft``/``power`` parallelise inside each layer."""
        def one(name: str):
            interrupt.check()
            return self._layer(name, modules[name], traced.get(name), ranks.get(name))

        if self.method == "reshape":
            return parallel_map(one, order)
        return [one(name) for name in order]

    def _check_k(self, modules: dict[str, nn.Module], traced: dict[str, TracedLayer]) -> dict[str, int]:
        """For ``power``: each layer's number of singular values (the rank bound of its
        operator) by name; ConfigError when ``k`` exceeds it for every selected layer."""
        if self.method != "power":
            return {}
        ranks = {name: _full_count(m, traced.get(name)) for name, m in modules.items()
                 if isinstance(m, nn.Linear) or name in traced}
        if ranks and self.k > max(ranks.values()):
            largest = max(ranks.values())
            raise ConfigError(f"spectrum.k={self.k} is more than any selected layer has singular values (at most "
                              f"{largest}): use --set spectrum.k={largest} or less")
        return ranks

    def _layer(self, name: str, module: nn.Module, trace: TracedLayer | None,
               rank: int | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        row: dict[str, Any] = {"name": name, "type": type(module).__name__, "weight_shape": list(module.weight.shape)}
        if isinstance(module, nn.Conv2d):
            row.update(stride=list(module.stride), padding=module.padding if isinstance(module.padding, str) else list(module.padding),
                       dilation=list(module.dilation), groups=module.groups)
        row["input_shape"] = list(trace.input_shape) if trace else None
        bn = trace.bn if (trace is not None and self.fold_bn) else None
        row["folded_bn"] = trace.bn_name if bn is not None else None
        row["complete"] = self.method != "power"
        empty = {key: None for key in STAT_KEYS}
        weight = module.weight.detach()
        if not all_finite(weight):
            row.update(empty, count=0, nonfinite=True)
            return row, None
        if self.method != "reshape" and isinstance(module, nn.Conv2d) and trace is None:
            row.update(empty, count=0, error="not reached by the forward pass: input shape unknown")
            return row, None
        k = self.k
        if self.method == "power":
            k = min(self.k, rank) if rank is not None else self.k
            row["k"] = k  # top values asked for: spectrum.k, at most the layer's number of singular values
        t = time.perf_counter()
        try:
            sigma = singular_values(module, trace.input_shape if trace else None, self.method, k=k, bn=bn)
        except ProbeError:
            row.update(empty, count=0, nonfinite=True)
            return row, None
        except (RuntimeError, torch.linalg.LinAlgError, ArithmeticError) as exc:
            row.update(empty, count=0, error=first_line(exc))
            return row, None
        sigma = sigma.detach().to("cpu", torch.float64).numpy()
        complete = self.method != "power" or len(sigma) >= _full_count(module, trace)
        row["complete"] = bool(complete)
        row.update(spectrum_stats(sigma, complete=complete), count=int(sigma.size), nonfinite=False,
                   seconds=time.perf_counter() - t)
        return row, sigma


def values_path(report_path: str | Path) -> Path:
    """Where ``save_values`` writes: the report path with suffix ``.spectrum.npz``
    (``r.json`` -> ``r.spectrum.npz``); keys of the npz are layer names."""
    return side_path(report_path, VALUES_SUFFIX)


def _input_size(value: Any) -> tuple[int, int, int]:
    """``input_size`` as three positive integers, within the bounds that keep the trace
    and ``fft``/``power`` bounded in memory (:data:`MAX_INPUT_PIXELS`, :data:`MAX_INPUT_CHANNELS`)."""
    size = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if len(size) != 3:
        raise ConfigError(f"spectrum.input_size must be C,H,W (e.g. 3,32,32), got {size}")
    c, h, w = (checks.integer(v, "spectrum.input_size", minimum=1) for v in size)
    if c > MAX_INPUT_CHANNELS or h * w > MAX_INPUT_PIXELS:
        raise ConfigError(f"spectrum.input_size={c},{h},{w} is too large: at most {MAX_INPUT_CHANNELS} channels "
                          f"and H*W <= {MAX_INPUT_PIXELS} (512x512)")
    return c, h, w


def _full_count(module: nn.Module, trace: TracedLayer | None) -> int:
    """Number of singular values of the layer's true operator (for ``power``)."""
    if isinstance(module, nn.Linear):
        return min(module.weight.shape)
    if trace is None:
        return 1 << 62
    n_in = math.prod(trace.input_shape)
    n_out = math.prod(trace.output_shape) if trace.output_shape else n_in
    return min(n_in, n_out)
