"""``audit(report, policy)``: check a report against a policy of thresholds and claims.

A policy (a TOML file, or the same structure as a dict) holds

- ``[thresholds]``: conditions on summary keys, ``"<probe>.<key>" = "<op> <number>"``
  (``"confidence.ece" = "<= 0.05"``), a list of such strings for several conditions on
  one key (a range), or the same keys as TOML sub-tables (``[thresholds.confidence]``
  then ``ece = "<= 0.05"``);
- ``[claims]``: the claims of Wen, Li & Jia (2020) the model must show against a
  reference (standard) report, evaluated by :func:`armetrics.claims.evaluate`:
  ``reference = "standard.json"`` (relative to the policy file), ``require = ["2", "3"]``
  (each must be "reproduced") or ``require = {"1" = ["reproduced", "partly"]}``, and
  optionally ``reps`` / ``seed`` of the bootstrap.

Every problem with the policy or with what it asks of the report (an unknown probe or
key, an operator such as ``=>``, a NaN threshold, a file that is not UTF-8 TOML) raises
:class:`PolicyError` with one line naming it and the fix. A check whose value is null in
the report (not finite) *fails*; that is a result, not an error.

The result (:class:`AuditResult`) has ``passed``, ``checks``, :meth:`~AuditResult.table`
(the CLI's pass/fail table), :meth:`~AuditResult.to_dict` and
:meth:`~AuditResult.markdown` (a model-card section).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import operator
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import ConfigError, one_line, shorten
from .report import Report, shown_path as _shown_path, to_jsonable
from .safeio import read_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: policy files larger than this are refused (real ones are a few hundred bytes)
MAX_POLICY_BYTES = 1 << 20
#: deepest nesting of tables/arrays a policy may have (real ones: 3)
MAX_POLICY_DEPTH = 8
#: the longest key, claim id or threshold string accepted
MAX_TEXT = 200
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
#: operators people write by mistake, and the one they meant
_MISTAKES = {"=>": ">=", "=<": "<=", "=": "==", "===": "==", "<>": "!=", "=!": "!=", "≥": ">=", "≤": "<=", "≠": "!=",
             ">>": ">", "<<": "<"}
VERDICTS = ("reproduced", "partly", "not reproduced", "inconclusive")
SECTIONS = ("name", "thresholds", "claims")
CLAIM_FIELDS = ("reference", "require", "reps", "seed")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CONDITION = re.compile(r"\s*(?P<op>[<>=!≥≤≠]*)\s*(?P<num>.*?)\s*")
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_.-]*)+")
_CLAIM_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
#: summary keys that are the fraction of the data's samples with some property: their
#: card entry gets a Wilson 95% interval from the probe's ``n`` (when the probe gives none)
PROPORTIONS = {"accuracy.accuracy", "confidence.accuracy", "margin.frac_negative", "margin.frac_zero",
               "robust_accuracy.accuracy"}
DOCS = "docs/audit.md"


class PolicyError(ConfigError):
    """The policy is malformed, or asks for something the report does not have."""


# --------------------------------------------------------------------------- the policy
@dataclass(frozen=True)
class Threshold:
    """One condition ``<key> <op> <value>`` on a summary key ``<probe>.<name>``."""

    key: str
    op: str
    value: float
    text: str  # as written in the policy, e.g. ">= 0.45"

    @property
    def probe(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.value)


@dataclass(frozen=True)
class ClaimRequirement:
    """Claim ``claim`` must get one of the verdicts ``accept``."""

    claim: str
    accept: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    thresholds: tuple[Threshold, ...] = ()
    claims: tuple[ClaimRequirement, ...] = ()
    reference: Path | None = None
    reps: int = 1000
    seed: int = 0
    name: str | None = None
    source: str | None = None  # the policy file, when read from one

    @property
    def probes(self) -> list[str]:
        """The probes the thresholds read, in the order they first appear."""
        return list(dict.fromkeys(t.probe for t in self.thresholds))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"thresholds": {}}
        for t in self.thresholds:
            out["thresholds"].setdefault(t.key, []).append(t.text)
        if self.name is not None:
            out["name"] = self.name
        if self.claims:
            out["claims"] = {"reference": None if self.reference is None else str(self.reference),
                             "require": {c.claim: list(c.accept) for c in self.claims},
                             "reps": self.reps, "seed": self.seed}
        return out


def load_policy(policy: "Policy | Mapping[str, Any] | str | os.PathLike") -> Policy:
    """A :class:`Policy` from a TOML file, a dict of the same shape, or a Policy.
    Relative ``claims.reference`` paths are relative to the policy file (a dict: to the
    working directory). Raises :class:`PolicyError`."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Mapping):
        return parse_policy(policy)
    if not isinstance(policy, (str, os.PathLike)):
        raise PolicyError(f"a policy is a TOML file path or a dict, got {type(policy).__name__}: "
                          f"e.g. audit(report, 'policy.toml'); see {DOCS}")
    path = Path(policy)
    shown = one_line(str(path))
    try:
        raw = read_bytes(path, "policy", PolicyError, limit=MAX_POLICY_BYTES)
    except ValueError as exc:  # a NUL byte in the name
        raise PolicyError(f"cannot read policy {shown} ({exc}): check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy {shown} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                          f"save it as UTF-8 TOML") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {shown} is not valid TOML ({shorten(one_line(str(exc)), 160)}): fix the file; "
                          f"see {DOCS}") from None
    except (RecursionError, MemoryError):
        raise PolicyError(f"policy {shown} is nested too deeply for TOML to read: a policy has two levels "
                          f"([thresholds], [claims]); see {DOCS}") from None
    return parse_policy(doc, source=str(path), base=path.parent)


