"""recall@10 of approximate faiss indexes against the exact search (``IndexFlatIP``), and their
seconds: the measurement behind ``graftwork.datacheck.neighbours`` (EXACT_UP_TO, NPROBE).

    python bench/audit/recall.py features CACHE/features/<key>   # cached backbone features
    python bench/audit/recall.py thumbs CACHE/audit-pixels-v1 16  # the duplicate check's thumbnails
    python bench/audit/recall.py clustered 20000                  # scale.py's vectors

``product`` is ``knn(..., exact_up_to=0)`` (the IVF index the audit uses above the threshold);
the others are variants: IVF with 8/16/32 lists probed, HNSW (M=32, efConstruction=64) with
efSearch 64/128. recall@10: the share of each row's 10 exact neighbours (itself included as
an 11th) the index returns; ``sim_gap``: how much lower the mean similarity of the returned
neighbours is than the exact one's.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
from safetensors.numpy import load_file

from graftwork.datacheck.duplicates import _thumb_vectors
from graftwork.datacheck.neighbours import knn, unit

K = 10
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _exact(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(z.shape[1])
    index.add(z)
    return index.search(z, k + 1)


def _ivf(nprobe: int) -> Search:
    def search(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        lists = int(4 * math.sqrt(len(z)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(z.shape[1]), z.shape[1], lists,
                                   faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        index.train(z)
        index.add(z)
        index.nprobe = nprobe
        return index.search(z, k + 1)
    return search


def _hnsw(ef_search: int) -> Search:
    def search(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = faiss.IndexHNSWFlat(z.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.add(z)
        index.hnsw.efSearch = ef_search
        return index.search(z, k + 1)
    return search


def _product(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sim, ind = knn(z, k, exact_up_to=0)
    return np.c_[np.ones(len(z)), sim], np.c_[np.arange(len(z)), ind]


def _clustered(n: int, d: int = 1280, classes: int = 10) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((classes, d), dtype=np.float32)
    rows = centres[rng.integers(0, classes, n)]
    rows += 2 * rng.standard_normal((n, d), dtype=np.float32)
    return unit(rows)


def load(kind: str, source: str, side: int) -> np.ndarray:
    if kind == "clustered":
        return _clustered(int(source))
    if kind == "features":
        shards = sorted(Path(source).glob("shard-*.safetensors"))
        return unit(np.concatenate([load_file(str(s))["features"] for s in shards]))
    thumbs = np.concatenate([np.load(s)["thumbs"] for s in sorted(Path(source).glob("*.npz"))])
    return _thumb_vectors(thumbs, side)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("features", "thumbs", "clustered"))
    ap.add_argument("source", help="a features folder, a pixels folder, or N")
    ap.add_argument("side", nargs="?", type=int, default=16, help="thumbnail side (thumbs)")
    ap.add_argument("--only-product", action="store_true", help="skip the variants")
    args = ap.parse_args()
    z = np.ascontiguousarray(load(args.kind, args.source, args.side))
    t = time.perf_counter()
    exact_s, exact_i = _exact(z, K)
    base = {"data": args.kind, "n": len(z), "d": z.shape[1]}
    print(json.dumps({**base, "method": "exact", "s": round(time.perf_counter() - t, 1)}),
          flush=True)
    methods: list[tuple[str, Search]] = [("product", _product)]
    if not args.only_product:
        methods += [(f"ivf-nprobe{p}", _ivf(p)) for p in (8, 16, 32)]
        methods += [(f"hnsw-ef{e}", _hnsw(e)) for e in (64, 128)]
    for name, search in methods:
        t = time.perf_counter()
        sim, ind = search(z, K)
        seconds = time.perf_counter() - t
        recall = np.mean([len(set(a) & set(e)) / (K + 1) for a, e in zip(ind, exact_i)])
        gap = float((exact_s[:, 1:].mean(1) - sim[:, 1:].mean(1)).mean())
        print(json.dumps({**base, "method": name, "s": round(seconds, 1),
                          "recall@10": round(float(recall), 4), "sim_gap": round(gap, 5)}),
              flush=True)


if __name__ == "__main__":
    main()
