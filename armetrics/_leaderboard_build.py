"""Build ``armetrics/_data/robustbench-model-info.json`` (the shipped leaderboard) from
RobustBench's leaderboard records, one record per (dataset, threat model, model).

    python -m armetrics._leaderboard_build SOURCE [--out FILE] [--commit SHA]

``SOURCE`` is either

- a RobustBench checkout's ``model_info/`` folder: ``model_info/<dataset>/<threat>/<model>.json``.
  The dataset, threat model and name are taken from the **path**, never from the record's
  own ``dataset`` field: RobustBench copies that field between files and it is wrong in
  some (``model_info/cifar100/corruptions/Hendrycks2020AugMix_ResNeXt.json`` says
  ``"dataset": "cifar10"``);
- or a flattened file ``{"source", "note", "models": [...]}`` whose records carry
  ``dataset``/``threat_model``/``model`` (``/work/shared/data/robustbench-model-info.json``,
  made from that folder with the ``dataset`` *field*, so three CIFAR-100 records came out
  labelled ``cifar10``). Its paths are gone; where several different records share one
  key, each one's dataset is inferred from its own fields (:func:`resolve_collisions`).

The output has the flattened layout (records sorted by key, ``json.dumps(indent=1)``),
no two records with one key, and ``relabelled``: every record whose dataset was changed,
with the evidence.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .errors import DataError
from .zoo import LEADERBOARD_FILE, _snap_255, duplicate_keys, parse_eps, parse_percent

KEY_FIELDS = ("dataset", "threat_model", "model")
#: the best dataset assignment of colliding records must beat the next one by this many
#: percentage points of summed |clean accuracy - the dataset's median clean accuracy|
MIN_MARGIN = 5.0
DEFAULT_OUT = Path(__file__).resolve().parent / "_data" / LEADERBOARD_FILE


def key_of(rec: dict[str, Any]) -> tuple[str, str, str]:
    """``(dataset, threat_model, model)`` of a flattened record."""
    return rec.get("dataset"), rec.get("threat_model"), rec.get("model")


def records_from_model_info(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every ``root/<dataset>/<threat>/<model>.json`` as a flattened record keyed by its
    path; also the records whose own ``dataset`` field disagreed with the path."""
    records, relabelled = [], []
    for path in sorted(Path(root).glob("*/*/*.json")):
        dataset, threat, model = path.parent.parent.name, path.parent.name, path.stem
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise DataError(f"{path} is not a JSON object: is {root} RobustBench's model_info/ folder?")
        field = raw.get("dataset")
        rec = {"dataset": dataset, "threat_model": threat, "model": model,
               **{k: v for k, v in raw.items() if k not in KEY_FIELDS}}
        if field is not None and field != dataset:
            relabelled.append({"threat_model": threat, "model": model, "from": field, "to": dataset,
                               "clean_acc": raw.get("clean_acc"), "evidence": f"path {dataset}/{threat}/{path.name}"})
        records.append(rec)
    if not records:
        raise DataError(f"{root} holds no <dataset>/<threat>/<model>.json: pass RobustBench's model_info/ folder")
    return records, relabelled


def _eps(rec: dict[str, Any]) -> float | None:
    return _snap_255(parse_eps(rec.get("eps")))


