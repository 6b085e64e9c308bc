"""Identifying a checkpoint's architecture from its weights (armetrics.signature):

1. building the index cold (every RobustBench zoo entry, torchvision classification
   model and timm model, on the meta device), wall time and peak memory, in a child
   process with an empty cache directory;
2. ``armetrics analyze W.pt --probes spectrum`` with a warm index and no ``--arch``
   against the same command with the explicit ``--arch``, whole process, side by side
   (best of ``--repeat``), for a zoo WRN-28-10 and torchvision / timm models.

    python benchmarks/identify.py                # both
    python benchmarks/identify.py --skip-build   # only 2 (builds the index if missing)

Goals (issue 18): warm identification <= 2 s beyond the explicit --arch; a cold build
<= 5 minutes and <= 1 GB on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ["robustbench:cifar10/Linf/Carmon2019Unlabeled", "torchvision.models:mobilenet_v3_large",
         "timm.models.convnext:convnext_tiny"]


def cold_build(cache: Path) -> dict:
    # what `armetrics analyze W.pt` does on a cold cache: signature.index() builds in a child
    # interpreter; peak_rss_mb is that builder's ru_maxrss, caller_rss_mb the calling process's
    code = ("import json, resource, time; from armetrics import signature as s; t = time.perf_counter(); "
            "s.index(); p = s._index_paths()[0]; i = json.loads(p.read_text()); "
            "print(json.dumps({'seconds': round(time.perf_counter() - t, 1), 'candidates': len(i['candidates']), "
            "'skipped': len(i['skipped']), 'distinct_signatures': len({c['digest'] for c in i['candidates']}), "
            "'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024), "
            "'caller_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ARMETRICS_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["process_seconds"] = round(time.perf_counter() - t, 1)
    return row


def _run(args: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "armetrics", "analyze", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"armetrics analyze {' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t


def warm(cache: Path, repeat: int) -> list[dict]:
    import torch

    from armetrics.loading import build_arch

    env = {**os.environ, "ARMETRICS_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in CASES:
            torch.manual_seed(0)
            path = Path(tmp) / "w.pt"
            torch.save(build_arch(spec).state_dict(), path)
            base = [str(path), "--probes", "spectrum", "--quiet", "--out", f"{tmp}/r.json"]
            explicit, inferred = [], []
            for _ in range(repeat):  # interleaved: the machine's load hits both alike
                explicit.append(_run([*base, "--arch", spec], env))
                inferred.append(_run(base, env))
            rows.append({"spec": spec, "explicit_s": round(min(explicit), 2), "identified_s": round(min(inferred), 2),
                         "extra_s": round(min(inferred) - min(explicit), 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        if not args.skip_build:
            print(json.dumps({"cold_build": cold_build(Path(cache))}), flush=True)
        else:
            cache = os.environ.get("ARMETRICS_CACHE_DIR") or cache
        warm(Path(cache), args.repeat)


if __name__ == "__main__":
    main()
