"""``confidence``: how sure the model is and whether that sureness is calibrated.

Per sample with logits z (K classes), ``p = softmax(z)`` and label y:

- max-prob (confidence) ``c = max_j p_j``; true-class probability ``p_y``;
- entropy ``H = -sum_j p_j log p_j`` in nats (0 for one-hot, ``log K`` for uniform);
- negative log-likelihood ``-log p_y`` (nats), the cross-entropy loss;
- correct: ``argmax_j z_j == y`` (ties -> lowest index, as the ``accuracy`` probe).

Expected calibration error over B equal-width bins of c (bin b holds
``edges[b] <= c < edges[b+1]``, the last bin also holds c = 1):

    ECE = sum_b (n_b / N) |acc_b - conf_b| = (1/N) sum_b |correct_b - sum_{i in b} c_i|

State: per-bin integer counts and exact float sums (:class:`~armetrics.stats.ExactSum`),
fixed histograms; shards merge exactly. Per sample (the report's side file):
``max_prob``, ``true_prob``, ``entropy``, ``nll`` (NaN for a row of non-finite logits)
and ``correct``.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from ..functional import top1_correct
from ..probe import Batch, Probe, ProbeResult, Range, SampleRecorder
from ..registry import register_probe
from ..stats import MAX_BINS, ExactSum, Histogram


def confidence_terms(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample float64 tensors (B,): ``max_prob``, ``true_prob``, ``entropy`` (nats),
    ``nll`` (nats) and bool ``correct``; rows must be finite."""
    z = logits.detach().double()
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    return {
        "max_prob": p.amax(dim=1),
        "true_prob": p.gather(1, y[:, None]).squeeze(1),
        "entropy": -torch.where(p > 0, p * logp, 0.0).sum(dim=1),
        "nll": -logp.gather(1, y[:, None]).squeeze(1),
        "correct": top1_correct(logits, y),
    }


#: the per-sample columns and their meaning and units
SAMPLE_UNITS = {"max_prob": "max_j softmax(z)_j (probability)", "true_prob": "softmax(z)_y (probability)",
                "entropy": "entropy of softmax(z) (nats)", "nll": "-log softmax(z)_y (nats)",
                "correct": "top-1 prediction is the label (bool)"}