def _profiles(unique: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (dataset, threat model) of the records with a key of their own: the radii
    used, the fields every record has and the median clean accuracy (percent)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rec in unique:
        groups[(rec["dataset"], rec["threat_model"])].append(rec)
    out = {}
    for group, recs in groups.items():
        clean = [parse_percent(r.get("clean_acc")) for r in recs]
        clean = [100 * c for c in clean if c is not None]
        out[group] = {"eps": {_eps(r) for r in recs}, "fields": set.intersection(*(set(r) for r in recs)),
                      "models": {r["model"] for r in recs}, "clean": statistics.median(clean) if clean else None}
    return out


def _candidates(key: tuple[str, str, str], recs: list[dict[str, Any]],
                profiles: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The datasets the records of ``key`` may belong to: the labelled one and every other
    dataset with this threat model that lacks the model, uses these radii, and every field
    of which every record has is also in each of these records."""
    dataset, threat, model = key
    common = set.intersection(*(set(r) for r in recs))
    out = [dataset]
    for (ds, tm), prof in sorted(profiles.items()):
        if tm != threat or ds == dataset or model in prof["models"] or prof["clean"] is None:
            continue
        if all(_eps(r) in prof["eps"] for r in recs) and prof["fields"] <= common:
            out.append(ds)
    return out


def _assign(key: tuple[str, str, str], recs: list[dict[str, Any]], candidates: list[str],
            profiles: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """One dataset per record (all different), the assignment whose clean accuracies lie
    closest to the datasets' medians; DataError naming the key when it is not clear."""
    where = "/".join(key)
    clean = [parse_percent(r.get("clean_acc")) for r in recs]
    if any(c is None for c in clean) or len(candidates) < len(recs):
        raise DataError(f"{len(recs)} different records share the key {where} and their fields do not tell their "
                        f"datasets apart: build from RobustBench's model_info/ folder (dataset from the path)")
    medians = {ds: profiles.get((ds, key[1]), {}).get("clean") for ds in candidates}
    scored = []
    for perm in itertools.permutations(candidates, len(recs)):
        cost = sum(abs(100 * c - (medians[ds] if medians[ds] is not None else 100 * c)) for c, ds in zip(clean, perm))
        scored.append((cost, perm))
    scored.sort()
    if len(scored) > 1 and scored[1][0] - scored[0][0] < MIN_MARGIN:
        raise DataError(f"cannot tell which dataset each record of {where} belongs to (clean accuracies too close to "
                        f"call): build from RobustBench's model_info/ folder (dataset from the path)")
    return list(scored[0][1])


def resolve_collisions(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Give every record of a flattened file a key of its own: identical copies are merged;
    records that differ but share a key get, one each, the labelled dataset or another
    with this threat model that is consistent with their radius and fields, the one whose
    median clean accuracy (over the records that were never in doubt) is closest to theirs.
    Returns the records and what was relabelled."""
    by_key: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        if rec not in by_key[key_of(rec)]:
            by_key[key_of(rec)].append(rec)
    profiles = _profiles([recs[0] for recs in by_key.values() if len(recs) == 1])
    out, relabelled = [], []
    for key, recs in by_key.items():
        if len(recs) == 1:
            out.append(recs[0])
            continue
        candidates = _candidates(key, recs, profiles)
        medians = ", ".join(f"{ds} {profiles[(ds, key[1])]['clean']:.2f}" for ds in candidates
                            if profiles.get((ds, key[1]), {}).get("clean") is not None)
        for rec, ds in zip(recs, _assign(key, recs, candidates, profiles)):
            out.append({**rec, "dataset": ds})
            if ds != key[0]:
                relabelled.append({"threat_model": key[1], "model": key[2], "from": key[0], "to": ds,
                                   "clean_acc": rec.get("clean_acc"),
                                   "evidence": f"{len(recs)} different records labelled {'/'.join(key)}; the "
                                               f"datasets their radius and fields fit: {', '.join(candidates)}; "
                                               f"median clean accuracy of {key[1]} records: {medians}; "
                                               f"assignment closest to those medians"})
    return out, relabelled


def build(source: Path, commit: str | None = None) -> dict[str, Any]:
    """The leaderboard document from a ``model_info/`` folder or a flattened file."""
    source = Path(source)
    if source.is_dir():
        records, relabelled = records_from_model_info(source)
        origin = "RobustBench model_info/ (MIT license)" + (f", commit {commit}" if commit else "")
        note = "accuracies are percent strings as published; external overrides autoattack_acc where present"
    else:
        doc = json.loads(source.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
            raise DataError(f"{source} is neither a model_info/ folder nor a file with a 'models' list: pass one of them")
        records, relabelled = resolve_collisions(doc["models"])
        origin, note = doc.get("source", str(source)), doc.get("note", "")
    records.sort(key=lambda r: tuple(str(v) for v in key_of(r)))
    dups = duplicate_keys(records)
    if dups:
        raise DataError(f"leaderboard key {'/'.join(map(str, dups[0]))} is still not unique after the build: "
                        f"report it (armetrics/_leaderboard_build.py)")
    relabelled.sort(key=lambda r: (r["threat_model"], r["model"], r["to"]))
    return {"source": origin, "note": note, "relabelled": relabelled, "models": records}


def main(argv: list[str] | None = None) -> int:
    """``python -m armetrics._leaderboard_build SOURCE [--out FILE] [--commit SHA]``."""
    parser = argparse.ArgumentParser(prog="python -m armetrics._leaderboard_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="RobustBench's model_info/ folder, or a flattened records file")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write (default: the shipped file)")
    parser.add_argument("--commit", help="the RobustBench commit of a model_info/ folder, recorded in 'source'")
    args = parser.parse_args(argv)
    try:
        doc = build(args.source, args.commit)
    except (DataError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for r in doc["relabelled"]:
        print(f"relabelled {r['from']}/{r['threat_model']}/{r['model']} (clean {r['clean_acc']}) -> {r['to']}")
    print(f"wrote {len(doc['models'])} records to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
