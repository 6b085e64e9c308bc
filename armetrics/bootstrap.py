"""Percentile bootstrap over samples, paired for differences (pure numpy).

Resample ``r`` (``r = 0 .. reps-1``) draws ``n`` sample positions with replacement,
``rng.integers(0, n, n)``, one call per resample in that order from
``numpy.random.default_rng(seed)``; the 95% interval is the 2.5% and 97.5% quantiles
(``numpy.quantile``, linear interpolation) of the statistic over the resamples. A
*paired* interval applies the *same* positions to both models' values (the same
images), so it covers the sampling of test images, not training randomness.

A statistic maps an array whose axis 1 indexes samples — shape ``(B, n, ...)``, B
resamples at once — to ``(B, ...)``; :func:`mean` and :func:`median` are such
statistics. Resamples are evaluated in blocks of at most :data:`BLOCK_VALUES` values,
so memory stays bounded for large ``n``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Stat = Callable[[np.ndarray], np.ndarray]
#: resampled values held at a time (blocks of resamples)
BLOCK_VALUES = 1 << 22
LEVEL = 0.95


def mean(x: np.ndarray) -> np.ndarray:
    """Mean over the sample axis (axis 1)."""
    return np.mean(x, axis=1)


def median(x: np.ndarray) -> np.ndarray:
    """Median over the sample axis (axis 1; the mean of the two middle values for even n)."""
    return np.median(x, axis=1)


def abs_median(x: np.ndarray) -> np.ndarray:
    """Median of |x| over the sample axis: a distance from 0, either side."""
    return np.median(np.abs(x), axis=1)


def _blocks(n: int, reps: int, seed: int, width: int):
    """The resamples' positions, ``(b, n)`` blocks in resample order."""
    rng = np.random.default_rng(seed)
    per_block = max(1, BLOCK_VALUES // max(1, n * width))
    for start in range(0, reps, per_block):
        yield np.stack([rng.integers(0, n, n) for _ in range(min(per_block, reps - start))])


def statistic(stat: Stat, values: np.ndarray) -> np.ndarray:
    """``stat`` of the values themselves (no resampling): ``stat(values[None])[0]``."""
    return np.asarray(stat(values[None]), dtype=np.float64)[0]


def _ci(boots: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return lo, hi


def interval(values: np.ndarray, stat: Stat = mean, reps: int = 1000, seed: int = 0,
             level: float = LEVEL) -> tuple:
    """``(stat(values), low, high)``: the statistic of one model's per-sample ``values``
    (n, ...) and its percentile-bootstrap interval (floats, or arrays for a statistic
    with more than one value)."""
    values = np.asarray(values)
    width = int(np.prod(values.shape[1:])) if values.ndim > 1 else 1
    boots = np.concatenate([np.asarray(stat(values[idx]), dtype=np.float64)
                            for idx in _blocks(len(values), reps, seed, width)])
    lo, hi = _ci(boots, level)
    return _out(statistic(stat, values)), _out(lo), _out(hi)


def paired(a: np.ndarray, b: np.ndarray, stat: Stat = mean, reps: int = 1000, seed: int = 0,
           level: float = LEVEL) -> tuple:
    """``(stat(b) - stat(a), low, high)`` for per-sample values ``a`` (reference) and
    ``b`` (another model) of the *same* samples, with a paired percentile-bootstrap
    interval: every resample applies the same positions to ``a`` and ``b``."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b):
        raise ValueError(f"paired values need the same samples, got {len(a)} and {len(b)}")
    width = int(np.prod(a.shape[1:])) * 2 if a.ndim > 1 else 2
    boots = np.concatenate([np.asarray(stat(b[idx]), dtype=np.float64) - np.asarray(stat(a[idx]), dtype=np.float64)
                            for idx in _blocks(len(a), reps, seed, width)])
    lo, hi = _ci(boots, level)
    return _out(statistic(stat, b) - statistic(stat, a)), _out(lo), _out(hi)


def _out(v: np.ndarray):
    v = np.asarray(v, dtype=np.float64)
    return float(v) if v.ndim == 0 else v
