"""Mergeable streaming statistics: fixed-edge histograms and a quantile sketch.

Both keep bounded state whatever the number of samples and merge *exactly*
(integer counts add), so a data-parallel run equals a single run.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64).ravel()


class ExactSum:
    """A float sum that does not depend on the order of the additions.

    Every finite float64 is an integer multiple of 2**-1074, so the running sum is kept
    exactly as a Python integer in units of 2**-SHIFT (vectorised: values are split
    with ``frexp`` and summed per exponent). ``value`` is the correctly rounded sum of
    everything added, so two shards merged give bit-for-bit the value of one pass.
    Non-finite values (inf, NaN) are summed separately with float arithmetic.
    """

    SHIFT = 1127  # 1074 (smallest subnormal exponent) + 53 (mantissa bits)
    CHUNK = 512  # int64 partial sums of 53-bit mantissas cannot overflow

    def __init__(self) -> None:
        self.num = 0  # the exact sum times 2**SHIFT
        self.special = 0.0  # sum of non-finite values

    def update(self, values) -> None:
        v = _as_numpy(values)
        finite = np.isfinite(v)
        if not finite.all():
            self.special += float(v[~finite].sum())
            v = v[finite]
        if v.size == 0:
            return
        mant, exp = np.frexp(v)
        mi = (mant * 2.0**53).astype(np.int64)  # exact: v = mi * 2**(exp - 53)
        order = np.argsort(exp, kind="stable")
        exp, mi = exp[order], mi[order]
        keys, starts = np.unique(exp, return_index=True)
        bounds = list(starts[1:]) + [len(exp)]
        total = 0
        for e, lo, hi in zip(keys.tolist(), starts.tolist(), bounds):
            group = 0
            for k in range(lo, hi, self.CHUNK):
                group += int(mi[k:min(k + self.CHUNK, hi)].sum())
            total += group << (e - 53 + self.SHIFT)
        self.num += total

    def merge(self, other: "ExactSum") -> None:
        self.num += other.num
        self.special += other.special

    @property
    def value(self) -> float:
        try:
            exact = self.num / (1 << self.SHIFT)  # int / int: correctly rounded
        except OverflowError:
            exact = math.inf if self.num > 0 else -math.inf
        return exact + self.special if self.special else exact

    def __float__(self) -> float:
        return self.value


#: most bins a probe option may ask for: finer is a typo, and bins are allocated up front
MAX_BINS = 100_000


class Histogram:
    """Counts of values in fixed bins ``edges[i] <= v < edges[i+1]`` (last bin closed).

    Values below ``edges[0]`` / above ``edges[-1]`` are counted in ``underflow`` /
    ``overflow``; NaNs in ``nan``. Merge adds counts.
    """

    def __init__(self, edges: Sequence[float]):
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or len(self.edges) < 2 or np.any(np.diff(self.edges) <= 0):
            raise ValueError("histogram edges must be increasing, at least two")
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.underflow = 0
        self.overflow = 0
        self.nan = 0

    @classmethod
    def linear(cls, lo: float, hi: float, bins: int) -> "Histogram":
        return cls(np.linspace(lo, hi, bins + 1))

    def update(self, values) -> None:
        v = _as_numpy(values)
        nan = np.isnan(v)
        self.nan += int(nan.sum())
        v = v[~nan]
        self.underflow += int((v < self.edges[0]).sum())
        self.overflow += int((v > self.edges[-1]).sum())
        inside = v[(v >= self.edges[0]) & (v <= self.edges[-1])]
        idx = np.searchsorted(self.edges, inside, side="right") - 1
        idx = np.minimum(idx, len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    def merge(self, other: "Histogram") -> None:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge histograms with different edges")
        self.counts += other.counts
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.nan += other.nan

    def to_dict(self) -> dict:
        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "underflow": self.underflow,
            "overflow": self.overflow,
        }


class QuantileSketch:
    """Streaming quantiles with relative error ``alpha`` (a DDSketch, Masson et al. 2019).

    A value v with |v| >= ``min_value`` goes to the logarithmic bucket
    ``ceil(log_gamma |v|)`` of its sign, gamma = (1+alpha)/(1-alpha); smaller |v| count
    as zero. Any quantile returned is within relative error ``alpha`` of a value of
    the data at that rank (and exact min/max are kept). State grows with the
    log-range of the data, not with the count; merge adds bucket counts and is exact.
    """

    def __init__(self, alpha: float = 0.005, min_value: float = 1e-12):
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self.gamma)
        self.min_value = min_value
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zero = 0
        self.count = 0
        self.sum = ExactSum()
        self.min = math.inf
        self.max = -math.inf

    def update(self, values) -> None:
        v = _as_numpy(values)
        v = v[~np.isnan(v)]
        if v.size == 0:
            return
        self.count += int(v.size)
        self.sum.update(v)
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        small = np.abs(v) < self.min_value
        self.zero += int(small.sum())
        for store, part in ((self.pos, v[(v > 0) & ~small]), (self.neg, -v[(v < 0) & ~small])):
            if part.size:
                keys, counts = np.unique(np.ceil(np.log(part) / self._log_gamma).astype(np.int64), return_counts=True)
                for k, c in zip(keys.tolist(), counts.tolist()):
                    store[k] = store.get(k, 0) + c

    def merge(self, other: "QuantileSketch") -> None:
        if other.alpha != self.alpha or other.min_value != self.min_value:
            raise ValueError("cannot merge quantile sketches with different accuracy")
        for mine, theirs in ((self.pos, other.pos), (self.neg, other.neg)):
            for k, c in theirs.items():
                mine[k] = mine.get(k, 0) + c
        self.zero += other.zero
        self.count += other.count
        self.sum.merge(other.sum)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def _value(self, key: int) -> float:
        return 2.0 * self.gamma**key / (self.gamma + 1.0)

    def quantile(self, q: float) -> float:
        """The q-quantile (0 <= q <= 1), NaN when empty. Uses the lower rank
        ``floor(q * (count - 1))`` as numpy's ``method="lower"``."""
        if self.count == 0:
            return math.nan
        if q <= 0:
            return self.min
        if q >= 1:
            return self.max
        rank = math.floor(q * (self.count - 1))
        seen = 0
        for key in sorted(self.neg, reverse=True):  # most negative first
            seen += self.neg[key]
            if seen > rank:
                return max(-self._value(key), self.min)
        seen += self.zero
        if seen > rank:
            return 0.0
        for key in sorted(self.pos):
            seen += self.pos[key]
            if seen > rank:
                return min(self._value(key), self.max)
        return self.max

    @property
    def mean(self) -> float:
        return self.sum.value / self.count if self.count else math.nan