def bin_index(conf: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin of each confidence: ``edges[b] <= c < edges[b+1]``, c = edges[-1] in the last bin."""
    idx = torch.searchsorted(edges, conf.contiguous(), right=True) - 1
    return idx.clamp(0, len(edges) - 2)


def expected_calibration_error(counts, correct, conf_sums) -> float:
    """``(1/N) sum_b |correct_b - conf_sum_b|`` from per-bin counts, correct counts and
    confidence sums (sequences of numbers); NaN when N = 0."""
    n = sum(int(c) for c in counts)
    if n == 0:
        return math.nan
    return math.fsum(abs(int(k) - float(s)) for k, s in zip(correct, conf_sums)) / n


@register_probe("confidence")
class Confidence(Probe):
    """Confidence and calibration: accuracy, mean max-prob, true-class prob, entropy, NLL, ECE.

    Summary: ``accuracy``, ``max_prob_mean``, ``true_prob_mean``, ``entropy_mean`` (nats),
    ``nll_mean`` (nats), ``ece``, ``mce`` (largest per-bin gap), ``n``, ``n_nonfinite``.
    Details: ``reliability`` (per bin: lower, upper, count, accuracy, confidence).
    Distributions: histograms of ``max_prob`` on [0, 1] and ``entropy`` on [0, log K].
    """

    headline = ('accuracy', 'max_prob_mean', 'true_prob_mean', 'entropy_mean', 'ece')

    def __init__(
        self,
        *,
        bins: Annotated[int, "equal-width confidence bins of the ECE / reliability diagram", Range(1, MAX_BINS)] = 15,
        hist_bins: Annotated[int, "bins of the max-prob and entropy histograms", Range(1, MAX_BINS)] = 50,
    ):
        super().__init__()
        self.edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
        self.add_state("n", 0, "sum")
        self.add_state("n_nonfinite", 0, "sum")
        self.add_state("n_correct", 0, "sum")
        self.add_state("bin_count", torch.zeros(bins, dtype=torch.long), "sum")
        self.add_state("bin_correct", torch.zeros(bins, dtype=torch.long), "sum")
        self.add_state("bin_conf", [ExactSum() for _ in range(bins)], "merge")
        for key in ("max_prob", "true_prob", "entropy", "nll"):
            self.add_state(f"sum_{key}", ExactSum(), "merge")
        self.add_state("max_prob_hist", Histogram.linear(0.0, 1.0, hist_bins), "merge")
        self.add_state("entropy_hist", None, "merge")  # range [0, log K]: made at the first batch
        self.add_state("per_sample", SampleRecorder(), "merge")

    def update(self, batch: Batch) -> None:
        logits, y = batch.logits, batch.y
        finite = torch.isfinite(logits).all(dim=1)
        self.n += int(y.numel())
        self.n_nonfinite += int((~finite).sum())
        self.n_correct += int(top1_correct(logits, y).sum())  # non-finite rows count as wrong
        t = confidence_terms(logits[finite], y[finite])
        t = {k: v.cpu() for k, v in t.items()}
        if self.keeps_samples:
            self._record(batch, finite.cpu(), t)
        idx = bin_index(t["max_prob"], self.edges)
        self.bin_count += torch.bincount(idx, minlength=self.bins)
        self.bin_correct += torch.bincount(idx[t["correct"]], minlength=self.bins)
        for b in idx.unique().tolist():
            self.bin_conf[b].update(t["max_prob"][idx == b])
        for key in ("max_prob", "true_prob", "entropy", "nll"):
            getattr(self, f"sum_{key}").update(t[key])
        self.max_prob_hist.update(t["max_prob"])
        if self.entropy_hist is None:
            self.entropy_hist = Histogram.linear(0.0, math.log(logits.shape[1]) if logits.shape[1] > 1 else 1.0,
                                                 self.hist_bins)
        self.entropy_hist.update(t["entropy"])

    def _record(self, batch: Batch, finite: torch.Tensor, t: dict[str, torch.Tensor]) -> None:
        """Each sample's terms (NaN, and not correct, where its logits are not finite)."""
        columns = {}
        for key in SAMPLE_UNITS:
            full = torch.zeros(len(finite), dtype=torch.bool) if key == "correct" else \
                torch.full((len(finite),), math.nan, dtype=torch.float64)
            full[finite] = t[key]
            columns[key] = full
        self.per_sample.add(batch.offset + torch.arange(len(finite)), **columns)

    def compute(self) -> ProbeResult:
        valid = self.n - self.n_nonfinite
        mean = (lambda s: s.value / valid) if valid else (lambda s: math.nan)
        conf_sums = [s.value for s in self.bin_conf]
        counts = self.bin_count.tolist()
        correct = self.bin_correct.tolist()
        gaps = [abs(k / c - s / c) for c, k, s in zip(counts, correct, conf_sums) if c]
        summary = {
            "accuracy": self.n_correct / self.n if self.n else math.nan,
            "max_prob_mean": mean(self.sum_max_prob),
            "true_prob_mean": mean(self.sum_true_prob),
            "entropy_mean": mean(self.sum_entropy),
            "nll_mean": mean(self.sum_nll),
            "ece": expected_calibration_error(counts, correct, conf_sums),
            "mce": max(gaps) if gaps else math.nan,
            "n": self.n,
            "n_nonfinite": self.n_nonfinite,
        }
        edges = self.edges.tolist()
        reliability = [{"lower": edges[b], "upper": edges[b + 1], "count": counts[b],
                        "accuracy": correct[b] / counts[b] if counts[b] else None,
                        "confidence": conf_sums[b] / counts[b] if counts[b] else None}
                       for b in range(self.bins)]
        distributions = {"max_prob": self.max_prob_hist.to_dict()}
        if self.entropy_hist is not None:
            distributions["entropy"] = self.entropy_hist.to_dict()
        details = {"reliability": reliability,
                   "units": {"entropy": "nats", "nll": "nats", "max_prob": "probability"},
                   "ece_bins": "equal-width [lower, upper) over max-prob; the last bin also holds 1.0"}
        return ProbeResult(summary=summary, distributions=distributions, details=details,
                           samples=self.per_sample.result(SAMPLE_UNITS))
