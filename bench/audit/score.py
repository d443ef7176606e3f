"""Score ``graftwork.audit`` (the product, not the lab functions) on planted-fault folders.

    python bench/audit/score.py DATASET_DIR [...] [--cache DIR] [--cold]

Each DATASET_DIR is made by make_faults.py (it holds truth.json). ``--cold`` first audits with
an empty cache (features extracted: the whole audit from files); the cached run follows.
Prints one JSON row per dataset and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import graftwork


def score(root: Path, result: Any) -> dict[str, Any]:
    truth = json.loads((root / "truth.json").read_text())
    flips = {f["path"] for f in truth["flips"]}
    flagged = [r["path"] for r in result.label_issues]
    hit = len(flips & set(flagged))
    group = {p: g for g, grp in enumerate(result.duplicates) for p in grp["paths"]}

    def together(e: dict[str, Any]) -> bool:
        return e["path"] in group and group[e["path"]] == group.get(e["source"])

    odd = {o["path"] for o in truth["outliers"]}
    listed = {r["path"] for r in result.outliers}
    return {"dataset": root.name, "flips": len(flips), "flagged": len(flagged),
            "label_recall": round(hit / max(1, len(flips)), 3),
            "label_precision": round(hit / max(1, len(flagged)), 3),
            "exact": f"{sum(map(together, truth['exact']))}/{len(truth['exact'])}",
            "near": f"{sum(map(together, truth['near']))}/{len(truth['near'])}",
            "groups": len(result.duplicates),
            "outliers": f"{len(odd & listed)}/{len(odd)}", "outlier_list": len(listed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--cache", type=Path, default=Path(".cache/graftwork"))
    ap.add_argument("--cold", action="store_true")
    args = ap.parse_args()
    rows = []
    for root in args.datasets:
        cold = None
        if args.cold:
            tmp = Path(tempfile.mkdtemp(prefix="audit-cold-"))
            try:
                t0 = time.perf_counter()
                graftwork.audit(root, cache_dir=tmp)
                cold = round(time.perf_counter() - t0, 1)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        result = graftwork.audit(root, cache_dir=args.cache)
        row = {**score(root, result), "seconds_cold": cold,
               "seconds_cached": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
