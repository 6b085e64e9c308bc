"""``armetrics audit MODEL|REPORT --policy POLICY [--card card.md]``: a thin command over
:func:`armetrics.auditing.audit`.

A ``.json`` argument is a report written by ``armetrics analyze`` and is audited as it
is; anything else is a model, analyzed first with the probes the policy reads (and,
when it requires claims, those of the reference report, with their options), loaded
with ``analyze``'s own options and code (:mod:`armetrics.cli.analyze`).

Exit codes, so that it drops into CI: 0 every check passed, 1 some check failed, 2 the
audit could not be made (a usage error: a bad policy, an unknown key, a missing file, a
report without a probe the policy needs, a model that does not load). Errors are one
line ``error: ...``; ``--debug`` prints the traceback first (the exit code stays 2).
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from pathlib import Path

import click

from ..errors import ArmetricsError, first_line, one_line, shorten
from . import MESSAGE_LIMIT, Session, debug_option

#: ``analyze``'s options that ``audit`` takes too, for a MODEL (the same click parameters:
#: one definition, one help text)
LOADING_OPTIONS = ("arch", "arch_kwargs", "data_src", "n", "batch_size", "seed", "device", "sets", "mean", "std",
                   "model_dir", "dataset", "threat_model", "trust_code")


class AuditUsageError(click.ClickException):
    """The audit could not be made: one line ``error: ...``, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


@contextlib.contextmanager
def _exit_2():
    """Every error while auditing becomes :class:`AuditUsageError` (exit 2): exit code 1
    means "a check failed" and nothing else. With ``--debug`` the traceback is printed
    first. (Ctrl-C is not an error here: it stays 130.)"""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        session = click.get_current_context().find_object(Session)
        if session is not None and session.debug:
            traceback.print_exc()
        if isinstance(exc, ArmetricsError):
            message = str(exc)
        else:
            message = f"unexpected {type(exc).__name__}: {first_line(exc, 300)} (rerun with --debug for a traceback)"
        raise AuditUsageError(shorten(one_line(message), MESSAGE_LIMIT)) from exc


def _with_loading_options(command: click.Command) -> click.Command:
    from .analyze import analyze_cmd

    params = {p.name: p for p in analyze_cmd.params}
    at = next(i for i, p in enumerate(command.params) if p.name == "quiet")  # after audit's own options
    command.params[at:at] = [params[name] for name in LOADING_OPTIONS]
    return command


@_with_loading_options
@click.command("audit")
@click.argument("target", metavar="MODEL|REPORT")
@click.option("--policy", required=True, metavar="POLICY.toml",
              help="The policy: thresholds on summary keys and required claims (docs/audit.md).")
@click.option("--reference", metavar="REPORT.json", help="The reference report of the policy's claims "
              "(instead of its claims.reference).")
@click.option("--card", type=click.Path(dir_okay=False), metavar="CARD.md",
              help="Write a Markdown model-card section here (atomically).")
@click.option("--figures", type=click.Path(file_okay=False), metavar="DIR",
              help="With --card: the --out directory of armetrics compare, whose page and figures the card links.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the table.")
@click.option("--quiet", is_flag=True, help="No progress bar or notes.")
@debug_option
def audit_cmd(target, policy, reference, card, figures, as_json, quiet, **load) -> None:
    """Check MODEL (analyzed first) or REPORT (.json) against POLICY: exit 0 if every check passes, 1 if one
    fails, 2 if the audit cannot be made."""
    from ..auditing import audit, check_reference, load_policy

    if figures is not None and card is None:
        raise click.UsageError("--figures goes with --card (the card links the figures)")
    with _exit_2():
        pol = load_policy(policy)
        check_reference(pol, reference)
        is_report = target.lower().endswith(".json")
        inputs = [target, policy, reference if reference is not None else pol.reference]
        if not is_report:
            from .analyze import _input_files

            inputs += _input_files([target], load["arch"], load["data_src"], load)
        if card:
            from ..report import check_output_path

            check_output_path(card, inputs, what="--card")  # before any work: a wrong --card costs nothing
        subject = target if is_report else _analyze(target, pol, reference, load, quiet)
        result = audit(subject, pol, reference=reference)
        if card:
            from ..report import atomic_write_text

            atomic_write_text(card, result.markdown(figures=figures, card_dir=Path(card).parent))
    click.echo(json.dumps(result.to_dict(), indent=1, allow_nan=False) if as_json else result.table())
    if card and not quiet:
        click.echo(f"card written to {one_line(card)}", err=True)
    sys.exit(0 if result.passed else 1)


def _analyze(target: str, pol, reference: str | None, load: dict, quiet: bool):
    """Analyze the model ``target`` with the probes ``pol`` reads — with claims, also the
    reference report's probes, run with the reference's options unless ``--set`` gives
    others — loaded as ``armetrics analyze`` loads it. Returns the report (in memory)."""
    from .. import checks
    from ..auditing import PolicyError
    from ..engine import analyze as run_analysis, make_probes
    from ..options import parse_sets
    from ..report import Report
    from .analyze import PROBE_ORDER, _arch_kwargs, _data_spec, _floats, _load_model_and_data

    device = load["device"]
    checks.device(device)
    checks.seed(load["seed"], "--seed", allow_none=False)
    checks.integer(load["batch_size"], "--batch-size", minimum=1)
    if load["n"] is not None:
        checks.integer(load["n"], "-n", minimum=1)
    options: dict[str, dict] = {}
    probes = list(pol.probes)
    ref_path = reference if reference is not None else pol.reference
    if pol.claims and ref_path is not None:
        ref = Report.load(ref_path)
        for name in ref.probes:
            probes.append(name)
            options[name] = dict(ref.config(name))
    for name, opts in parse_sets(load["sets"]).items():
        if name not in probes:
            raise PolicyError(f"--set names probe {name!r}, which the audit does not run: it runs the probes the "
                              f"policy reads ({', '.join(dict.fromkeys(probes))})")
        options.setdefault(name, {}).update(opts)
    rank = {name: i for i, name in enumerate(PROBE_ORDER)}
    probes = sorted(dict.fromkeys(probes), key=lambda p: (rank.get(p, len(rank)), p))
    selected = make_probes(probes, options)  # unknown probes and options fail here, before any loading
    arch = load["arch"]
    load_kwargs = dict(arch=arch, arch_kwargs=_arch_kwargs(load["arch_kwargs"]), trust_code=load["trust_code"],
                       model_dir=load["model_dir"], dataset=load["dataset"], threat_model=load["threat_model"],
                       mean=_floats(load["mean"], "--mean"), std=_floats(load["std"], "--std"), device=device)
    needs_data = any(p.needs_data for p in selected)
    spec = _data_spec([target], arch, load_kwargs, False, needs_data, load["data_src"], None, None, None, load["n"],
                      load["batch_size"], load["seed"])
    model, data = _load_model_and_data(target, arch, load_kwargs, spec)
    if not quiet:
        click.echo(f"analyzing {one_line(target)} with {', '.join(probes)} ...", err=True)
    return run_analysis(model, data, probes, options=options, seed=load["seed"], device=device,
                        progress=False if quiet else None)
