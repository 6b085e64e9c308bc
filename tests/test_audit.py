"""``armetrics audit`` and ``am.audit``: policies of thresholds and claims, exit codes
0 (all pass) / 1 (a check fails) / 2 (the audit cannot be made), the model card,
hostile policy files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
from pathlib import Path

import pytest

import armetrics as am
from armetrics.auditing import AuditResult, PolicyError, audit, load_policy, parse_condition, unit, wilson
from armetrics.report import Report
from armetrics_testkit import CHECKPOINTS, EXAMPLES, TINY_ARCH

ARCH = f"{EXAMPLES / 'models.py'}:small_cnn"


def report_dict(**summaries) -> dict:
    """A minimal valid report whose probes have the given summaries."""
    probes = {name: {"config": {}, "summary": dict(s), "layers": [], "distributions": {}, "seconds": 0.1}
              for name, s in summaries.items()}
    return {"schema": "armetrics.report/1", "armetrics_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00",
            "model": {"source": "nets/robust.pt", "name": "robust", "sha256": "ab" * 32, "arch": "nets.py:make",
                      "num_parameters": 1234},
            "data": {"source": "cifar10-sample", "n": 1000, "seed": 0, "num_classes": 10},
            "environment": {"torch": "2"}, "probes": probes}


SUMMARIES = {
    "accuracy": {"accuracy": 0.5, "correct": 500, "n": 1000},
    "confidence": {"accuracy": 0.5, "ece": 0.04, "max_prob_mean": 0.33, "entropy_mean": 1.7, "n": 1000},
    "spectrum": {"sigma_max_max": 3.5, "cv_mean": 0.6, "num_layers": 6},
    "robust_accuracy": {"robust_accuracy": 0.3, "robust_accuracy_ci_low": 0.27, "robust_accuracy_ci_high": 0.33,
                        "accuracy": 0.5, "n": 1000, "eps": 8 / 255},
    "margin": {"logit_margin_median": None, "frac_negative": 0.5, "n": 1000},
}


@pytest.fixture
def report(tmp_path) -> Path:
    path = tmp_path / "r.json"
    Report(report_dict(**SUMMARIES)).save(path)
    return path


def write(tmp_path: Path, text: str | bytes, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


PASSING = '[thresholds]\n"robust_accuracy.robust_accuracy" = ">= 0.25"\n"confidence.ece" = "<= 0.05"\n'


# --------------------------------------------------------------------------- operators
@pytest.mark.parametrize("condition, passes", [
    (">= 0.3", True), (">= 0.31", False),
    ("> 0.29", True), ("> 0.3", False),
    ("<= 0.3", True), ("<= 0.29", False),
    ("< 0.31", True), ("< 0.3", False),
    ("== 0.3", True), ("== 0.31", False),
    ("!= 0.31", True), ("!= 0.3", False),
    (">=0.3", True), ("  <=  3e-1 ", True), (">= 76.5/255", True), (">= 77/255", False), ("> -1", True),
])
def test_every_operator_on_both_sides_of_its_boundary(report, condition, passes):
    result = audit(report, {"thresholds": {"robust_accuracy.robust_accuracy": condition}})
    (check,) = result.checks
    assert (check.passed, result.passed) == (passes, passes)
    assert check.value == 0.3 and check.threshold == parse_condition("k.k", condition).text


@pytest.mark.parametrize("text, op, value", [(">= 0.45", ">=", 0.45), ("<=8/255", "<=", 8 / 255),
                                            ("!= -1e-3", "!=", -1e-3), ("== .5", "==", 0.5)])
def test_conditions_parse_to_operator_and_number(text, op, value):
    t = parse_condition("confidence.ece", text)
    assert (t.op, t.value, t.probe, t.name) == (op, value, "confidence", "ece")


def test_toml_subtables_dotted_keys_and_lists_name_the_same_checks(tmp_path, report):
    quoted = write(tmp_path, '[thresholds]\n"confidence.ece" = ["<= 0.05", ">= 0"]\n', "a.toml")
    table = write(tmp_path, '[thresholds.confidence]\nece = ["<= 0.05", ">= 0"]\n', "b.toml")
    dotted = write(tmp_path, '[thresholds]\nconfidence.ece = ["<= 0.05", ">= 0"]\n', "c.toml")
    rows = [[(c.check, c.threshold, c.passed) for c in audit(report, p).checks] for p in (quoted, table, dotted)]
    assert rows[0] == rows[1] == rows[2] == [("confidence.ece", "<= 0.05", True), ("confidence.ece", ">= 0", True)]


# --------------------------------------------------------------------------- exit codes
def test_exit_0_when_every_check_passes(cli_inproc, tmp_path, report):
    r = cli_inproc("audit", str(report), "--policy", str(write(tmp_path, PASSING)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["check", "value", "threshold", "result"]
    assert lines[1].split() == ["robust_accuracy.robust_accuracy", "0.3", ">=", "0.25", "pass"]
    assert lines[2].split() == ["confidence.ece", "0.04", "<=", "0.05", "pass"]
    assert lines[-1] == "PASS: all 2 checks passed"


def test_exit_1_when_a_check_fails(cli_inproc, tmp_path, report):
    policy = write(tmp_path, PASSING + '"spectrum.sigma_max_max" = "<= 3"\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy))
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[3].split() == ["spectrum.sigma_max_max", "3.5", "<=", "3", "FAIL"]
    assert r.stdout.splitlines()[-1] == "FAIL: 1 of 3 checks failed (spectrum.sigma_max_max)"
    assert r.stderr == ""


def test_a_null_value_fails_its_check_and_says_why(cli_inproc, tmp_path, report):
    policy = write(tmp_path, '[thresholds]\n"margin.logit_margin_median" = ">= 0"\n"accuracy.accuracy" = ">= 0.1"\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy))
    assert r.returncode == 1
    row = r.stdout.splitlines()[1]
    assert row.split()[:5] == ["margin.logit_margin_median", "null", ">=", "0", "FAIL"]
    assert "null (not finite) in the report" in row
    result = audit(report, policy)
    assert result.checks[0].value is None and not result.checks[0].passed and result.checks[1].passed


def test_exit_codes_in_a_real_process(cli, tmp_path, report):
    """0 / 1 / 2 as a CI runner sees them (the console entry point, not click's runner)."""
    ok = cli("audit", str(report), "--policy", str(write(tmp_path, PASSING)))
    bad = cli("audit", str(report), "--policy", str(write(tmp_path, PASSING.replace("0.25", "0.5"), "f.toml")))
    usage = cli("audit", str(report), "--policy", str(write(tmp_path, '[thresholds]\n"confidence.ece" = "=> 1"\n', "u.toml")))
    assert (ok.returncode, bad.returncode, usage.returncode) == (0, 1, 2), (ok.stderr, bad.stderr, usage.stderr)
    assert usage.stdout == "" and usage.stderr.count("\n") == 1 and "Traceback" not in usage.stderr
    assert usage.stderr.startswith("error: ") and "unknown operator '=>': use >=" in usage.stderr


def test_usage_errors_exit_2_with_one_line_naming_the_fix(cli_inproc, tmp_path, report):
    policy = write(tmp_path, PASSING)
    cases = {
        "missing policy": (["audit", str(report), "--policy", str(tmp_path / "none.toml")], "does not exist"),
        "missing report": (["audit", str(tmp_path / "none.json"), "--policy", str(policy)], "does not exist"),
        "unknown key": (["audit", str(report), "--policy", str(write(tmp_path, '[thresholds]\n"confidence.ecee" = "<= 1"\n', "k.toml"))],
                        "no summary key confidence.ecee (did you mean 'ece'?): confidence has accuracy, ece, entropy_mean"),
        "missing probe": (["audit", str(report), "--policy", str(write(tmp_path, '[thresholds]\n"smoothness.anisotropy_median" = "<= 1"\n', "s.toml"))],
                          "has no probe 'smoothness'"),
        "not a report": (["audit", str(policy.with_name("x.json")), "--policy", str(policy)], "does not exist"),
    }
    for name, (args, expected) in cases.items():
        r = cli_inproc(*args)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (name, r.stderr)
        assert expected in r.stderr, (name, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
    # the missing probe's message lists what the report has and how to get the probe
    r = cli_inproc(*cases["missing probe"][0])
    assert "it has accuracy, confidence, spectrum, robust_accuracy, margin" in r.stderr and "--probes" in r.stderr
    # click's own usage errors (no --policy) are exit 2 as well
    assert cli_inproc("audit", str(report)).returncode == 2


def test_debug_shows_the_traceback_and_keeps_exit_2(cli_inproc, tmp_path, report, monkeypatch):
    monkeypatch.setenv("ARMETRICS_DEBUG", "")  # --debug sets it for the process: restored afterwards
    policy = write(tmp_path, '[thresholds]\n"confidence.ece" = "=> 1"\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy), "--debug")
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "PolicyError" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: policy")


# --------------------------------------------------------------------------- hostile policies
HOSTILE = {
    "huge": (b"# " + b"a" * (1 << 20) + b"\n", "more than the 1 MiB"),
    "not utf-8": (b'[thresholds]\n"confidence.ece" = "<= 0.1 \xff"\n', "not UTF-8 text (byte 0xff at offset 40)"),
    "utf-16": ('[thresholds]\n"confidence.ece" = "<= 0.1"\n'.encode("utf-16"), "not UTF-8 text"),
    "not toml": (b"[thresholds\n", "is not valid TOML"),
    "nested arrays": (b"x = " + b"[" * 50000 + b"]" * 50000 + b"\n", "nested too deeply"),
    "nested tables": (b"[thresholds]\n" + b"a." * 20 + b"b = '<= 1'\n", "nested more than 8 levels"),
    "arrow": (b'[thresholds]\n"confidence.ece" = "=> 0.05"\n', "unknown operator '=>': use >="),
    "single =": (b'[thresholds]\n"confidence.ece" = "= 0.05"\n', "unknown operator '=': use =="),
    "unicode op": ('[thresholds]\n"confidence.ece" = "≤ 0.05"\n'.encode(), "unknown operator '≤': use <="),
    "no operator": (b'[thresholds]\n"confidence.ece" = "0.05"\n', "has no operator"),
    "bare number": (b'[thresholds]\n"confidence.ece" = 0.05\n', "is a number (0.05), not a condition"),
    "nan string": (b'[thresholds]\n"confidence.ece" = "<= nan"\n', "not a finite number"),
    "nan literal": (b'[thresholds]\n"confidence.ece" = nan\n', "is a number (nan), not a condition"),
    "inf": (b'[thresholds]\n"confidence.ece" = "<= 1e999"\n', "not a finite number"),
    "zero division": (b'[thresholds]\n"confidence.ece" = "<= 1/0"\n', "not a finite number"),
    "not a number": (b'[thresholds]\n"confidence.ece" = "<= low"\n', "'low' is not a number"),
    "boolean": (b'[thresholds]\n"confidence.ece" = true\n', "is bool (True), not a condition"),
    "date": (b'[thresholds]\n"confidence.ece" = 1979-05-27\n', "is date"),
    "empty list": (b'[thresholds]\n"confidence.ece" = []\n', "is an empty list"),
    "no probe in key": (b'[thresholds]\nece = "<= 1"\n', "is not \"<probe>.<summary key>\""),
    "control chars": (b'[thresholds]\n"confidence.\\u001b[2J" = "<= 1"\n', "control characters"),
    "unknown section": (b'[threshold]\n"confidence.ece" = "<= 1"\n', "unknown section 'threshold' (did you mean 'thresholds'?)"),
    "thresholds not a table": (b'thresholds = ["confidence.ece <= 1"]\n', "thresholds must be a table"),
    "empty": (b"", "has no checks"),
    "long": (b'[thresholds]\n"confidence.ece" = "<= ' + b"1" * 300 + b'"\n', "longer than 200 characters"),
    "claims without require": (b'[claims]\nreference = "s.json"\n', "has no require"),
    "unknown verdict": (b'[claims]\nreference = "s.json"\nrequire = {"2" = "yes"}\n', "'yes', not a verdict"),
    "bad claim id": (b'[claims]\nreference = "s.json"\nrequire = [2.5]\n', "is not a claim id"),
    "duplicate claim": (b'[claims]\nreference = "s.json"\nrequire = ["2", 2]\n', "required twice"),
    "bad reps": (b'[claims]\nreference = "s.json"\nrequire = ["2"]\nreps = 0\n', "claims.reps must be an integer"),
    "unknown claims field": (b'[claims]\nrefrence = "s.json"\nrequire = ["2"]\n', "(did you mean 'reference'?)"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_policy_files_are_one_line_usage_errors(cli_inproc, tmp_path, report, case):
    content, expected = HOSTILE[case]
    policy = write(tmp_path, content)
    with pytest.raises(PolicyError, match=None) as info:
        load_policy(policy)
    assert expected in str(info.value), str(info.value)
    r = cli_inproc("audit", str(report), "--policy", str(policy))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and len(r.stderr) < 1100, r.stderr
    assert "\x1b" not in r.stderr


def test_special_files_as_policy_are_refused_unopened(cli_inproc, tmp_path, report):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    for path, expected in ((fifo, "is a FIFO"), (tmp_path, "is a directory")):
        r = cli_inproc("audit", str(report), "--policy", str(path))
        assert r.returncode == 2 and expected in r.stderr, r.stderr


@pytest.mark.parametrize("policy, expected", [
    ({"thresholds": {5: "<= 1"}}, "key 5 in [thresholds] is not a string"),
    ({"thresholds": {("a", "b"): "<= 1"}}, "is not a string"),
    ({"thresholds": {"confidence.ece": float("nan")}}, "is a number (nan), not a condition"),
    ({"thresholds": {"confidence.ece": ("<=", 0.1)}}, "is tuple"),
    ({1: {}}, "key 1 is not a string"),
    ({"thresholds": {"confidence.ece": "<= 1"}, "claims": {"require": {None: "partly"}}}, "is not a string"),
    ({"thresholds": {"confidence": {"ece": {"x": {"y": {"z": {"a": {"b": {"c": {"d": "<= 1"}}}}}}}}}}, "nested more than"),
])
def test_hostile_policy_dicts_raise_policy_errors(report, policy, expected):
    with pytest.raises(PolicyError) as info:
        audit(report, policy)
    assert expected in str(info.value)


def test_policy_must_be_a_path_or_a_dict(report):
    with pytest.raises(PolicyError, match="a TOML file path or a dict"):
        audit(report, 42)
    with pytest.raises(PolicyError, match="needs a Report or the path"):
        audit(42, {"thresholds": {"confidence.ece": "<= 1"}})


# --------------------------------------------------------------------------- Python API
def test_python_api_returns_a_structured_result(tmp_path, report):
    assert am.audit is audit and "audit" in am.__all__
    policy = {"name": "ci", "thresholds": {"robust_accuracy.robust_accuracy": ">= 0.25", "spectrum.sigma_max_max": "<= 3"}}
    from_dict = am.audit(Report.load(report), policy)
    from_file = am.audit(report, write(tmp_path, '[thresholds]\n"robust_accuracy.robust_accuracy" = ">= 0.25"\n'
                                                 '"spectrum.sigma_max_max" = "<= 3"\n'))
    assert isinstance(from_dict, AuditResult) and from_dict.passed is False and from_file.passed is False
    assert [(c.check, c.kind, c.value, c.threshold, c.passed) for c in from_dict.checks] == [
        ("robust_accuracy.robust_accuracy", "threshold", 0.3, ">= 0.25", True),
        ("spectrum.sigma_max_max", "threshold", 3.5, "<= 3", False)]
    assert [c.to_dict() for c in from_dict.checks] == [c.to_dict() for c in from_file.checks]
    assert [c.check for c in from_dict.failed] == ["spectrum.sigma_max_max"]
    d = json.loads(json.dumps(from_file.to_dict(), allow_nan=False))
    assert d["passed"] is False and d["report"] == str(report) and d["model"]["name"] == "robust"
    assert d["checks"][0]["detail"] == {"ci_low": 0.27, "ci_high": 0.33, "interval": "reported"}
    assert from_dict.markdown().startswith("## Robustness audit: robust\n")
    assert load_policy(policy).probes == ["robust_accuracy", "spectrum"]


def test_json_output(cli_inproc, tmp_path, report):
    r = cli_inproc("audit", str(report), "--policy", str(write(tmp_path, PASSING)), "--json")
    assert r.returncode == 0
    d = json.loads(r.stdout)
    assert d["passed"] is True and [c["check"] for c in d["checks"]] == ["robust_accuracy.robust_accuracy", "confidence.ece"]


def test_wilson_interval_is_robust_accuracys():
    from armetrics.probes.robust_accuracy import wilson_interval

    for k, n in ((0, 10), (3, 10), (500, 1000), (1000, 1000), (1, 1)):
        assert wilson(k, n) == wilson_interval(k, n)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_units():
    assert [unit(k) for k in ("accuracy.accuracy", "robust_accuracy.robust_accuracy_ci_low", "confidence.ece",
                              "margin.frac_negative", "confidence.entropy_mean", "margin.logit_margin_median",
                              "spectrum.sigma_max_max")] == ["%", "%", "%", "%", "nats", "logits", ""]


# --------------------------------------------------------------------------- the card
def test_card_has_units_intervals_and_figure_links(cli_inproc, tmp_path, report):
    figs = tmp_path / "cmp"
    figs.mkdir()
    for name in ("index.html", "accuracy_robust.png", "headline.png"):
        (figs / name).write_bytes(b"x")
    (tmp_path / "cards").mkdir()
    card = tmp_path / "cards" / "card.md"
    policy = write(tmp_path, PASSING + '"accuracy.accuracy" = ">= 0.45"\n"spectrum.sigma_max_max" = "<= 3"\n'
                             '"margin.logit_margin_median" = ">= 0"\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy), "--card", str(card), "--figures", str(figs))
    assert r.returncode == 1 and f"card written to {card}" in r.stderr
    text = card.read_text()
    assert text.startswith("## Robustness audit: robust\n\n**FAIL**: 3 of 5 checks of policy")
    assert "| `robust_accuracy.robust_accuracy` | 30.0 % | 27.0 % – 33.0 % | ≥ 25 % | pass |" in text
    lo, hi = wilson(500, 1000)
    assert f"| `accuracy.accuracy` | 50.0 % | {100 * lo:.1f} % – {100 * hi:.1f} % | ≥ 45 % | pass |" in text
    assert "| `confidence.ece` | 4.0 % |  | ≤ 5 % | pass |" in text
    assert "| `spectrum.sigma_max_max` | 3.5 |  | ≤ 3 | **FAIL** |" in text
    assert "| `margin.logit_margin_median` | null (not finite) |  | ≥ 0 logits | **FAIL** |" in text
    assert "| model | `nets/robust.pt` (architecture `nets.py:make`, 1,234 parameters" in text
    assert "| data | `cifar10-sample`, n = 1000 images, seed 0 |" in text
    assert "| robust accuracy | eps 0.03137 = 8/255 |" in text  # the report records no attack config
    assert "- [comparison page](../cmp/index.html)" in text and "- [accuracy robust](../cmp/accuracy_robust.png)" in text
    assert "![headline figure](../cmp/headline.png)" in text
    assert str(tmp_path) not in text  # no absolute path of this machine


def test_card_never_overwrites_an_input_and_is_written_atomically(cli_inproc, tmp_path, report):
    policy = write(tmp_path, PASSING)
    before = report.read_bytes(), policy.read_bytes()
    for target in (report, policy):
        r = cli_inproc("audit", str(report), "--policy", str(policy), "--card", str(target))
        assert r.returncode == 2 and "is the input file" in r.stderr, r.stderr
    assert (report.read_bytes(), policy.read_bytes()) == before
    card = tmp_path / "card.md"
    card.write_text("old card\n")
    bad = write(tmp_path, '[thresholds]\n"confidence.nope" = "<= 1"\n', "bad.toml")
    assert cli_inproc("audit", str(report), "--policy", str(bad), "--card", str(card)).returncode == 2
    assert card.read_text() == "old card\n"  # a failed audit leaves the old card
    assert cli_inproc("audit", str(report), "--policy", str(policy), "--card", str(card)).returncode == 0
    assert card.read_text().startswith("## Robustness audit") and not list(tmp_path.glob(".card.md.*"))


def test_card_escapes_markdown_in_report_fields(tmp_path):
    data = report_dict(**SUMMARIES)
    data["model"]["name"] = "evil | *x* <script>"
    data["model"]["source"] = "a`b|c.pt"
    text = audit(Report(data), {"thresholds": {"confidence.ece": "<= 1"}}).markdown()
    assert text.startswith("## Robustness audit: evil \\| \\*x\\* &lt;script>\n")
    assert "| model | `a'b\\|c.pt`" in text
    assert audit(Report(data), {"thresholds": {"confidence.ece": "<= 1"}}).markdown(heading_level=3).startswith("### R")


# --------------------------------------------------------------------------- claims
@dataclasses.dataclass(frozen=True)
class FakeVerdict:
    claim: str
    title: str
    statistic: str
    reference: float | None
    robust: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    check: bool = False
    note: str = ""


VERDICTS = [FakeVerdict("1", "concentrated spectra", "std of singular values", 0.9, 0.59, -0.31, -0.35, -0.27, "reproduced"),
            FakeVerdict("1.cv", "concentrated spectra (CV)", "CV", 0.53, 0.61, 0.08, 0.05, 0.1, "not reproduced", True,
                        "CV grows: the shape is not more concentrated"),
            FakeVerdict("2", "samples near the boundary", "median logit margin", 1.48, -0.005, -1.49, -1.6, -1.4, "reproduced"),
            FakeVerdict("3", "less confident", "mean max-prob", 0.74, 0.33, -0.41, -0.43, -0.39, "partly", note="ECE grows")]


@pytest.fixture
def fake_claims(monkeypatch):
    """``armetrics.claims`` replaced by a fake whose ``evaluate`` records its calls
    (``.calls``) and returns ``.verdicts`` (VERDICTS unless a test sets others)."""
    state = types.SimpleNamespace(calls=[], verdicts=list(VERDICTS))

    class Result:
        def __init__(self):
            self.verdicts = list(state.verdicts)

        def claim(self, claim_id):
            return next(v for v in self.verdicts if v.claim == claim_id)

        def to_dict(self):
            return {"verdicts": [dataclasses.asdict(v) for v in self.verdicts]}

    def evaluate(reference, robust, *, reps=1000, seed=0):
        state.calls.append((reference, robust, reps, seed))
        return Result()

    module = types.ModuleType("armetrics.claims")
    module.evaluate = evaluate
    monkeypatch.setitem(sys.modules, "armetrics.claims", module)
    return state


def test_claims_pass_and_fail_by_verdict(tmp_path, report, fake_claims):
    (tmp_path / "refs").mkdir()
    policy = write(tmp_path / "refs", '[claims]\nreference = "standard.json"\nreps = 50\nseed = 3\n'
                   'require = {"1" = "reproduced", "2" = "reproduced", "3" = ["reproduced", "partly"], "1.cv" = "reproduced"}\n')
    result = audit(report, policy)
    assert fake_claims.calls == [(str(tmp_path / "refs" / "standard.json"), str(report), 50, 3)]  # relative to the policy
    assert [(c.check, c.value, c.threshold, c.passed) for c in result.checks] == [
        ("claim 1", "reproduced", "reproduced", True),
        ("claim 2", "reproduced", "reproduced", True),
        ("claim 3", "partly", "reproduced or partly", True),
        ("claim 1.cv", "not reproduced", "reproduced", False)]
    assert result.passed is False and result.checks[3].note == "CV grows: the shape is not more concentrated"
    assert result.checks[2].detail["diff"] == -0.41 and result.checks[2].detail["ci_high"] == -0.39
    text = result.markdown()
    assert "### Claims of Wen, Li & Jia (2020) against `" in text
    assert "| 3: less confident | mean max-prob | 0.74 | 0.33 | -0.41 [-0.43, -0.39] | partly | reproduced or partly | pass |" in text
    assert "| 1.cv: concentrated spectra (CV) | CV | 0.53 | 0.61 | 0.08 [0.05, 0.1] | not reproduced | reproduced | **FAIL** |" in text
    assert "- claim 3: ECE grows" in text


def test_claims_through_the_cli(cli_inproc, tmp_path, report, fake_claims):
    ref = tmp_path / "standard.json"
    Report(report_dict(**SUMMARIES)).save(ref)
    policy = write(tmp_path, PASSING + '[claims]\nrequire = ["2", 3]\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy), "--reference", str(ref))
    assert r.returncode == 1, r.stderr  # claim 3 is only "partly"
    rows = r.stdout.splitlines()
    assert rows[3].split() == ["claim", "2", "reproduced", "reproduced", "pass"]
    assert "partly" in rows[4] and "FAIL  ECE grows" in rows[4]
    assert fake_claims.calls[0][:2] == (str(ref), str(report))
    # no reference anywhere: a usage error naming both ways to give one
    r = cli_inproc("audit", str(report), "--policy", str(policy))
    assert r.returncode == 2 and "reference = \"standard.json\"" in r.stderr and "--reference" in r.stderr


def test_unknown_claim_is_a_usage_error(cli_inproc, tmp_path, report, fake_claims):
    policy = write(tmp_path, '[claims]\nreference = "s.json"\nrequire = ["7"]\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy))
    assert r.returncode == 2 and "claim '7'" in r.stderr and "the claims are 1, 1.cv, 2, 3" in r.stderr


# --------------------------------------------------------------------------- models
def test_a_model_is_analyzed_with_the_probes_the_policy_reads(cli_inproc, tmp_path, tiny_npz):
    import torch

    from armetrics_testkit import make_tiny_net

    ckpt = tmp_path / "tiny.pt"
    torch.save(make_tiny_net().state_dict(), ckpt)
    policy = write(tmp_path, '[thresholds]\n"accuracy.accuracy" = ">= 0"\n"spectrum.num_layers" = "== 2"\n')
    card = tmp_path / "card.md"
    r = cli_inproc("audit", str(ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz), "-n", "16", "--seed", "1",
                   "--policy", str(policy), "--card", str(card))
    assert r.returncode == 0, r.stderr
    assert "analyzing" in r.stderr and "with accuracy, spectrum" in r.stderr
    assert "| data | `" in card.read_text() and "n = 16 images, seed 1" in card.read_text()
    # the card may not replace the data or the --arch file
    r = cli_inproc("audit", str(ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz), "--policy", str(policy),
                   "--card", str(tiny_npz))
    assert r.returncode == 2 and "is the input file" in r.stderr
    # --set for a probe the policy does not read
    r = cli_inproc("audit", str(ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz), "--policy", str(policy),
                   "--set", "margin.bins=3", "--quiet")
    assert r.returncode == 2 and "--set names probe 'margin', which the audit does not run" in r.stderr
    # an unknown probe in the policy fails before the model is loaded
    bad = write(tmp_path, '[thresholds]\n"robustness.x" = ">= 0"\n', "bad.toml")
    r = cli_inproc("audit", str(tmp_path / "missing.pt"), "--policy", str(bad))
    assert r.returncode == 2 and "robustness" in r.stderr and "missing.pt" not in r.stderr


def test_loading_a_model_is_safe_by_default(cli_inproc, tmp_path, tiny_npz):
    import torch

    from armetrics_testkit import make_tiny_net

    ckpt = tmp_path / "pickled.pt"
    torch.save(make_tiny_net(), ckpt)  # a whole pickled module: code runs when it is unpickled
    policy = write(tmp_path, '[thresholds]\n"accuracy.accuracy" = ">= 0"\n')
    args = ("audit", str(ckpt), "--data", str(tiny_npz), "--policy", str(policy), "--quiet")
    r = cli_inproc(*args)
    assert r.returncode == 2 and "--trust-code" in r.stderr and r.stderr.count("\n") == 1
    assert cli_inproc(*args, "--trust-pickle").returncode == 0


def test_example_policy_passes_the_robust_checkpoint_and_fails_the_standard_one(cli_inproc):
    policy = str(EXAMPLES / "audit_policy.toml")
    assert load_policy(policy).probes == ["robust_accuracy", "accuracy", "spectrum", "confidence"]
    robust = cli_inproc("audit", str(CHECKPOINTS / "small_cnn_eps8.pt"), "--arch", ARCH, "--policy", policy, "--quiet")
    assert robust.returncode == 0, robust.stdout + robust.stderr
    assert robust.stdout.splitlines()[1].split() == ["robust_accuracy.robust_accuracy", "0.294", ">=", "0.25", "pass"]
    standard = cli_inproc("audit", str(CHECKPOINTS / "small_cnn_eps0.pt"), "--arch", ARCH, "--policy", policy,
                          "-n", "200", "--quiet")
    assert standard.returncode == 1
    assert standard.stdout.splitlines()[1].split() == ["robust_accuracy.robust_accuracy", "0", ">=", "0.25", "FAIL"]


def test_a_reference_without_claims_is_a_usage_error(cli_inproc, tmp_path, report):
    r = cli_inproc("audit", str(report), "--policy", str(write(tmp_path, PASSING)), "--reference", str(report))
    assert r.returncode == 2 and "the policy requires no claims" in r.stderr
    with pytest.raises(PolicyError, match="requires no claims"):
        audit(report, {"thresholds": {"confidence.ece": "<= 1"}}, reference=report)


def test_json_is_strict_when_a_claim_interval_is_nan(cli_inproc, tmp_path, report, fake_claims):
    fake_claims.verdicts = [dataclasses.replace(VERDICTS[2], ci_low=float("nan"), ci_high=float("nan"),
                                                verdict="inconclusive")]
    policy = write(tmp_path, '[claims]\nreference = "s.json"\nrequire = {"2" = ["reproduced", "inconclusive"]}\n')
    r = cli_inproc("audit", str(report), "--policy", str(policy), "--json")
    assert r.returncode == 0, r.stderr
    (check,) = json.loads(r.stdout)["checks"]
    assert check["value"] == "inconclusive" and check["detail"]["ci_low"] is None


def test_a_model_audited_for_claims_runs_the_references_probes_with_its_options(cli_inproc, tmp_path, tiny_npz,
                                                                                fake_claims):
    import torch

    from armetrics_testkit import make_tiny_net

    model = make_tiny_net()
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    ref = am.analyze(model, am.load_data(tiny_npz, n=16), probes=["accuracy", "spectrum", "confidence"],
                     options={"spectrum": {"bins": 7}, "confidence": {"bins": 5}}, progress=False)
    ref.save(tmp_path / "standard.json")
    policy = write(tmp_path, '[thresholds]\n"accuracy.accuracy" = ">= 0"\n'
                             '[claims]\nreference = "standard.json"\nrequire = ["2"]\n')
    r = cli_inproc("audit", str(ckpt), "--arch", TINY_ARCH, "--data", str(tiny_npz), "-n", "16",
                   "--set", "confidence.bins=9", "--policy", str(policy), "--quiet")
    assert r.returncode == 0, r.stderr
    ((reference, robust, reps, seed),) = fake_claims.calls
    assert reference == str(tmp_path / "standard.json") and (reps, seed) == (1000, 0)
    assert isinstance(robust, Report) and robust.probes == ["accuracy", "spectrum", "confidence"]
    assert robust.config("spectrum")["bins"] == 7  # the reference's option
    assert robust.config("confidence")["bins"] == 9  # --set wins


def test_policy_to_dict_round_trips_and_a_cyclic_dict_is_refused(tmp_path):
    text = ('name = "ci"\n[thresholds]\n"confidence.ece" = ["<= 0.05", ">= 0"]\nspectrum.sigma_max_max = "< 8/255"\n'
            '[claims]\nreference = "s.json"\nreps = 10\nrequire = {"1.cv" = ["partly", "reproduced"], 2 = "reproduced"}\n')
    pol = load_policy(write(tmp_path, text))
    again = load_policy(pol.to_dict())
    assert (again.thresholds, again.claims, again.reference, again.reps, again.name) == \
           (pol.thresholds, pol.claims, tmp_path / "s.json", 10, "ci")
    assert [c.claim for c in pol.claims] == ["1.cv", "2"] and pol.claims[0].accept == ("partly", "reproduced")
    cyclic: dict = {}
    cyclic["thresholds"] = {"confidence": cyclic}
    with pytest.raises(PolicyError, match="nested more than 8 levels"):
        load_policy(cyclic)


# --------------------------------------------------------------------------- claims, for real
@pytest.fixture(scope="module")
def claim_reports(tmp_path_factory):
    """Reports (with their per-sample side files) of a tiny standard model and of the same
    model with every weight scaled by 0.3 (a smaller spectrum, smaller margins, less
    confident), on the same 32 images; the checkpoints and the data beside them."""
    import numpy as np
    import torch

    from armetrics_testkit import make_tiny_net

    d = tmp_path_factory.mktemp("claims")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    y[:10] = np.arange(10)
    np.savez(d / "tiny.npz", x=x, y=y)
    standard, robust = make_tiny_net(), make_tiny_net()
    with torch.no_grad():
        for p in robust.parameters():
            p.mul_(0.3)
    probes = ["accuracy", "spectrum", "margin", "confidence", "smoothness"]
    for name, model in (("standard", standard), ("robust", robust)):
        torch.save(model.state_dict(), d / f"{name}.pt")
        path = d / f"{name}.json"
        am.analyze(model, am.load_data(d / "tiny.npz", n=32), probes, progress=False, out_path=path).save(path)
    return d


def test_claims_end_to_end_on_real_reports(cli_inproc, claim_reports, tmp_path):
    from armetrics.claims import evaluate

    d = claim_reports
    assert (d / "robust.samples.npz").is_file()
    expected = {v.claim: v for v in evaluate(d / "standard.json", d / "robust.json", reps=200).verdicts}
    assert {expected[c].verdict for c in ("1", "2", "3")} == {"reproduced"} and expected["1.cv"].verdict == "not reproduced"
    policy = write(d, '[thresholds]\n"spectrum.sigma_max_max" = "<= 5"\n[claims]\nreference = "standard.json"\n'
                      'reps = 200\nrequire = ["1", "2", "3"]\n', "claims.toml")
    card = tmp_path / "card.md"
    r = cli_inproc("audit", str(d / "robust.json"), "--policy", str(policy), "--card", str(card))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [line.split()[:3] for line in r.stdout.splitlines()[2:5]] == [["claim", "1", "reproduced"],
                                                                           ["claim", "2", "reproduced"],
                                                                           ["claim", "3", "reproduced"]]
    text = card.read_text()
    v2 = expected["2"]
    assert (f"| 2: {v2.title} |" in text and f"{v2.diff:.4g} [{v2.ci_low:.4g}, {v2.ci_high:.4g}]" in text
            and "against `" in text)
    # requiring the scale-free check fails the audit, with the claim's own note
    strict = write(d, '[claims]\nreference = "standard.json"\nreps = 200\nrequire = {"1.cv" = ["reproduced", "partly"]}\n',
                   "strict.toml")
    r = cli_inproc("audit", str(d / "robust.json"), "--policy", str(strict))
    assert r.returncode == 1 and "not reproduced" in r.stdout and expected["1.cv"].note[:30] in r.stdout


def test_claims_end_to_end_on_a_model_and_refused_pairings(cli_inproc, claim_reports):
    d = claim_reports
    policy = write(d, '[claims]\nreference = "standard.json"\nreps = 200\nrequire = ["2", "3"]\n', "model.toml")
    args = ["audit", str(d / "robust.pt"), "--arch", TINY_ARCH, "--data", str(d / "tiny.npz"), "--policy", str(policy),
            "--quiet"]
    r = cli_inproc(*args, "-n", "32")  # analyzed in memory, its per-sample values paired with the reference's
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli_inproc(*args, "-n", "16")  # other images than the reference: claims refuse to pair them
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "different samples" in r.stderr and "-n" in r.stderr
    # a reference report without its side file: one line saying how to get one
    (d / "copy").mkdir(exist_ok=True)
    (d / "copy" / "standard.json").write_bytes((d / "standard.json").read_bytes())
    r = cli_inproc("audit", str(d / "robust.json"), "--policy", str(policy), "--reference", str(d / "copy" / "standard.json"))
    assert r.returncode == 2 and "side file" in r.stderr, r.stderr
