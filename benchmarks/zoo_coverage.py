"""Every RobustBench zoo entry, entry by entry: built with random weights, saved the way
RobustBench distributes it, loaded by name through armetrics and through robustbench's
own ``load_model`` (logits compared), and analyzed from the command line with
``spectrum`` (reshape and fft) and every data probe on a few images of the right shape.

    python benchmarks/zoo_coverage.py                   # all entries not done yet
    python benchmarks/zoo_coverage.py --only cifar10/Linf --limit 5
    python benchmarks/zoo_coverage.py --redo Standard    # names matching a glob again
    python benchmarks/zoo_coverage.py --no-fft           # skip spectrum method=fft (slow on WRN-70-16)

Resumable and bounded in memory: each entry runs in a child process of its own (one
model in memory at a time, its files in a temporary directory removed afterwards), and
its row is appended to ``benchmarks/zoo_coverage.jsonl`` as soon as it is done;
``docs/zoo-coverage.md`` is rewritten from all rows after each entry. The zoo is
enumerated from ``robustbench.model_zoo.model_dicts``, never from a typed list.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROWS = HERE / "zoo_coverage.jsonl"
PAGE = ROOT / "docs" / "zoo-coverage.md"
#: the data probes run on every entry, with options that keep a 270M-parameter model to minutes
PROBES = "accuracy,margin,confidence,smoothness,robust_accuracy"
CHEAP = ["--set", "smoothness.layers=logits", "--set", "smoothness.iters=2", "--set", "smoothness.directions=1",
         "--set", "smoothness.pgd_steps=1", "--set", "smoothness.bootstrap=0", "--set", "robust_accuracy.steps=2"]
IMAGES = 2


def entries() -> list[tuple[str, str, str]]:
    """(dataset, threat model, name) of every zoo entry robustbench 1.1.1 registers."""
    from armetrics._robustbench import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts

    return [(ds.value, tm.value, name) for ds, by_threat in model_dicts.items()
            for tm, models in by_threat.items() for name in models]


def census(todo: list[tuple[str, str, str]]) -> dict[str, tuple[int | None, str | None]]:
    """Per entry: (parameters, its architecture signature: armetrics.signature's digest
    of the canonical key names and shapes), from the architecture built without weights
    (``signature.build_empty``, ~30 s for the whole zoo); (None, None) for an entry that
    cannot be built."""
    from armetrics import signature
    from armetrics._robustbench import architecture

    out = {}
    for ds, tm, name in todo:
        try:
            model = signature.build_empty(lambda: architecture(name, ds, tm))
        except Exception:
            out[key(ds, tm, name)] = (None, None)
            continue
        out[key(ds, tm, name)] = (int(sum(p.numel() for p in model.parameters())),
                                  signature.digest(signature.canonical(signature.shapes_of(model.state_dict()))))
        del model
    return out


def done_rows() -> dict[str, dict]:
    if not ROWS.exists():
        return {}
    rows = {}
    for line in ROWS.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[key(r["dataset"], r["threat_model"], r["name"])] = r
    return rows


def key(dataset: str, threat: str, name: str) -> str:
    return f"{dataset}/{threat}/{name}"


# ------------------------------------------------------------------ the child: one entry
def _distributed_files(name: str, dataset: str, threat: str, model_dir: str):
    """The entry built with random weights, and what RobustBench's download would put in
    ``model_dir``: path -> object to ``torch.save``, undoing what its ``load_model`` does
    to a file (the ``last`` wrappers, the ``model.`` prefix it adds to ImageNet
    state_dicts, one file per ensemble member in the part robustbench loads it into,
    timm/torchvision downloads as the network's own weights)."""
    from armetrics import _robustbench as rbm

    built = rbm.build(name, dataset, threat)
    model = built.model
    paths = rbm.weight_paths(name, model_dir, dataset, threat)
    if built.pretrained:
        objs = [slot.module.state_dict() for slot in built.pretrained]
    elif len(paths) > 1:
        objs = []
        for i in range(len(paths)):
            parts = rbm._ensemble_parts(name, model, i)
            module = parts[0][0]
            if dataset == "imagenet" and rbm._swin_inside(module) is not None:
                module = rbm._swin_inside(module)  # the bare Swin: robustbench adds ``model.``
            objs.append(module.state_dict() if parts[0][1] is None else
                        {key: module.state_dict() for module, key in parts})
    else:
        sd = model.state_dict()
        if dataset == "imagenet" and any(k.startswith("model.") for k in sd):
            sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        if "Kireev2021Effectiveness" in name or name == "Andriushchenko2020Understanding":
            sd = {"last": sd}
        objs = [sd]
    return model, dict(zip(paths, objs))


def _inputs(dataset: str, n: int, seed: int = 0):
    import torch

    size = 224 if dataset == "imagenet" else 32
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def child(dataset: str, threat: str, name: str, no_fft: bool) -> dict:
    """Build, save, load both ways, compare logits, analyze from the CLI; one row."""
    import numpy as np
    import torch

    from armetrics.errors import first_line

    row: dict = {"dataset": dataset, "threat_model": threat, "name": name}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model, files = _distributed_files(name, dataset, threat, tmp)
        except Exception as exc:  # robustbench itself cannot build it here: the row says why
            return {**row, "load_ok": False, "reason": f"{type(exc).__name__}: {first_line(exc)[:300]}"}
        row["architecture"] = type(model).__name__
        row["parameters"] = int(sum(p.numel() for p in model.parameters()))
        Path(tmp, dataset, threat).mkdir(parents=True)
        for path, obj in files.items():
            torch.save(obj, path)
        del model, files
        x = _inputs(dataset, IMAGES)
        row.update(_compare_logits(name, dataset, threat, tmp, x))
        if row.get("load_ok"):
            data = Path(tmp) / "images.npz"
            classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
            np.savez(data, x=(x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8),
                     y=np.arange(IMAGES) % classes)
            row.update(_analyze(name, dataset, threat, tmp, data, no_fft))
        if "reason" in row:  # the page names no temporary path
            row["reason"] = row["reason"].replace(tmp, "DIR")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _compare_logits(name: str, dataset: str, threat: str, model_dir: str, x) -> dict:
    import torch

    import armetrics as am
    from armetrics._robustbench import import_robustbench
    from armetrics.functional import first_output

    rb = import_robustbench()
    try:
        ours = am.load_model(f"robustbench:{dataset}/{threat}/{name}", model_dir=model_dir)
    except Exception as exc:
        return {"load_ok": False, "reason": f"armetrics: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    with torch.no_grad():
        a = ours(x)
    del ours
    path = next(Path(model_dir, dataset, threat).glob(f"{name}.pt*"))

    def local(url, *args, **kwargs):  # timm/torchvision entries: robustbench's download answered by the file
        return torch.load(path, map_location="cpu", weights_only=True)

    try:
        with mock.patch("timm.models._builder.load_state_dict_from_url", local), \
                mock.patch("torchvision.models._api.load_state_dict_from_url", local):
            theirs = rb.utils.load_model(model_name=name, model_dir=model_dir, dataset=dataset, threat_model=threat)
    except Exception as exc:
        return {"load_ok": True, "logits_equal": None,
                "reason": f"robustbench's load_model: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    with torch.no_grad():
        b = theirs(x)
    a, b = first_output(a), first_output(b)
    diff = float((a - b).abs().max())
    return {"load_ok": True, "logits_equal": bool(torch.allclose(a, b, rtol=1e-5, atol=1e-5)), "logits_max_diff": diff}


def _analyze(name: str, dataset: str, threat: str, model_dir: str, data: Path, no_fft: bool) -> dict:
    """The real command lines, in subprocesses (exit status and the error line kept)."""
    spec = f"robustbench:{dataset}/{threat}/{name}"
    base = [sys.executable, "-m", "armetrics", "analyze", spec, "--model-dir", model_dir, "--data", str(data),
            "--quiet", "--batch-size", str(IMAGES)]
    runs = {"data_probes": [*base, "--probes", f"spectrum,{PROBES}", *CHEAP, "--out", f"{model_dir}/r.json"]}
    if not no_fft:
        runs["spectrum_fft"] = [*base, "--probes", "spectrum", "--set", "spectrum.method=fft",
                                "--out", f"{model_dir}/fft.json"]
    out: dict = {"probes_ok": True}
    for what, cmd in runs.items():
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out[f"{what}_seconds"] = round(time.perf_counter() - t, 1)
        if proc.returncode != 0:
            out["probes_ok"] = False
            out.setdefault("reason", f"{what}: exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}")
    return out


# ------------------------------------------------------------------ the page
def write_page(rows: dict[str, dict], todo: list[tuple[str, str, str]]) -> None:
    """``docs/zoo-coverage.md``: one row per entry robustbench registers, run or not yet."""
    total = len(todo)
    pending = [{"dataset": d, "threat_model": t, "name": n, "reason": "not run yet"}
               for d, t, n in todo if key(d, t, n) not in rows]
    run = [r for r in rows.values() if (r["dataset"], r["threat_model"], r["name"]) in set(todo)]
    ordered = sorted(run + pending, key=lambda r: (r["dataset"], r["threat_model"], r["name"]))
    ok = sum(1 for r in run if r.get("load_ok") and r.get("logits_equal") and r.get("probes_ok"))
    lines = ["# RobustBench zoo coverage", "",
             f"Produced by `python benchmarks/zoo_coverage.py` on this project's 2-core CPU machine "
             f"({time.strftime('%Y-%m-%d')}): {len(run)} of the {total} entries robustbench 1.1.1 registers "
             f"have been run; {ok} load by name, give robustbench's logits and run every probe. Each entry: "
             f"random weights saved as RobustBench distributes them, loaded by "
             f"`armetrics.load_model('robustbench:D/T/NAME')` and by robustbench's `load_model` (logits on "
             f"{IMAGES} random images, `allclose` at 1e-5), then `armetrics analyze` with spectrum and "
             f"`{PROBES}` (cheap options: `{' '.join(CHEAP[1::2])}`) and `spectrum.method=fft`. The fft run is "
             f"made once per architecture signature (the state_dict's key names and shapes); an entry "
             f"sharing the signature of one whose fft run passed shows `= THAT_ENTRY` in the fft column.", "",
             "| dataset | threat | entry | architecture | parameters | load | logits equal | probes | fft s | seconds | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ordered:
        params = f"{r['parameters'] / 1e6:.1f}M" if r.get("parameters") else ""
        equal = {True: "yes", False: "NO", None: ""}[r.get("logits_equal")]
        probes = {True: "yes", False: "NO", None: ""}[r.get("probes_ok")]
        reason = str(r.get("reason", "")).replace("|", "\\|")
        fft = r.get("spectrum_fft_seconds", "not run" if r.get("probes_ok") is not None else "")
        if r.get("spectrum_fft_same_as"):
            fft = f"= {r['spectrum_fft_same_as'].split('/', 2)[2]}"
        load = "" if "load_ok" not in r else "yes" if r["load_ok"] else "NO"
        lines.append(f"| {r['dataset']} | {r['threat_model']} | {r['name']} | {r.get('architecture', '')} | {params} | "
                     f"{load} | {equal} | {probes} | {fft} | {r.get('seconds', '')} | {reason} |")
    PAGE.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="DATASET or DATASET/THREAT to run (default: all)")
    ap.add_argument("--redo", help="glob of entry names to run again")
    ap.add_argument("--limit", type=int, help="at most N entries this time")
    ap.add_argument("--no-fft", action="store_true", help="skip the spectrum method=fft run")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per entry (default 1800)")
    ap.add_argument("--child", nargs=3, metavar=("DATASET", "THREAT", "NAME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, no_fft=args.no_fft)))
        return
    run_all(args)


def run_all(args) -> None:
    """Entries not done yet (or matching --redo), smallest first; ``spectrum.method=fft``
    once per distinct architecture signature: an entry whose state_dict has the key names
    and shapes of one whose fft run passed points at that row (the fft spectrum reads
    the same layers through the same code; running it again proves nothing new)."""
    todo = entries()
    rows = done_rows()
    selected = [e for e in todo if not args.only or key(*e).startswith(args.only.rstrip("/") + "/")]
    selected = [e for e in selected if key(*e) not in rows or (args.redo and fnmatch.fnmatch(e[2], args.redo))]
    sizes = census(todo)
    selected.sort(key=lambda e: (sizes[key(*e)][0] is None, sizes[key(*e)][0] or 0))
    for dataset, threat, name in selected[: args.limit]:
        k = key(dataset, threat, name)
        print(f"# {k} ...", file=sys.stderr, flush=True)
        twin = _fft_twin(k, sizes, rows)
        cmd = [sys.executable, __file__, "--child", dataset, threat, name]
        if args.no_fft or twin:
            cmd.append("--no-fft")
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
            lines = proc.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "dataset": dataset, "threat_model": threat, "name": name, "load_ok": False,
                "reason": f"child exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"}
        except subprocess.TimeoutExpired:
            row = {"dataset": dataset, "threat_model": threat, "name": name, "load_ok": False,
                   "reason": f"over the {args.timeout} s limit of this run"}
        if twin and row.get("probes_ok"):
            row["spectrum_fft_same_as"] = twin
        row.setdefault("seconds", round(time.perf_counter() - t, 1))
        rows[k] = row
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_page(rows, todo)
        print(json.dumps(row), flush=True)


def _fft_twin(k: str, sizes: dict, rows: dict[str, dict]) -> str | None:
    """A done entry with ``k``'s architecture signature whose own fft run passed."""
    sig = sizes.get(k, (None, None))[1]
    if sig is None:
        return None
    for other, row in rows.items():
        if other != k and sizes.get(other, (None, None))[1] == sig and row.get("probes_ok") \
                and "spectrum_fft_seconds" in row:
            return other
    return None


if __name__ == "__main__":
    main()
