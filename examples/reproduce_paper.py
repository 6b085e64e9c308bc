"""Reproduce the checkable claims of Wen, Li & Jia (ICML 2020) on our own eps-sweep.

    python examples/reproduce_paper.py                     # all shipped checkpoints, 1,000 images
    python examples/reproduce_paper.py -n 16 --set smoothness.max_samples=4 --doc /tmp/r.md   # smoke run

For every ``small_cnn_eps<E>.pt`` in ``--checkpoints`` (E in 1/255, Linf PGD training;
see the model card there) it runs every probe with its default settings (``--set``
exists only to make smoke runs cheap) and writes each report with its per-sample side
file into ``--out``; then ``armetrics.claims.evaluate`` gives the verdicts (the rules
are the library's, fixed before any result: docs/claims.md) and ``armetrics.compare``
draws the figures into ``--img``. This script only lays the result out in ``--doc``:
every number and verdict in it comes from ``armetrics.claims``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

import armetrics as am  # noqa: E402
from armetrics import claims  # noqa: E402
from armetrics.options import parse_sets  # noqa: E402

PROBES = ["accuracy", "spectrum", "margin", "confidence", "smoothness", "robust_accuracy"]


def shown(path: Path) -> str:
    """``path`` relative to the working directory (reports and pages carry no absolute paths)."""
    return os.path.relpath(path)


def checkpoints(folder: Path) -> list[tuple[float, Path, dict]]:
    out = []
    for p in folder.glob("small_cnn_eps*.pt"):
        eps = float(re.search(r"eps([\d.]+)\.pt$", p.name).group(1))
        card = p.with_suffix(".json")
        out.append((eps, p, json.loads(card.read_text()) if card.exists() else {}))
    return sorted(out, key=lambda t: t[0])


def run_models(args, models) -> list[am.Report]:
    data = am.load_data(args.data, n=args.n, seed=args.seed)
    options = parse_sets(args.sets)
    args.out.mkdir(parents=True, exist_ok=True)
    reports = []
    for eps, path, card in models:
        print(f"analyzing {path.name} ...", file=sys.stderr, flush=True)
        model = am.load_model(shown(path), arch=f"{shown(HERE / 'models.py')}:small_cnn",
                              arch_kwargs=card.get("arch_kwargs"))
        out = args.out / f"{path.stem}.json"
        report = am.analyze(model, data, PROBES, options=options, seed=args.seed, out_path=out)
        report.data["model"]["eps"] = f"{eps:g}/255"
        report.save(out)
        reports.append(report)
    return reports


def fmt_ci(triple, digits: int = 3) -> str:
    if not triple:
        return "n/a"
    v, lo, hi = triple
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def overview(result: claims.ClaimsResult, reports: list[am.Report]) -> list[str]:
    lines = ["| eps (/255) | clean accuracy | PGD accuracy (probe default) | mean max-prob | median logit margin | ECE |",
             "|---|---|---|---|---|---|"]
    for row, rep in zip(result.models, reports):
        lines.append(f"| {row['label'].removeprefix('eps=').removesuffix('/255')} | {fmt_ci(row.get('accuracy'))} | "
                     f"{rep.summary('robust_accuracy')['robust_accuracy']:.3f} | {fmt_ci(row.get('max_prob_mean'))} | "
                     f"{fmt_ci(row.get('logit_margin_median'))} | {rep.summary('confidence')['ece']:.3f} |")
    cfg, summ = reports[0].config("robust_accuracy"), reports[0].summary("robust_accuracy")
    return lines + ["", f"PGD accuracy: `robust_accuracy` probe, {cfg.get('norm')} eps={summ.get('eps', 0) * 255:.3g}/255, "
                        f"{cfg.get('steps')} steps. Intervals: 95% bootstrap over the test images.", ""]


def diff_text(v: claims.Verdict) -> str:
    ci = f" [{v.ci_low:.3f}, {v.ci_high:.3f}]" if v.ci_low is not None else ""
    return f"{v.diff:+.3f}{ci}" if v.diff is not None else "n/a"


def scalar_section(result, claim: str, heading: str, figures: list[str]) -> list[str]:
    v = result.claim(claim)
    lines = [f"## Claim {claim} — {heading}", "", f"{v.statistic}, most robust minus reference: {diff_text(v)}; {v.note}."]
    for check in (c for c in result.verdicts if c.claim.startswith(claim + ".")):
        lines.append(f"Robustness check `{check.claim}`, {check.statistic}: {diff_text(check)}: *{check.verdict}*; "
                     f"{check.note}.")
    lines += [""] + [f"![{Path(f).stem}]({f})\n" for f in figures]
    return lines + [f"**Verdict: {v.verdict}** (on the {v.statistic.split(' (')[0]}).", ""]


def layer_section(v: claims.Verdict) -> list[str]:
    label = "robustness check (scale-free)" if v.check else "the paper's statistic"
    lines = [f"### `{v.claim}` — {v.statistic}: {label}", ""]
    if v.layers:
        ci = v.layers[0]["ci_low"] is not None
        lines += ["| layer | reference | most robust | difference" + (" [95% CI]" if ci else "") + " | claimed direction |",
                  "|---|---|---|---|---|"]
        for r in v.layers:
            d = f"{r['diff']:+.4g}" + (f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]" if ci else "")
            lines.append(f"| {r['name']} | {r['reference']:.4g} | {r['robust']:.4g} | {d} | {'yes' if r['claimed'] else 'no'} |")
        lines.append("")
    return lines + [f"{v.note}: **{v.verdict}**.", ""]


def document(args, result: claims.ClaimsResult, reports: list[am.Report], eps_list: list[float]) -> str:
    img = os.path.relpath(args.img, args.doc.parent)
    head = [
        "# Reproducing Wen, Li & Jia (ICML 2020) on our own models", "",
        f"Generated by `python examples/reproduce_paper.py` (data: `{args.data}`, n={reports[0].data['data']['n']}, "
        f"seed={args.seed}; probes at their default settings" + (f"; overrides: {', '.join(args.sets)}" if args.sets else "") + ").",
        "Models: `examples/checkpoints/small_cnn_eps{E}.pt`, one network trained on CIFAR-10 with Linf PGD adversarial "
        f"training at eps = {', '.join(f'{e:g}' for e in eps_list)} /255 (model card: `examples/checkpoints/README.md`).",
        "Verdicts: `armetrics.claims.evaluate` (rules, statistics and what a verdict means: [claims.md](claims.md)); "
        "intervals are paired 95% bootstrap intervals over the same test images, covering the sampling of test images, "
        "not training randomness (one training run per eps).", "",
        "## Verdicts", "", result.markdown(notes=False), f"![the paper's four claims at a glance]({img}/headline.png)", "",
        "## Overview", "", *overview(result, reports)]
    body = scalar_section(result, "4", "standard accuracy falls as eps grows", [])
    body += scalar_section(result, "3", "adversarially trained models are less confident",
                           [f"{img}/confidence_hist.png", f"{img}/reliability.png"])
    body += scalar_section(result, "2", "samples end up close to the decision boundary", [f"{img}/margin_hist.png"])
    v1 = result.claim("1")
    body += ["## Claim 1 — layers change features smoothly and uniformly in all directions", "",
             "Judged first on the paper's own statistics (the standard deviation of each layer's singular values, "
             "sigma_max, the feature-change ratios), then on scale-free variants as labelled robustness checks.", ""]
    for v in result.verdicts:
        if v.claim.startswith("1."):
            body += layer_section(v)
    body += [f"![spectrum per layer]({img}/spectrum_layers.png)", "", f"![spectrum distributions]({img}/spectrum_distribution.png)",
             "", f"![smoothness per layer]({img}/smoothness_layers.png)", "", f"**Verdict for claim 1: {v1.verdict}** — {v1.note}", "",
             "## Figures and data", "", f"All figures: `docs/img/reproduction/` (from `armetrics compare`); reports and "
             f"their per-sample side files: `{args.out}/`.", ""]
    return "\n".join(head + body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=Path, default=HERE / "checkpoints")
    ap.add_argument("--data", default="cifar10-sample")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="probe option (smoke runs only)")
    ap.add_argument("--out", type=Path, default=Path("runs/reproduction"), help="reports and per-sample side files")
    ap.add_argument("--img", type=Path, default=HERE.parent / "docs" / "img" / "reproduction")
    ap.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "paper-reproduction.md")
    ap.add_argument("--reuse", action="store_true",
                    help="read the reports (and side files) already in --out instead of analyzing again")
    args = ap.parse_args()

    models = checkpoints(args.checkpoints)
    if len(models) < 2:
        sys.exit(f"error: need at least two small_cnn_eps*.pt in {args.checkpoints}")
    if args.reuse:
        reports = [am.Report.load(args.out / f"{path.stem}.json") for _, path, _ in models]
    else:
        reports = run_models(args, models)
    # the page's verdicts and the document's are one evaluation: the reference is the eps = 0 model
    result = am.compare(reports, out=args.img, claims=True).claims
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(document(args, result, reports, [m[0] for m in models]))
    print(result.markdown(notes=False))


if __name__ == "__main__":
    main()
