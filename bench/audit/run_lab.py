"""Run the audit checks on planted-fault datasets and print the score table.

Usage (graftwork's venv):
    nice -n 19 python bench/audit/run_lab.py [DATASET_DIR ...] [--cache .cache/graftwork]
        [--cold] [--json OUT.json]

Each DATASET_DIR is made by make_faults.py (it has truth.json). ``--cold`` extracts into a fresh
cache folder (removed after) to time the whole audit from files; the cached run always follows.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checks  # noqa: E402
from lab_data import load  # noqa: E402
from score import score as score_found  # noqa: E402

DEFAULT = [str(Path(__file__).resolve().parents[1] / "data" / "audit-faults" / f"{n}-s{s}")
           for s in (0, 1, 2) for n in ("fmnist-faults", "mnist-faults")]


def audit(root: Path, cache: Path) -> tuple[dict, dict, float]:
    """(loaded arrays, check results, wall seconds); res["cpu_seconds"] is load-independent."""
    t0 = time.perf_counter()
    c0 = sum(os.times()[:4])  # CPU seconds of this process and its (joined) decode workers
    d = load(root, cache)
    t1 = time.perf_counter()
    res = {"labels": checks.label_issues(d["features"], d["labels"]),
           "dups": checks.duplicate_groups(d["features"], d["thumbs"], d["file_digests"],
                                           d["pixel_digests"], d["splits"]),
           "outliers": checks.outliers(d["features"])}
    t2 = time.perf_counter()
    res["cpu_seconds"] = round(sum(os.times()[:4]) - c0, 1)
    res["seconds"] = {"load": round(t1 - t0, 1), "checks": round(t2 - t1, 1),
                      **{k: round(v, 1) for k, v in d["seconds"].items()}}
    return d, res, t2 - t0


def score(root: Path, d: dict, res: dict) -> dict:
    """score.score of the lab's index-based results (rows of ``d["paths"]``)."""
    rel = [str(Path(p).relative_to(root)) for p in d["paths"]]
    found = {"labels": [rel[x["index"]] for x in res["labels"]],
             "groups": [{"paths": [rel[m] for m in g["members"]], "kind": g["kind"]}
                        for g in res["dups"]],
             "outliers": [rel[x["index"]] for x in res["outliers"]]}
    return score_found(root, found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=DEFAULT)
    ap.add_argument("--cache", type=Path, default=Path(".cache/graftwork"))
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    for ds in map(Path, a.datasets):
        cold = None
        if a.cold:
            tmp = Path(tempfile.mkdtemp(prefix="audit-cold-"))
            try:
                _, _, cold = audit(ds, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        d, res, cached = audit(ds, a.cache)
        row = score(ds, d, res)
        row["seconds_cold"] = None if cold is None else round(cold, 1)
        row["seconds_cached"] = round(cached, 1)
        row["seconds_parts"] = res["seconds"]
        row["cpu_seconds_cached"] = res["cpu_seconds"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["dataset", "label_recall", "label_precision", "flagged", "exact_found",
            "exact_pixels_found", "near_found", "groups", "outliers_in_list", "outlier_list",
            "seconds_cold", "seconds_cached", "cpu_seconds_cached"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
