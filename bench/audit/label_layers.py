"""The label check as shipped against its two earlier forms, on planted-fault folders.

    python bench/audit/label_layers.py FOLDER [FOLDER ...] [--cache DIR] [--out label-layers.md]

Each FOLDER is a ``make_faults.py`` set (with truth.json). The features come from the cache
(extracted once, the product's way); on the same inputs the label check runs as shipped
(``find_label_issues``: final + mid-layer features, listed only when the heads of every one of
``SPLITS`` fold splits and the neighbours rate the label below chance), with the mid layer but
the heads of 3 splits averaged, and on the final features alone with 3 splits averaged (the
check before). Rows: recall / precision (list length) against the planted flips.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from graftwork.datacheck.inputs import AuditInputs, gather
from graftwork.datacheck import labels as label_check
from graftwork.datacheck.labels import (find_label_issues, label_features, neighbour_votes,
                                        oof_probabilities)

HERE = Path(__file__).resolve().parent
COLUMNS = ("shipped", "mid layer, 3 splits averaged", "final features, 3 splits averaged")


def averaged(inputs: AuditInputs, splits: int = 3) -> set[str]:
    """The earlier rule: the heads' probabilities averaged over ``splits`` fold splits."""
    x = label_features(inputs)
    k = len(inputs.classes)
    folds = label_check._folds(inputs.labels, inputs.classes)
    with threadpool_limits(1):
        probs = oof_probabilities(x, inputs.labels, k, folds, splits=splits)
    given = probs[np.arange(len(inputs.labels)), inputs.labels]
    flagged = (given < 1 / k) & (neighbour_votes(inputs, x) < 1 / k)
    return {inputs.paths[i] for i in np.flatnonzero(flagged)}


def score(found: set[str], flips: set[str]) -> tuple[float, float, int]:
    hit = len(found & flips)
    return hit / len(flips), hit / max(1, len(found)), len(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--cache", type=Path, default=HERE.parent / "data" / "audit-cache")
    ap.add_argument("--out", type=Path, default=HERE / "label-layers.md")
    ap.add_argument("--note", default="", help="a line for the page (e.g. which sets were seen)")
    args = ap.parse_args()
    rows, kinds = [], {}
    for root in args.folders:
        flips = {f["path"] for f in json.loads((root / "truth.json").read_text())["flips"]}
        inputs = gather(root, cache_dir=args.cache)
        final = dataclasses.replace(inputs, mid_features=None, _knn={})
        cells = [score({r["path"] for r in find_label_issues(inputs)}, flips),
                 score(averaged(inputs), flips), score(averaged(final), flips)]
        rows.append(f"| {root.name} | {len(flips)} | "
                    + " | ".join(f"{r:.2f} / {p:.2f} ({n})" for r, p, n in cells) + " |")
        kinds.setdefault(root.name.split("-s")[0], []).append(cells)
        print(rows[-1], flush=True)
    lines = ["# The label check: shipped against its earlier forms", "",
             "Written by `bench/audit/label_layers.py`. Recall / precision (list length) against "
             "the planted flips; lite0, every column on the same cached features.", "",
             *([args.note, ""] if args.note else []),
             "| set | flips | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS),
             *rows, "", "Per family, mean ± standard deviation over its sets; the last column "
             "counts the sets that meet issue 31's target for the family: recall and precision "
             "both >= 0.80 on the Fashion-MNIST-like sets, >= 0.70 on the others.", "",
             "| sets | rule | recall | precision | sets meeting the target |",
             "|---|---|---|---|---|"]
    for kind, sets in kinds.items():
        for c, name in enumerate(COLUMNS):
            def ms(i: int) -> str:
                values = [cells[c][i] for cells in sets]
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{statistics.mean(values):.3f} ± {sd:.3f}"
            target = 0.8 if kind.startswith("fmnist") else 0.7
            good = sum(cells[c][0] >= target and cells[c][1] >= target for cells in sets)
            lines.append(f"| {kind} ({len(sets)}) | {name} | {ms(0)} | {ms(1)} | "
                         f"{good} of {len(sets)} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
