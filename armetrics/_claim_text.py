"""The words of :mod:`armetrics.claims`: each verdict's note and the Markdown table.

Ratios in the notes are robust / reference (``x0.58``: the robust model's value is 58%
of the reference's), medians over the compared layers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ._claim_rules import LayerSpec, Model, ScalarSpec, Verdict
    from .claims import ClaimsResult


def num(v: Any, digits: int = 4) -> str:
    """A number for a note or a table cell (``n/a`` for None/NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}"


def _direction(sign: int) -> str:
    return "lower" if sign < 0 else "higher"


def _over_eps(labels: Sequence[str], values: Sequence[float], mono: bool | None, what: str = "") -> str:
    if mono is None:
        return ""
    pairs = ", ".join(f"{lab} {num(v)}" for lab, v in zip(labels, values))
    return f"; {what}{'monotone' if mono else 'not monotone'} over eps ({pairs})"


def missing_note(probe: str, reports: list[str]) -> str:
    return (f"{', '.join(reports)} lack{'s' if len(reports) == 1 else ''} the {probe} probe's values: "
            f"analyze with --probes including {probe}")


def scalar_note(spec: "ScalarSpec", models: "list[Model]", per_model: list[float], mono: bool | None,
                dropped: int, n: int, source: tuple[str, str]) -> str:
    ref, top = models[0], models[-1]
    text = (f"{ref.label} {num(per_model[0])} -> {top.label} {num(per_model[-1])} on {n} paired images "
            f"(per-sample {source[1]} of {source[0]}; claimed: {_direction(spec.sign)})")
    text += _over_eps([m.label for m in models], per_model, mono)
    if dropped:
        text += f"; {dropped} images with non-finite values left out"
    return text


def layer_note(spec: "LayerSpec", models: "list[Model]", names: list[str], hits: int, by_model: tuple,
               mono: bool | None, no_intervals: bool) -> str:
    ref, top = models[0], models[-1]
    text = (f"{hits} of {len(names)} layers ({hits / len(names):.0%}) {_direction(spec.sign)} for {top.label} "
            f"than for {ref.label}")
    if len(models) > 2:
        text += "; by eps: " + ", ".join(f"{row['label']} {_pct(row.get('fraction'))}" for row in by_model[1:])
    text += _over_eps([row["label"] for row in by_model], [row["value"] for row in by_model], mono,
                      "median over layers ")
    if no_intervals:
        text += (f"; no intervals: the {spec.probe} values of the two reports are of different samples "
                 f"(analyze both with the same --set {spec.probe}.max_samples)")
    return text


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


# --------------------------------------------------------------------------- claim 1
def factor(v: "Verdict | None") -> float | None:
    """Median over the verdict's layers of robust / reference (None without layers)."""
    if v is None or not v.layers:
        return None
    ratios = [r["robust"] / r["reference"] for r in v.layers if r["reference"]]
    return float(np.median(ratios)) if ratios else None


def _fx(v: float | None) -> str:
    return "x n/a" if v is None else f"x{v:.2f}"


def _summary(v: "Verdict") -> str:
    layers = f" ({sum(r['claimed'] for r in v.layers)}/{len(v.layers)} layers)" if v.layers else ""
    return f"{v.claim} {v.verdict}{layers}"


def claim1_note(subs: "list[Verdict]") -> str:
    """The sub-verdicts on the paper's statistics, then the checks, then why they differ."""
    by_id = {v.claim: v for v in subs}
    text = ("paper's statistics: " + ", ".join(_summary(v) for v in subs if not v.check)
            + "; scale-free checks: " + ", ".join(_summary(v) for v in subs if v.check))
    why = [w[:1].upper() + w[1:] for w in (_spectrum_why(by_id), _anisotropy_why(by_id), _rel_why(by_id)) if w]
    return text + (". Why they differ: " + " ".join(why) if why else "")


def _differ(a: "Verdict | None", b: "Verdict | None") -> bool:
    return a is not None and b is not None and "inconclusive" not in (a.verdict, b.verdict) and a.verdict != b.verdict