def parse_policy(doc: Mapping[str, Any], *, source: str | None = None, base: Path | None = None) -> Policy:
    """Validate a policy document (the parsed TOML) into a :class:`Policy`."""
    where = f"policy {one_line(source)}" if source else "policy"
    _check_depth(doc, where, 0)
    for key in doc:
        if not isinstance(key, str):
            raise PolicyError(f"{where}: key {_show(key)} is not a string: the sections are {', '.join(SECTIONS)}")
        if key not in SECTIONS:
            raise PolicyError(f"{where}: unknown section {_show(key)}{_did_you_mean(key, SECTIONS)}: a policy has "
                              f"[thresholds] and/or [claims] (and an optional name); see {DOCS}")
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_TEXT):
        raise PolicyError(f"{where}: name must be a string of at most {MAX_TEXT} characters")
    thresholds = _thresholds(doc.get("thresholds", {}), where)
    claims, reference, reps, seed = _claims(doc.get("claims"), where, base)
    if not thresholds and not claims:
        raise PolicyError(f"{where} has no checks: add e.g. [thresholds] with \"confidence.ece\" = \"<= 0.05\", "
                          f"or [claims]; see {DOCS}")
    return Policy(tuple(thresholds), tuple(claims), reference, reps, seed, name, source)


def _check_depth(obj: Any, where: str, depth: int) -> None:
    if depth > MAX_POLICY_DEPTH:
        raise PolicyError(f"{where} is nested more than {MAX_POLICY_DEPTH} levels deep: a policy has two levels "
                          f"([thresholds], [claims]); see {DOCS}")
    if isinstance(obj, Mapping):
        for v in obj.values():
            if isinstance(v, (Mapping, list, tuple)):
                _check_depth(v, where, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            if isinstance(v, (Mapping, list, tuple)):
                _check_depth(v, where, depth + 1)


def _show(value: Any) -> str:
    """A value as shown in an error: its repr, one line, at most 60 characters."""
    return shorten(one_line(repr(value)), 60)


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(table: Mapping, prefix: str, where: str, section: str, allow_int: bool = False) -> list[tuple[str, Any]]:
    """``{"a": {"b": v}}`` -> ``[("a.b", v)]``: TOML dotted keys and sub-tables name the
    same thing as a quoted ``"a.b"`` key."""
    out = []
    for key, value in table.items():
        if isinstance(key, bool) or not isinstance(key, (str, int) if allow_int else str):
            raise PolicyError(f"{where}: key {_show(key)} in [{section}] is not a string: write keys as "
                              f"\"{'<claim>' if allow_int else '<probe>.<key>'}\"; see {DOCS}")
        key = str(key)
        if not key or len(key) > MAX_TEXT or not key.isprintable():
            raise PolicyError(f"{where}: key {_show(key)} in [{section}] is empty, too long or has control "
                              f"characters: write keys as \"{'<claim>' if allow_int else '<probe>.<key>'}\"")
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            out += _flatten(value, full, where, section, allow_int)
        else:
            out.append((full, value))
    return out


def _thresholds(table: Any, where: str) -> list[Threshold]:
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where}: thresholds must be a table ([thresholds]), got {type(table).__name__}; see {DOCS}")
    out = []
    for key, value in _flatten(table, "", where, "thresholds"):
        if not _KEY.fullmatch(key):
            raise PolicyError(f"{where}: threshold key {_show(key)} is not \"<probe>.<summary key>\": write e.g. "
                              f"\"confidence.ece\" = \"<= 0.05\"")
        texts = value if isinstance(value, list) else [value]
        if not texts:
            raise PolicyError(f"{where}: threshold {key} is an empty list: give conditions such as \">= 0.4\"")
        for text in texts:
            out.append(parse_condition(key, text, where))
    return out


