"""The audit's neighbour search: each row's ``k`` nearest other rows by cosine, from an index
(faiss where installed, else scikit-learn), never an n x n matrix: memory grows with n * k.

Which index, in one place (:data:`EXACT_UP_TO`, :func:`_approximate`): up to ``EXACT_UP_TO``
rows the search is exact (faiss ``IndexFlatIP``: every inner product, in BLAS blocks); above,
its n^2 * d arithmetic (a k=10 self-search of 100,000 1280-d rows is ~2.6e13 flops, minutes on
two cores) gives way to an inverted-file index (``IndexIVFFlat``, inner product,
``4 sqrt(n)`` lists, ``NPROBE`` of them searched per query), whose similarities are still exact
inner products of the rows it returns. Measured (bench/audit/recall.py, bench/audit/README.md):
recall@10 against the exact search 0.997 on real lite0 features of 17,000 Fashion-MNIST images
(0.9995 on 4,400 planted-fault images), 0.999 on their 16 and 8 px thumbnails, 0.946 on the
noise-dominated clustered vectors of bench/audit/scale.py at 20,000 rows (0.83 at 100,000,
2.2x faster than exact there); the same duplicate groups and outliers (plus 2 borderline) on
the 17,000 images. Below ~20,000 rows IVF is no faster than the flat index (BLAS; its list
scans are memory-bound), hence exact up to 50,000.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

__all__ = ["knn", "unit", "EXACT_UP_TO", "NPROBE"]

log = logging.getLogger(__name__)

#: Rows up to which the neighbour search is exact (every result identical to brute force).
EXACT_UP_TO = 50_000
#: Inverted lists searched per query by the approximate index.
NPROBE = 32
_TRAIN_PER_LIST = 40  # k-means training rows per inverted list (faiss warns below 39)
_TRAIN_ITERATIONS = 10  # k-means iterations (faiss's default 25 cost a third of the search)
_SKLEARN_MIB = 256  # scikit-learn's working memory for its blocks of distances


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def knn(z: np.ndarray, k: int, *, exact_up_to: int = EXACT_UP_TO, method: str = "auto"
        ) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarities, indices) of the ``k`` nearest other rows of unit-norm ``z``.

    ``method``: ``"auto"`` (faiss where installed, else scikit-learn), ``"faiss"`` or
    ``"sklearn"`` (always exact); faiss is exact up to ``exact_up_to`` rows, approximate above.
    """
    k = max(1, min(k, len(z) - 1))
    z = np.ascontiguousarray(z, dtype=np.float32)
    faiss = _faiss() if method in ("auto", "faiss") else None
    if method == "faiss" and faiss is None:
        raise ImportError("faiss is not installed: pip install faiss-cpu")
    if faiss is None:
        sim, ind = _sklearn(z, k + 1)
    elif len(z) <= exact_up_to:
        index = faiss.IndexFlatIP(z.shape[1])
        index.add(z)
        sim, ind = index.search(z, k + 1)
    else:
        sim, ind = _approximate(faiss, z, k + 1)
    rows = np.arange(len(z))[:, None]
    # each row itself is dropped (not always first when copies tie): a stable sort moves the
    # other rows' columns to the front, in their order
    order = np.argsort(ind == rows, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(ind, order, axis=1).astype(np.int64)
    out_s = np.take_along_axis(sim, order, axis=1).astype(np.float32)
    return out_s, out_i


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _sklearn(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search with scikit-learn (brute force in blocks of bounded memory)."""
    from sklearn import config_context
    from sklearn.neighbors import NearestNeighbors

    with config_context(working_memory=_SKLEARN_MIB):
        dist, ind = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(z).kneighbors(z)
    return (1 - dist ** 2 / 2).astype(np.float32), ind


def _approximate(faiss: Any, z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted-file search (seeded k-means on a seeded sample of the rows); a row the probed
    lists could not fill ``k`` results for is searched again exactly."""
    n, d = z.shape
    lists = max(1, min(int(4 * math.sqrt(n)), n // _TRAIN_PER_LIST))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    index.cp.niter = _TRAIN_ITERATIONS
    index.cp.max_points_per_centroid = _TRAIN_PER_LIST
    sample = np.random.default_rng(0).permutation(n)[:lists * _TRAIN_PER_LIST]
    index.train(z[np.sort(sample)])
    index.add(z)
    index.nprobe = min(NPROBE, lists)
    log.debug("approximate neighbour search: %d rows, %d lists, %d searched", n, lists,
              index.nprobe)
    sim, ind = index.search(z, k)
    short = np.flatnonzero((ind < 0).any(axis=1))
    if len(short):
        log.info("neighbour search: %d rows searched again exactly", len(short))
        flat = faiss.IndexFlatIP(d)
        flat.add(z)
        sim[short], ind[short] = flat.search(z[short], k)
    return sim, ind