def _spectrum_why(v: dict) -> str:
    std, cv = v.get("1.sigma_std"), v.get("1.cv")
    if not _differ(std, cv):
        return ""
    f_std, f_cv = factor(std), factor(cv)
    f_mean = _mean_factor(std, cv)
    return (f"the singular values scale rather than change shape: robust / reference, median over layers, the mean "
            f"singular value is {_fx(f_mean)} and their std {_fx(f_std)}, but CV = std/mean {_fx(f_cv)}; a spectrum "
            f"that shrinks uniformly has a lower std and the same CV, so std (the paper's statistic) and CV (shape) "
            f"disagree.")


def _mean_factor(std: "Verdict", cv: "Verdict") -> float | None:
    """Median over layers of robust / reference for the mean singular value (= std / CV)."""
    cvs = {r["name"]: r for r in cv.layers}
    ratios = [(r["robust"] / cvs[r["name"]]["robust"]) / (r["reference"] / cvs[r["name"]]["reference"])
              for r in std.layers if r["name"] in cvs and r["reference"] and cvs[r["name"]]["robust"]
              and cvs[r["name"]]["reference"]]
    return float(np.median(ratios)) if ratios else None


def _anisotropy_why(v: dict) -> str:
    worst, rand, aniso = v.get("1.ratio_worst"), v.get("1.ratio_random"), v.get("1.anisotropy")
    if not (_differ(worst, aniso) or _differ(rand, aniso)):
        return ""
    f = factor(aniso)
    shape = "not more" if f is None or round(f, 2) == 1 else "more" if f < 1 else "less"
    return (f"features change less per unit input change in every direction (scale: random direction "
            f"{_fx(factor(rand))}, worst direction {_fx(factor(worst))}), but anisotropy = worst / random is "
            f"{_fx(f)}: {shape} uniform across directions (shape).")


def _rel_why(v: dict) -> str:
    pairs = [(v.get(a), v.get(b)) for a, b in (("1.ratio_worst", "1.rel_ratio_worst"),
                                                ("1.ratio_random", "1.rel_ratio_random"))]
    if not any(_differ(a, b) for a, b in pairs):
        return ""
    return (f"the rel_ ratios divide by the feature scale ||h(x)||/||x|| and are {_fx(factor(pairs[0][1]))} "
            f"(worst) and {_fx(factor(pairs[1][1]))} (random), against {_fx(factor(pairs[0][0]))} and "
            f"{_fx(factor(pairs[1][0]))} for the ratios themselves: part of the smaller ratios is the robust "
            f"model's smaller features.")


# --------------------------------------------------------------------------- markdown
def cell(text: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def diff_cell(v: "Verdict") -> str:
    if v.diff is None:
        return "–"
    ci = f" [{num(v.ci_low)}, {num(v.ci_high)}]" if v.ci_low is not None else ""
    return f"{v.diff:+.4g}{ci}"


def verdict_cell(v: "Verdict") -> str:
    layers = f" ({sum(r['claimed'] for r in v.layers)}/{len(v.layers)} layers)" if v.layers else ""
    return f"**{v.verdict}**{layers}" if not v.check else f"{v.verdict}{layers}"


def markdown(result: "ClaimsResult", notes: bool = True) -> str:
    lines = ["| claim | statistic | reference | robust | difference [95% CI] | verdict |", "|---|---|---|---|---|---|"]
    for v in result.verdicts:
        name = f"{v.claim} {v.title}" if "." not in v.claim else (f"{v.claim} (check)" if v.check else v.claim)
        lines.append("| " + " | ".join(cell(c) for c in (name, v.statistic, num(v.reference), num(v.robust),
                                                            diff_cell(v), verdict_cell(v))) + " |")
    if notes:
        lines += [""] + [f"- **{v.claim}**: {cell(v.note)}" for v in result.verdicts if v.note]
        lines += [f"- {cell(n)}" for n in result.notes]
    return "\n".join(lines) + "\n"
