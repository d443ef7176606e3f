"""The label check with and without the backbone's mid layer, on planted-fault folders.

    python bench/audit/label_layers.py FOLDER [FOLDER ...] [--cache DIR] [--out label-layers.md]

Each FOLDER is a ``make_faults.py`` set (with truth.json). The features come from the cache
(extracted once, the product's way); the label check runs twice on the same inputs: as shipped
(final + mid-layer features, ``labels.label_features``) and on the final features alone (the
check before). Rows: recall / precision of the returned list against the planted flips.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from graftwork.datacheck.inputs import gather
from graftwork.datacheck.labels import find_label_issues

HERE = Path(__file__).resolve().parent


def score(found: list[dict], flips: set[str]) -> tuple[float, float, int]:
    hit = len({r["path"] for r in found} & flips)
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
        both = score(find_label_issues(inputs), flips)
        alone = score(find_label_issues(final), flips)
        rows.append(f"| {root.name} | {len(flips)} | {both[0]:.2f} / {both[1]:.2f} ({both[2]}) "
                    f"| {alone[0]:.2f} / {alone[1]:.2f} ({alone[2]}) |")
        kinds.setdefault(root.name.split("-s")[0], []).append((both, alone))
        print(rows[-1], flush=True)
    lines = ["# The label check with and without the mid layer", "",
             "Written by `bench/audit/label_layers.py`. Recall / precision (list length) against "
             "the planted flips; lite0, both columns on the same cached features.", "",
             *([args.note, ""] if args.note else []),
             "| set | flips | final + mid layer (shipped) | final features alone |",
             "|---|---|---|---|", *rows, "",
             "| sets | shipped: recall, precision | alone: recall, precision "
             "| sets with precision >= 0.80: shipped, alone |", "|---|---|---|---|"]
    for kind, pairs in kinds.items():
        def ms(values: list[float]) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {sd:.3f}"
        cells = [", ".join(ms([p[w][i] for p in pairs]) for i in (0, 1)) for w in (0, 1)]
        good = [sum(p[w][1] >= 0.8 for p in pairs) for w in (0, 1)]
        lines.append(f"| {kind} ({len(pairs)}) | {cells[0]} | {cells[1]} | "
                     f"{good[0]}, {good[1]} of {len(pairs)} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