def parse_condition(key: str, text: Any, where: str = "policy") -> Threshold:
    """``parse_condition("confidence.ece", "<= 0.05")`` -> a :class:`Threshold`. The
    number is a decimal (``0.45``, ``1e-3``) or a fraction (``8/255``), and finite."""
    example = f"\"{key}\" = \">= 0.45\""
    if isinstance(text, bool) or not isinstance(text, str):
        kind = "a number" if isinstance(text, (int, float)) and not isinstance(text, bool) else type(text).__name__
        raise PolicyError(f"{where}: threshold {key} is {kind} ({_show(text)}), not a condition: write it as a string "
                          f"with an operator, e.g. {example}")
    shown = _show(text)
    if len(text) > MAX_TEXT:
        raise PolicyError(f"{where}: threshold {key} = {shown} is longer than {MAX_TEXT} characters: write e.g. {example}")
    m = _CONDITION.fullmatch(text)
    op, num = (m.group("op"), m.group("num")) if m else ("", text)
    if not op:
        raise PolicyError(f"{where}: threshold {key} = {shown} has no operator: write e.g. {example} "
                          f"(operators: {', '.join(OPERATORS)})")
    if op not in OPERATORS:
        hint = f"use {_MISTAKES[op]}" if op in _MISTAKES else f"use one of {', '.join(OPERATORS)}"
        raise PolicyError(f"{where}: threshold {key} = {shown}: unknown operator {op!r}: {hint} "
                          f"(operators: {', '.join(OPERATORS)})")
    value = _number(num)
    if value is None and num.strip().lstrip("+-").lower() in ("nan", "inf", "infinity"):
        value = math.nan
    if value is None:
        raise PolicyError(f"{where}: threshold {key} = {shown}: {_show(num)} is not a number: write a decimal "
                          f"(0.45, 1e-3) or a fraction (8/255) after the operator")
    if not math.isfinite(value):
        raise PolicyError(f"{where}: threshold {key} = {shown} is not a finite number: a threshold must be finite "
                          f"(a value that must be finite fails any check when it is not)")
    return Threshold(key, op, value, f"{op} {num}")


def _number(text: str) -> float | None:
    parts = text.split("/")
    if len(parts) > 2 or not all(_NUMBER.fullmatch(p.strip()) for p in parts):
        return None
    try:
        values = [float(p) for p in parts]
    except (ValueError, OverflowError):  # pragma: no cover - the pattern admits only floats
        return None
    if len(values) == 2:
        if values[1] == 0 or not all(map(math.isfinite, values)):
            return math.inf
        return values[0] / values[1]
    return values[0]


