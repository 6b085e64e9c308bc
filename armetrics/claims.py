"""The paper's four claims, judged on your reports: ``evaluate(reference, robust)``.

Wen, Li & Jia (ICML 2020) claim that adversarial robustness (AR) regularizes a
network: (1) most layers change features smoothly and uniformly in all directions
(smaller feature-change ratios, lower anisotropy, more concentrated singular values),
(2) samples end up close to the decision boundary, (3) predictions are less confident,
(4) standard accuracy falls as eps grows. :func:`evaluate` compares a reference
(standard, eps = 0) report with robust ones (ordered by eps; the last is the most
robust) under rules fixed before looking at any result (docs/claims.md):

- a **scalar** claim compares the reference with the most robust model on the same
  images: *reproduced* if the difference has the claimed sign and its paired-bootstrap
  95% interval excludes 0, *not reproduced* if the interval excludes 0 with the other
  sign, else *inconclusive* (:func:`scalar_verdict`);
- a **layer** claim counts the layers where the most robust model differs from the
  reference in the claimed direction: *reproduced* if >= 75% of the layers, *partly*
  if > 25%, else *not reproduced* (:func:`layer_verdict`); *inconclusive* when no layer
  can be compared;
- claim 1 is judged first on the paper's own statistics (per-layer std of the singular
  values, sigma_max, worst- and random-direction feature-change ratios) and then on
  scale-free variants (CV, anisotropy, ``rel_`` ratios), labelled ``check=True``, each
  with its own verdict; monotonicity over eps is reported beside every verdict.

Per-sample values come from each report's ``.samples.npz`` side file
(:mod:`armetrics.samples`); reports of different images, seeds or samples are refused
(:class:`~armetrics.errors.PairingError`), as is a report without its side file
(:class:`~armetrics.errors.SamplesError`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import samples as side
from ._claim_rules import (LAYER_CLAIMS, SCALAR_CLAIMS, Model, Verdict, claim1_verdict, layer_claim,  # noqa: F401
                           layer_verdict, per_model_stats, scalar_claim, scalar_verdict, VERDICTS)
from .errors import ConfigError
from .report import Report

SCHEMA = "armetrics.claims/1"
__all__ = ["evaluate", "ClaimsResult", "Verdict", "scalar_verdict", "layer_verdict", "VERDICTS"]


@dataclass(frozen=True)
class ClaimsResult:
    """Every claim's :class:`Verdict` (``verdicts``, in claim order: 1, its sub-claims
    and checks, 2, 3, 4 with theirs), the models compared (``models``: label, name, eps
    and per-model statistics with 95% intervals), the bootstrap's ``reps`` and ``seed``."""

    verdicts: list[Verdict]
    models: list[dict[str, Any]]
    reps: int
    seed: int
    notes: list[str] = field(default_factory=list)

    def claim(self, claim_id: str) -> Verdict:
        """The verdict of ``claim_id`` ("1", "1.sigma_std", "2", ...)."""
        for v in self.verdicts:
            if v.claim == claim_id:
                return v
        raise ConfigError(f"no claim {claim_id!r}: the claims are {', '.join(v.claim for v in self.verdicts)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (schema ``armetrics.claims/1``; non-finite numbers as None)."""
        from .report import to_jsonable

        return to_jsonable({"schema": SCHEMA, "reps": self.reps, "seed": self.seed, "models": self.models,
                            "verdicts": [dataclasses.asdict(v) for v in self.verdicts], "notes": self.notes})

    def markdown(self, notes: bool = True) -> str:
        """The verdict table in Markdown (claim, statistic, reference, robust, difference
        with its 95% interval, verdict), the notes below it unless ``notes=False``."""
        from ._claim_text import markdown

        return markdown(self, notes)


def evaluate(reference: "Report | str | Path", robust: "Report | str | Path | Sequence[Report | str | Path]", *,
             reps: int = 1000, seed: int = 0) -> ClaimsResult:
    """Judge the paper's claims on ``reference`` (the standard model's report, eps = 0)
    against ``robust`` (one report, or several ordered by eps: the last is the most
    robust). Reports are :class:`Report` objects or paths of saved reports; each needs
    its ``.samples.npz`` side file and all must be of the same images and seeds.
    ``reps``: bootstrap resamples; ``seed``: the bootstrap's seed (every statistic uses
    the same resamples)."""
    reps, seed = _check_bootstrap(reps, seed)
    rob = [robust] if isinstance(robust, (Report, str, Path)) else list(robust)
    if not rob:
        raise ConfigError("evaluate needs at least one robust report: pass the adversarially trained model's report")
    models = [_model(r, i == 0) for i, r in enumerate([reference, *rob])]
    for other in models[1:]:
        side.check_paired(models[0].report, models[0].samples, other.report, other.samples)
    boot = {"reps": reps, "seed": seed}
    verdicts = [layer_claim(spec, models, **boot) for spec in LAYER_CLAIMS]
    verdicts.insert(0, claim1_verdict(verdicts))
    for spec in SCALAR_CLAIMS:
        verdicts.append(scalar_claim(spec, models, **boot))
    return ClaimsResult(verdicts=verdicts, models=per_model_stats(models, **boot), reps=reps, seed=seed,
                        notes=_notes(models))


def _model(r: "Report | str | Path", is_reference: bool) -> Model:
    if isinstance(r, (str, Path)):
        r = Report.load(r)
    elif not isinstance(r, Report):
        raise ConfigError(f"evaluate takes Reports or report paths, got {type(r).__name__}: "
                          f"pass armetrics.Report.load('r.json') or the path")
    return Model.of(r, side.load(r), is_reference)


def _check_bootstrap(reps: Any, seed: Any) -> tuple[int, int]:
    from . import checks

    reps = checks.integer(reps, "reps", minimum=1)
    if reps > 1_000_000:
        raise ConfigError(f"reps={reps} is more than the 1,000,000 bootstrap resamples evaluate draws: use e.g. reps=1000")
    return reps, checks.seed(seed, "seed", allow_none=False)


def _notes(models: list[Model]) -> list[str]:
    ref, top = models[0], models[-1]
    data = ref.report.data.get("data") or {}
    return [f"reference {ref.label}, most robust {top.label}; {len(models)} models on {ref.samples.n} images of "
            f"{Path(str(data.get('source'))).name} (seed {data.get('seed')})",
            "intervals: paired percentile bootstrap over the test images (the same resamples for every statistic); "
            "they cover the sampling of test images, not training randomness"]

