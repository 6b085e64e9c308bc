"""Which models of a comparison the paper's claims are judged on, and the judgement.

:func:`judge` picks the reference (standard) model — the one named by ``reference``
(its label, model name or report file name), else the one model with ε = 0 — and
judges :func:`armetrics.claims.evaluate` on it against every other model of the
comparison, in the comparison's order (ε ascending: the last is the most robust).
When the claims were not asked for explicitly (``claims=None``, the default) and no
model has ε = 0, there is nothing to judge and nothing is said; anything else that
stops them (several ε = 0 models, a report without its per-sample side file, reports
of different images) becomes a page note instead of an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import ArmetricsError, ConfigError, one_line


def _names(e: Any) -> set[str]:
    """What a user may call an entry by: its label, model name, report file name and stem."""
    names = {e.label, str(e.report.model.get("name") or "")}
    if not e.origin.startswith("report #"):
        names |= {Path(e.origin).name, Path(e.origin).stem}
    return {n for n in names if n}


def reference_entry(entries: Sequence[Any], reference: str | None) -> Any:
    """The reference entry; ConfigError (one line) when none or several match."""
    labels = ", ".join(e.label for e in entries)
    if reference is not None:
        found = [e for e in entries if reference in _names(e)]
        if len(found) != 1:
            what = "no model" if not found else f"{len(found)} models"
            raise ConfigError(f"--reference {one_line(reference)[:60]!r} names {what} of this comparison "
                              f"({labels}): pass one model's label or report file name")
        return found[0]
    standard = [e for e in entries if e.eps == 0]
    if len(standard) == 1:
        return standard[0]
    if not standard:
        raise ConfigError("no reference model for the claims: no report has ε = 0 (set model.eps, name the file "
                          "…eps0…, or pass --reference NAME)")
    raise ConfigError(f"{len(standard)} models have ε = 0 ({', '.join(e.label for e in standard)}): pass "
                      f"--reference NAME to say which is the reference")


def judge(entries: Sequence[Any], reference: str | None, required: bool, notes: list[str]):
    """The :class:`~armetrics.claims.ClaimsResult` of the comparison, or None (with a
    note in ``notes``) when it cannot be judged and ``required`` is False."""
    from . import claims

    if not required and reference is None and (len(entries) < 2 or not any(e.eps == 0 for e in entries)):
        return None  # no reference to identify: a comparison of robust models only
    try:
        if len(entries) < 2:
            raise ConfigError("the claims compare a reference with robust models: pass at least two reports")
        ref = reference_entry(entries, reference)
        robust = [e for e in entries if e is not ref]
        return claims.evaluate(ref.report, [e.report for e in robust])
    except ArmetricsError as exc:
        if required or reference is not None:
            raise
        notes.append(f"The paper's claims were not judged: {one_line(str(exc))}.")
        return None
