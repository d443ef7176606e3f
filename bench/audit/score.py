"""Scoring what a tool found on a planted-fault folder (made by make_faults.py, with truth.json).

A tool's findings are ``{"labels": [path, ...], "groups": [{"paths": [...], "kind": ...}, ...],
"outliers": [path, ...]}`` with paths relative to the folder; a check the tool lacks is ``None``
and its columns read "-". :func:`score` turns them into one row; :func:`product` runs
``graftwork.audit`` (the product) cold (empty cache) and cached, and writes the inputs Datalab
is compared on (the product's features and out-of-fold probabilities).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

Found = dict[str, Any]

#: the table's columns, in order (the JSON rows hold these and a few more)
COLUMNS = ("tool", "label_recall", "label_precision", "flagged", "exact_found",
           "exact_pixels_found", "near_found", "groups", "largest_group", "copies_in_largest",
           "outliers_in_list", "outlier_list", "seconds_cold", "seconds")


def score(root: Path, found: Found) -> dict[str, Any]:
    """One row: flips recall / precision of the label list, planted copies found in one group
    with their source (exact, exact with other bytes, near), groups, the largest and how many
    planted copies were found only in it (a copy in one huge group with its source is "found"
    too), planted outliers listed."""
    truth = json.loads((root / "truth.json").read_text())
    row: dict[str, Any] = {"dataset": root.name, "flips": len(truth["flips"])}
    if found.get("labels") is not None:
        flips = {f["path"] for f in truth["flips"]}
        flagged = list(found["labels"])
        hit = len(flips & set(flagged))
        row.update(flagged=len(flagged), label_recall=round(hit / max(1, len(flips)), 3),
                   label_precision=round(hit / max(1, len(flagged)), 3))
    if found.get("groups") is not None:
        group = {p: g for g, grp in enumerate(found["groups"]) for p in grp["paths"]}

        def together(e: dict[str, Any]) -> bool:
            return e["path"] in group and group[e["path"]] == group.get(e["source"])

        sizes = [len(g["paths"]) for g in found["groups"]]
        largest = int(np.argmax(sizes)) if sizes else -1
        pixels = [e for e in truth["exact"] if e["kind"] != "bytes"]
        row.update(exact_found=f"{sum(map(together, truth['exact']))}/{len(truth['exact'])}",
                   exact_pixels_found=f"{sum(map(together, pixels))}/{len(pixels)}",
                   near_found=f"{sum(map(together, truth['near']))}/{len(truth['near'])}",
                   near_missed_ops=[e["ops"] for e in truth["near"] if not together(e)],
                   groups=len(found["groups"]),
                   largest_group=max(sizes, default=0),
                   copies_in_largest=sum(together(e) and group[e["path"]] == largest
                                         for e in truth["exact"] + truth["near"]),
                   near_groups=sum(g.get("kind") == "near" for g in found["groups"]))
    if found.get("outliers") is not None:
        odd = {o["path"] for o in truth["outliers"]}
        listed = set(found["outliers"])
        row.update(outliers_in_list=f"{len(odd & listed)}/{len(odd)}",
                   outlier_list=len(listed))
    return row


def markdown(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """A Markdown table; a missing or None cell reads "-"."""
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def product(root: Path, cache: Path, inputs_file: Path | None = None) -> dict[str, Any]:
    """Score ``graftwork.audit`` on ``root``: first with ``cache`` emptied (features extracted:
    the whole audit from files), then cached. With ``inputs_file``, also write there (npz) the
    product's features, labels, paths and out-of-fold probabilities, for Datalab."""
    import graftwork

    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    graftwork.audit(root, cache_dir=cache)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = graftwork.audit(root, cache_dir=cache)
    cached = time.perf_counter() - t0
    found = {"labels": [r["path"] for r in result.label_issues], "groups": result.duplicates,
             "outliers": [r["path"] for r in result.outliers]}
    if inputs_file is not None:
        write_inputs(root, cache, inputs_file)
    return {"tool": f"graftwork {graftwork.__version__}", **score(root, found),
            "seconds_cold": round(cold, 1), "seconds": round(cached, 1)}


def write_inputs(root: Path, cache: Path, out: Path) -> None:
    """The product's lite0 features and out-of-fold probabilities of ``root`` (cached), in
    ``out`` (npz: features, labels, paths, probs). The probabilities are the label check's own
    (read off the final and mid-layer features); the features are the final ones, which the
    product's duplicate and outlier checks read."""
    from threadpoolctl import threadpool_limits

    from graftwork.datacheck import labels as label_check
    from graftwork.datacheck.inputs import gather

    inputs = gather(root, cache_dir=cache)
    folds = label_check._folds(inputs.labels, inputs.classes)
    with threadpool_limits(1):
        probs = label_check.oof_probabilities(label_check.label_features(inputs), inputs.labels,
                                              len(inputs.classes), folds,
                                              splits=label_check.SPLITS)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=inputs.features, labels=inputs.labels, probs=probs,
             paths=np.array(inputs.paths))
