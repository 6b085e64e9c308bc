"""``armetrics compare`` and ``armetrics zoo``: thin click commands over
:func:`armetrics.comparison.compare` and :func:`armetrics.zoo.zoo`.

Registered on the group in :mod:`armetrics.cli`; errors are armetrics errors, printed as
one line by :func:`armetrics.cli.main`.
"""

from __future__ import annotations

import json

import click

from . import debug_option


@click.command("compare")
@click.argument("reports", nargs=-1, required=True, metavar="REPORT...")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for summary.csv, the figures (PNG) and index.html.")
@click.option("--against", type=click.Choice(["leaderboard"]), default=None,
              help="Add RobustBench leaderboard robust accuracy and its Spearman correlation with every summary key, "
                   "per dataset and threat model.")
@click.option("--claims/--no-claims", default=None,
              help="Judge the paper's claims (reference vs the others, paired bootstrap) and lead the page with the "
                   "verdicts. Default: when a reference can be identified (one model with eps 0, or --reference).")
@click.option("--reference", default=None, metavar="NAME",
              help="The reference (standard) model for the claims: a model label, name or report file name.")
@debug_option
def compare_cmd(reports, out, against, claims, reference) -> None:
    """Compare REPORT files (or directories of them): the verdicts on the paper's claims, figures,
    a table and an HTML page."""
    from ..comparison import compare

    result = compare(list(reports), out, against=against, claims=claims, reference=reference)
    click.echo(f"compared {len(result.models)} reports: {', '.join(result.models)}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    if result.claims is not None:
        main = [v for v in result.claims.verdicts if "." not in v.claim]
        click.echo("claims: " + ", ".join(f"{v.claim} {v.verdict}" for v in main))
        click.echo(f"wrote {result.claims_json}")
    click.echo(f"wrote {result.summary_csv}")
    if result.correlation_csv is not None:
        click.echo(f"wrote {result.correlation_csv}")
    for path in result.figures.values():
        click.echo(f"wrote {path}")
    click.echo(f"open {result.html}")


@click.command("zoo")
@click.option("--dataset", default="cifar10", show_default=True, help="cifar10, cifar100, imagenet or all.")
@click.option("--threat-model", default="Linf", show_default=True, help="Linf, L2, corruptions or all.")
@click.option("--model-dir", default="models", show_default=True,
              help="Where weights are looked for (DIR/<dataset>/<threat>/<NAME>.pt).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON (accuracies as fractions).")
@debug_option
def zoo_cmd(dataset, threat_model, model_dir, as_json) -> None:
    """List the RobustBench models with leaderboard accuracy and whether their weights are in --model-dir.

    The table goes to stdout; to stderr, a summary and, for every weight file not in
    --model-dir, the path it must be placed at and the URL robustbench downloads it from."""
    from ..zoo import format_table, zoo

    rows = zoo(dataset, threat_model, model_dir)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(format_table(rows))
    present = sum(r["weights_present"] for r in rows)
    click.echo(f"{len(rows)} models for {dataset}/{threat_model}; weights present for {present} in {model_dir}. "
               f"Accuracies: RobustBench leaderboard (robust = AutoAttack, or a stronger external evaluation).",
               err=True)
    missing = [m for r in rows for m in r["missing_weights"]]
    if missing:
        click.echo(f"{len(missing)} weight files missing; armetrics never downloads: fetch each from its source "
                   f"and place it at its path:", err=True)
    for m in missing:
        click.echo(f"  {m['path']}  <-  {m['source'] or '(robustbench records no source)'}", err=True)
