"""The audit's neighbour-based checks at scale: duplicate groups and outliers on N random
1280-d vectors (N = 100,000 by default), with seconds and peak RSS (no n x n matrix is ever
made: memory grows with N * k).

    python bench/audit/scale.py [--n 100000] [--dim 1280] [--labels 20000]

The vectors are 10 Gaussian clusters buried in noise (each row: its class centre plus twice as
much noise), the thumbnails uniform noise: the hardest case for an approximate index (no local
structure) and no duplicates to find. The label check's k-fold logistic regression is timed
on a subsample (``--labels N``). ``*_peak_rss_gib`` is the process's peak so far after that
step (0.5 GiB of it is the imports); the load average says how busy the machine was.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from graftwork.datacheck.duplicates import find_duplicates
from graftwork.datacheck.inputs import THUMB, AuditInputs
from graftwork.datacheck.labels import find_label_issues
from graftwork.datacheck.neighbours import EXACT_UP_TO
from graftwork.datacheck.outliers import find_outliers


def _inputs(n: int, dim: int, classes: int, rng: np.random.Generator) -> AuditInputs:
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    features = centres[labels]  # generated in float32: no float64 copy in the peak RSS
    features += rng.standard_normal((n, dim), dtype=np.float32) * 2
    digests = [rng.bytes(32) for _ in range(n)]
    return AuditInputs(data=Path("."), paths=[f"img{i}.png" for i in range(n)], labels=labels,
                       splits=np.array(["train"] * n), classes=[f"c{i}" for i in range(classes)],
                       features=features, file_digests=digests, pixel_digests=digests,
                       thumbs=rng.integers(0, 256, (n, THUMB, THUMB), dtype=np.uint8),
                       sizes=np.full((n, 2), 96), gray=np.zeros(n, bool))


def _peak() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--labels", type=int, default=20_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    inputs = _inputs(args.n, args.dim, 10, rng)
    load = os.getloadavg()
    row: dict[str, object] = {"n": args.n, "dim": args.dim, "cpus": os.cpu_count(),
                              "search": "exact" if args.n <= EXACT_UP_TO else "approximate",
                              "inputs_peak_rss_gib": _peak()}
    for name, check in (("duplicates", find_duplicates), ("outliers", find_outliers)):
        t0 = time.perf_counter()
        found = check(inputs)
        row[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        row[f"{name}_found"] = len(found)
        row[f"{name}_peak_rss_gib"] = _peak()
    small = _inputs(args.labels, args.dim, 10, rng)
    t0 = time.perf_counter()
    row["label_check_n"] = args.labels
    row["label_check_found"] = len(find_label_issues(small))
    row["label_check_s"] = round(time.perf_counter() - t0, 1)
    row["peak_rss_gib"] = _peak()
    row["load_before"] = [round(x, 1) for x in load]
    row["load_after"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(row))


if __name__ == "__main__":
    main()