def _claims(table: Any, where: str, base: Path | None) -> tuple[list[ClaimRequirement], Path | None, int, int]:
    if table is None:
        return [], None, 1000, 0
    if not isinstance(table, Mapping):
        raise PolicyError(f"{where}: claims must be a table ([claims]), got {type(table).__name__}; see {DOCS}")
    for key in table:
        if key not in CLAIM_FIELDS:
            raise PolicyError(f"{where}: unknown field {_show(key)} in [claims]"
                              f"{_did_you_mean(str(key), CLAIM_FIELDS)}: its fields are {', '.join(CLAIM_FIELDS)}")
    reference = table.get("reference")
    if reference is not None:
        if not isinstance(reference, str) or not reference or len(reference) > 4096 or "\x00" in reference:
            raise PolicyError(f"{where}: claims.reference must be the path of a report, e.g. reference = \"standard.json\"")
        reference = Path(reference)
        if not reference.is_absolute() and base is not None:
            reference = base / reference
    reps = _int_field(table, "reps", 1000, 1, 10**6, where)
    seed = _int_field(table, "seed", 0, 0, 2**63 - 1, where)
    require = table.get("require")
    if require is None:
        raise PolicyError(f"{where}: [claims] has no require: list the claims that must hold, e.g. require = [\"2\", \"3\"]")
    if isinstance(require, (list, tuple)):
        items = [(c, "reproduced") for c in require]
    elif isinstance(require, Mapping):
        items = _flatten(require, "", where, "claims.require", allow_int=True)
    else:
        raise PolicyError(f"{where}: claims.require must be a list of claims (require = [\"2\", \"3\"]) or a table "
                          f"of claim = verdict(s), got {type(require).__name__}")
    if not items:
        raise PolicyError(f"{where}: claims.require is empty: list the claims that must hold, e.g. require = [\"2\", \"3\"]")
    out = []
    for claim, accept in items:
        if isinstance(claim, bool) or not isinstance(claim, (str, int)) or not _CLAIM_ID.fullmatch(str(claim)):
            raise PolicyError(f"{where}: claim {_show(claim)} in claims.require is not a claim id such as \"2\" or \"1.cv\"")
        verdicts = accept if isinstance(accept, (list, tuple)) else [accept]
        if not verdicts or not all(isinstance(v, str) and v in VERDICTS for v in verdicts):
            bad = next((v for v in verdicts if not (isinstance(v, str) and v in VERDICTS)), None)
            raise PolicyError(f"{where}: claim {claim} requires {_show(bad if verdicts else accept)}, not a verdict: "
                              f"the verdicts are {', '.join(repr(v) for v in VERDICTS)}")
        out.append(ClaimRequirement(str(claim), tuple(dict.fromkeys(verdicts))))
    ids = [c.claim for c in out]
    dup = next((c for c in ids if ids.count(c) > 1), None)
    if dup is not None:
        raise PolicyError(f"{where}: claim {dup} is required twice: name each claim once")
    return out, reference, reps, seed


def _int_field(table: Mapping, key: str, default: int, low: int, high: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PolicyError(f"{where}: claims.{key} must be an integer in {low}..{high}, got {_show(value)}")
    return value


# --------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class Check:
    """One row of an audit: a threshold on a summary key, or a required claim."""

    check: str  # "confidence.ece" or "claim 2"
    kind: str  # "threshold" or "claim"
    value: float | str | None  # the report's value (None: null / not finite), or the claim's verdict
    threshold: str  # "<= 0.05", or the accepted verdicts ("reproduced or partly")
    passed: bool
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # a claim's verdict fields; a value's interval

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AuditResult:
    """What :func:`audit` found. ``passed``: every check passed."""

    checks: list[Check]
    policy: Policy
    report: Report
    report_path: str | None = None
    claims: Any = None  # the armetrics.claims result, when the policy requires claims

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        m, d = self.report.model, self.report.data.get("data") or {}
        out = {"passed": self.passed, "policy": self.policy.source, "report": self.report_path,
               "model": {k: m.get(k) for k in ("name", "source", "sha256", "arch", "num_parameters")},
               "data": {k: d.get(k) for k in ("source", "n", "seed")} if d else None,
               "checks": [c.to_dict() for c in self.checks]}
        if self.claims is not None:
            out["reference"] = None if self.policy.reference is None else str(self.policy.reference)
        return to_jsonable(out)  # a claim's NaN interval is null: strict JSON

    def table(self) -> str:
        """The pass/fail table the CLI prints: check, value, threshold, result."""
        rows = [("check", "value", "threshold", "result")]
        for c in self.checks:
            result = "pass" if c.passed else "FAIL"
            rows.append((c.check, _plain(c.value), c.threshold, f"{result}  {c.note}" if c.note else result))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(f"{cell:<{w}}" for cell, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
        n, bad = len(self.checks), self.failed
        if bad:
            lines.append(f"FAIL: {len(bad)} of {n} checks failed ({', '.join(c.check for c in bad)})")
        else:
            lines.append(f"PASS: all {n} checks passed")
        return "\n".join(line.rstrip() for line in lines)

    def markdown(self, *, figures: "str | os.PathLike | None" = None, card_dir: "str | os.PathLike | None" = None,
                 heading_level: int = 2) -> str:
        """A model-card section in Markdown: the model and data, every check with its value
        in units (percent for fractions of the data) and its 95% interval where the report
        has one (or where one follows from the sample count), the claims' verdicts, and
        links to the figures of an ``armetrics compare`` output directory ``figures``
        (relative to ``card_dir``, the directory the card is written to)."""
        return _card(self, figures, card_dir, heading_level)


def audit(report: "Report | str | os.PathLike", policy: "Policy | Mapping[str, Any] | str | os.PathLike", *,
          reference: "Report | str | os.PathLike | None" = None) -> AuditResult:
    """Check ``report`` (a :class:`Report` or the path of one) against ``policy`` (a TOML
    file path, a dict of the same shape, or a :class:`Policy`). ``reference`` overrides the
    policy's ``claims.reference`` (a report or a path). Raises :class:`PolicyError` when
    the policy is malformed or names a probe or key the report does not have; a key whose
    value is null (not finite) fails its check."""
    pol = load_policy(policy)
    path: str | None = None
    if isinstance(report, Report):
        rep = report
    elif isinstance(report, (str, os.PathLike)):
        path = os.fspath(report)
        rep = Report.load(path)
    else:
        raise PolicyError(f"audit needs a Report or the path of a report .json, got {type(report).__name__}: "
                          f"e.g. audit('r.json', 'policy.toml')")
    shown = f"report {one_line(path)}" if path else "the report"
    checks = [_threshold_check(rep, t, shown) for t in pol.thresholds]
    claims = None
    check_reference(pol, reference)
    if pol.claims:
        claims, rows = _claim_checks(rep if path is None else path, pol, reference)
        checks += rows
        if reference is not None and not isinstance(reference, Report):
            pol = dataclasses.replace(pol, reference=Path(reference))
    return AuditResult(checks, pol, rep, path, claims)


def check_reference(pol: Policy, reference: Any) -> None:
    """A reference report goes with a policy that requires claims."""
    if reference is not None and not pol.claims:
        raise PolicyError("a reference report was given but the policy requires no claims: add [claims] with "
                          "require = [\"2\", \"3\"] to the policy, or drop the reference")


def _threshold_check(rep: Report, t: Threshold, shown: str) -> Check:
    if t.probe not in rep.probes:
        raise PolicyError(f"{shown} has no probe {t.probe!r} (threshold {t.key}): it has "
                          f"{', '.join(rep.probes) or 'none'}: audit the model instead (armetrics audit MODEL runs the "
                          f"probes the policy needs), or rerun armetrics analyze with --probes ...,{t.probe}")
    summary = rep.summary(t.probe)
    if t.name not in summary:
        keys = ", ".join(sorted(summary))
        raise PolicyError(shorten(f"{shown} has no summary key {t.key}{_did_you_mean(t.name, list(summary))}: "
                                  f"{t.probe} has {keys}", 900))
    value = summary[t.name]
    detail = _interval(rep, t.probe, t.name)
    if value is None or isinstance(value, bool) or not math.isfinite(value):
        return Check(t.key, "threshold", None, t.text, False,
                     "no value: null (not finite) in the report", detail)
    return Check(t.key, "threshold", value, t.text, t.holds(value), "", detail)


def _claim_checks(robust: "Report | str", pol: Policy, reference) -> tuple[Any, list[Check]]:
    ref = reference if reference is not None else pol.reference
    if ref is None:
        raise PolicyError("the policy requires claims but names no reference report: add reference = \"standard.json\" "
                          "to [claims] (or pass --reference REPORT)")
    if isinstance(ref, Path):
        ref = str(ref)
    claims = importlib.import_module("armetrics.claims")
    result = claims.evaluate(ref, robust, reps=pol.reps, seed=pol.seed)
    verdicts = {str(getattr(v, "claim")): v for v in result.verdicts}
    rows = []
    for req in pol.claims:
        v = verdicts.get(req.claim)
        if v is None:
            raise PolicyError(f"the policy requires claim {req.claim!r}, which armetrics.claims does not evaluate: "
                              f"the claims are {', '.join(verdicts) or 'none'}")
        fields = {k: getattr(v, k, None) for k in ("claim", "title", "statistic", "reference", "robust", "diff",
                                                    "ci_low", "ci_high", "verdict", "check", "note")}
        name = f"claim {req.claim}"  # its title is in the card and in detail
        verdict = fields["verdict"]
        passed = verdict in req.accept
        note = "" if passed else shorten(one_line(str(fields["note"] or "")), 120)
        rows.append(Check(name, "claim", verdict, " or ".join(req.accept), passed, note, fields))
    return result, rows


def _interval(rep: Report, probe: str, name: str) -> dict[str, Any]:
    """The 95% interval of a summary value: ``<key>_ci_low``/``_ci_high`` of the report,
    else (a fraction of the samples) Wilson's from the probe's ``n``; ``{}`` if neither."""
    summary = rep.summary(probe)
    low, high = summary.get(f"{name}_ci_low"), summary.get(f"{name}_ci_high")
    if low is not None and high is not None:
        return {"ci_low": low, "ci_high": high, "interval": "reported"}
    n, value = summary.get("n"), summary.get(name)
    if f"{probe}.{name}" in PROPORTIONS and isinstance(n, (int, float)) and n and value is not None \
            and math.isfinite(value):
        lo, hi = wilson(round(value * n), int(n))
        return {"ci_low": lo, "ci_high": hi, "interval": f"Wilson, n = {int(n)}"}
    return {}


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k/n: the formula of
    ``armetrics.probes.robust_accuracy.wilson_interval`` (the interval ``robust_accuracy``
    reports), repeated here so that auditing a report does not import torch."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


# --------------------------------------------------------------------------- formatting
def _plain(v: Any) -> str:
    """A value in the text table: numbers to 4 significant digits, None as null."""
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def unit(key: str) -> str:
    """How a summary key is shown in the card: ``"%"`` (a fraction), ``"nats"``,
    ``"logits"`` (a logit difference) or ``""`` (a plain number)."""
    name = key.split(".", 1)[-1]
    name = re.sub(r"_ci_(low|high)$", "", name)
    if name.endswith(("accuracy", "_rate")) or name in ("ece", "mce") or name.startswith("frac_"):
        return "%"
    if name.startswith(("entropy", "nll")):
        return "nats"
    if name.startswith("logit_margin"):
        return "logits"
    return ""


def _fmt_unit(v: Any, u: str) -> str:
    if v is None:
        return "null"
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return _md(str(v))
    if u == "%":
        return f"{100 * v:.1f} %"
    text = _plain(float(v)) if isinstance(v, float) else str(v)
    return f"{text} {u}" if u else text


_SYMBOLS = {">=": "≥", "<=": "≤", "!=": "≠", "==": "="}


def _fmt_threshold(t: str, u: str) -> str:
    """A threshold in the card: ``>= 0.25`` of a fraction as ``≥ 25 %``."""
    op, _, num = t.partition(" ")
    value = _number(num)
    shown = f"{100 * value:.4g} %" if u == "%" and value is not None else num + (f" {u}" if u else "")
    return _md(f"{_SYMBOLS.get(op, op)} {shown}")


def _code(text: Any) -> str:
    """Text as a Markdown code span in a table cell (backslash escapes do not work
    inside code spans: backticks become quotes, pipes are escaped as GFM tables need)."""
    return "`" + one_line(str(text)).replace("`", "'").replace("|", "\\|") + "`"


def _md(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes and markup characters escaped."""
    text = re.sub(r"([\\`*|\[\]])", r"\\\1", one_line(str(text)))
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)  # intraword _ is not emphasis
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)  # no HTML tag; "<= 0.05" stays as it is


def _link(target: Path, card_dir: Path | None) -> str:
    base = card_dir if card_dir is not None else Path.cwd()
    try:
        rel = os.path.relpath(target.resolve(), base.resolve())
    except ValueError:  # another drive (Windows)
        rel = target.name
    return Path(rel).as_posix().replace(" ", "%20").replace("(", "%28").replace(")", "%29")


def _card(result: AuditResult, figures, card_dir, level: int) -> str:
    h = "#" * max(1, min(int(level), 5))
    rep, pol = result.report, result.policy
    model_name = rep.model.get("name") or "model"
    lines = [f"{h} Robustness audit: {_md(model_name)}", ""]
    n, bad = len(result.checks), result.failed
    policy = f" {_code(_shown_path(pol.source))}" if pol.source else ""
    if pol.name:
        policy += f" ({_md(pol.name)})"
    verdict = "**PASS**" if not bad else "**FAIL**"
    lines += [f"{verdict}: {n - len(bad)} of {n} checks of policy{policy} passed.", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _card_facts(rep)] + [""]
    lines += _card_thresholds([c for c in result.checks if c.kind == "threshold"], h)
    lines += _card_claims([c for c in result.checks if c.kind == "claim"], pol, h)
    if figures is not None:
        lines += _figure_lines(Path(figures), Path(card_dir) if card_dir is not None else None, h)
    return "\n".join(lines).rstrip() + "\n"


def _card_facts(rep) -> list[tuple[str, str]]:
    """The card's (what, value) rows: model, data, robust-accuracy attack, armetrics."""
    m, d = rep.model, rep.data.get("data") or {}
    model_name = m.get("name") or "model"
    source = _shown_path(m.get("source")) if m.get("source") and m.get("source") != "<in-memory>" else None
    desc = _code(source) if source else _md(model_name)
    extra = []
    if m.get("arch"):
        extra.append(f"architecture {_code(_shown_arch(m['arch']))}")
    if isinstance(m.get("num_parameters"), int):
        extra.append(f"{m['num_parameters']:,} parameters")
    if m.get("sha256"):
        extra.append(f"sha256 {_code(str(m['sha256'])[:16])}…")
    facts = [("model", desc + (f" ({', '.join(extra)})" if extra else ""))]
    if d:
        facts.append(("data", f"{_code(_shown_path(d.get('source')) or '?')}, n = {d.get('n')} images, seed {d.get('seed')}"))
    if "robust_accuracy" in rep.probes:
        facts.append(("robust accuracy", _attack_text(rep)))
    facts.append(("armetrics", f"{_md(rep.data.get('armetrics_version', '?'))}, report of {_md(rep.data.get('created', '?'))}"))
    return facts


def _attack_text(rep) -> str:
    """How robust accuracy was measured: "apgd-ce (Linf, 10 steps), eps 0.0314 = 8/255"."""
    cfg = rep.config("robust_accuracy")
    eps = rep.summary("robust_accuracy").get("eps", cfg.get("eps"))
    eps_text = _plain(eps) if isinstance(eps, (int, float)) else _md(str(cfg.get("eps")))
    if isinstance(eps, float) and eps > 0 and abs(eps * 255 - round(eps * 255)) < 1e-6:
        eps_text += f" = {round(eps * 255)}/255"
    how = [_md(str(cfg[k])) for k in ("norm",) if cfg.get(k) is not None]
    how += [f"{_md(str(cfg[k]))} {k if cfg[k] != 1 else k[:-1]}" for k in ("steps", "restarts")
            if cfg.get(k) is not None]
    attack = _md(str(cfg["attack"])) + (f" ({', '.join(how)})" if how else "") + ", " if cfg.get("attack") else ""
    return f"{attack}eps {eps_text}"


def _card_thresholds(thresholds: list, h: str) -> list[str]:
    """The card's threshold table (value with units, interval, threshold, result)."""
    if not thresholds:
        return []
    lines = [f"{h}# Thresholds", "", "| check | value | 95% interval | threshold | result |", "|---|---|---|---|---|"]
    for c in thresholds:
        u = unit(c.check)
        interval = ""
        if c.detail.get("ci_low") is not None and c.detail.get("ci_high") is not None:
            interval = f"{_fmt_unit(c.detail['ci_low'], u)} – {_fmt_unit(c.detail['ci_high'], u)}"
        value = _fmt_unit(c.value, u) if c.value is not None else "null (not finite)"
        lines.append(f"| {_code(c.check)} | {value} | {interval} | {_fmt_threshold(c.threshold, u)} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    lines.append("")
    if any(c.detail.get("interval", "").startswith("Wilson") for c in thresholds):
        lines += ["Intervals: as the probe reports them, or Wilson score intervals of a fraction of n images. "
                  "Thresholds apply to the measured value, not to the interval.", ""]
    return lines


def _card_claims(claims: list, pol, h: str) -> list[str]:
    """The card's claims table (verdict against the reference, required verdict, result) and notes."""
    if not claims:
        return []
    ref = _shown_path(pol.reference)
    lines = [f"{h}# Claims of Wen, Li & Jia (2020)" + (f" against {_code(ref)}" if ref else ""), "",
             "| claim | statistic | reference | this model | difference (95% CI) | verdict | required | result |",
             "|---|---|---|---|---|---|---|---|"]
    for c in claims:
        f = c.detail
        diff = _num(f.get("diff"))
        if f.get("ci_low") is not None and f.get("ci_high") is not None:
            diff += f" [{_num(f['ci_low'])}, {_num(f['ci_high'])}]"
        label = _md(f.get("claim") or c.check) + (f": {_md(f['title'])}" if f.get("title") else "")
        lines.append(f"| {label} | {_md(f.get('statistic') or '')} | {_num(f.get('reference'))} | "
                     f"{_num(f.get('robust'))} | {diff} | {_md(c.value)} | {_md(c.threshold)} | "
                     f"{'pass' if c.passed else '**FAIL**'} |")
    lines.append("")
    notes = [(c.detail.get("claim"), c.detail.get("note")) for c in claims if c.detail.get("note")]
    lines += [f"- claim {_md(k)}: {_md(v)}" for k, v in notes] + ([""] if notes else [])
    return lines + ["A verdict compares this model with the reference on the same images; see docs/claims.md for "
                    "what it does and does not mean.", ""]


def _num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _plain(float(v))
    return _md(str(v))


def _shown_arch(arch: str) -> str:
    file, sep, fn = arch.rpartition(":")
    if sep and file.endswith(".py"):
        return f"{_shown_path(file)}:{fn}"
    return arch


def _figure_lines(figures: Path, card_dir: Path | None, h: str) -> list[str]:
    if not figures.is_dir():
        raise PolicyError(f"--figures {one_line(str(figures))} is not a directory: pass the --out directory of "
                          f"armetrics compare")
    pngs = sorted(p for p in figures.glob("*.png") if p.is_file())
    page = figures / "index.html"
    if not pngs and not page.is_file():
        raise PolicyError(f"--figures {one_line(str(figures))} has no index.html or figures: pass the --out "
                          f"directory of armetrics compare")
    lines = [f"{h}# Figures", ""]
    if page.is_file():
        lines.append(f"- [comparison page]({_link(page, card_dir)})")
    lines += [f"- [{_md(p.stem.replace('_', ' '))}]({_link(p, card_dir)})" for p in pngs]
    headline = next((p for p in pngs if p.stem.startswith("headline")), None)
    if headline is not None:
        lines += ["", f"![headline figure]({_link(headline, card_dir)})"]
    return lines + [""]


__all__ = ["audit", "load_policy", "parse_policy", "parse_condition", "Policy", "Threshold", "ClaimRequirement",
           "Check", "AuditResult", "PolicyError", "OPERATORS", "VERDICTS", "unit", "wilson"]
