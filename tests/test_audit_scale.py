"""graft audit at scale: the approximate neighbour search (used above a row threshold) finds what
the exact one finds, the checks give the same answers on either, and no step allocates
memory that grows with n x n or with (candidate pairs) x d."""
from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from graftwork.datacheck.duplicates import _pair_scores, find_duplicates
from graftwork.datacheck.inputs import THUMB, AuditInputs
from graftwork.datacheck.neighbours import knn, unit
from graftwork.datacheck.outliers import find_outliers

pytest.importorskip("faiss")


def _clustered(n: int, d: int, clusters: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    rows = centres[rng.integers(0, clusters, n)]
    return unit(rows + 0.5 * rng.standard_normal((n, d), dtype=np.float32))


def _inputs(n: int, exact_up_to: int) -> AuditInputs:
    """Clustered features and thumbnails with six planted near copies and three outliers."""
    rng = np.random.default_rng(1)
    features = _clustered(n, 64, 8)
    thumbs = rng.integers(0, 256, (n, THUMB, THUMB), dtype=np.uint8)
    for i in range(6):  # near copies: slightly moved features, relit thumbnails
        features[n - 1 - i] = features[i] + 0.01 * rng.standard_normal(64, dtype=np.float32)
        thumbs[n - 1 - i] = (thumbs[i] * 0.9).astype(np.uint8)
    features[10:13] = rng.standard_normal((3, 64), dtype=np.float32) * 3  # outliers
    digests = [bytes([i % 256, i // 256]) * 16 for i in range(n)]
    return AuditInputs(data=Path("."), paths=[f"img{i}.png" for i in range(n)],
                       labels=np.zeros(n, np.int64), splits=np.array(["train"] * n),
                       classes=["a"], features=features, file_digests=digests,
                       pixel_digests=digests, thumbs=thumbs, sizes=np.full((n, 2), 32),
                       gray=np.ones(n, bool), exact_up_to=exact_up_to)


def test_approximate_search_finds_the_exact_neighbours(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    z = _clustered(3000, 48, 20)
    with caplog.at_level(logging.DEBUG, logger="graftwork.datacheck.neighbours"):
        exact_s, exact_i = knn(z, 10)
        assert "approximate" not in caplog.text  # 3,000 rows: exact by default
        approx_s, approx_i = knn(z, 10, exact_up_to=100)
        assert "approximate neighbour search: 3000 rows" in caplog.text
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_i, exact_i)])
    assert recall >= 0.99
    assert (approx_i != np.arange(len(z))[:, None]).all()  # never a row itself
    # the similarities it returns are exact inner products of the rows it returns
    np.testing.assert_allclose(approx_s, np.einsum("id,ikd->ik", z, z[approx_i]), atol=1e-5)


def test_checks_agree_on_the_exact_and_the_approximate_search() -> None:
    exact, approx = _inputs(1500, 10**9), _inputs(1500, 100)
    groups = find_duplicates(exact)
    assert sorted(len(g["paths"]) for g in groups) == [2] * 6
    assert find_duplicates(approx) == groups
    assert [o["path"] for o in find_outliers(approx)] == [o["path"] for o in find_outliers(exact)]
    assert {o["path"] for o in find_outliers(exact)} >= {"img10.png", "img11.png", "img12.png"}


def test_a_narrower_neighbour_search_is_read_off_the_wider_one() -> None:
    """The label check's 20 neighbours serve the duplicate and outlier checks' 10: the same
    rows as a search of its own, and no second search (the same arrays, sliced)."""
    shared, fresh = _inputs(600, 10**9), _inputs(600, 10**9)
    wide_s, wide_i = shared.neighbours(20)
    narrow_s, narrow_i = shared.neighbours(10)
    assert np.shares_memory(narrow_i, wide_i) and np.shares_memory(narrow_s, wide_s)
    own_s, own_i = fresh.neighbours(10)
    np.testing.assert_allclose(narrow_s, own_s, atol=1e-6)
    assert np.mean(narrow_i == own_i) > 0.99  # ties may order differently
    assert find_duplicates(shared) == find_duplicates(fresh)
    assert find_outliers(shared) == find_outliers(fresh)


def test_sklearn_fallback_matches_faiss() -> None:
    z = _clustered(800, 32, 10)
    s_f, i_f = knn(z, 5)
    s_s, i_s = knn(z, 5, method="sklearn")
    np.testing.assert_allclose(s_s, s_f, atol=1e-4)
    assert np.mean(i_s == i_f) > 0.99  # ties may order differently


def _peak_mib(fn: object, *args: object, **kw: object) -> float:
    tracemalloc.start()
    try:
        fn(*args, **kw)  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_pair_scores_memory_does_not_grow_with_pairs_times_dims() -> None:
    """40,000 pairs of 1280-d rows: gathering both ends at once is 2 x 195 MiB."""
    rng = np.random.default_rng(0)
    z = unit(rng.standard_normal((2000, 1280), dtype=np.float32))
    pairs = np.sort(rng.integers(0, 2000, (40_000, 2)), axis=1)
    assert _peak_mib(_pair_scores, [z], pairs, len(z)) < 100


def test_sklearn_search_memory_does_not_grow_with_n_squared() -> None:
    """6,000 rows: an n x n float64 distance matrix is 275 MiB."""
    z = _clustered(6000, 16, 10)
    assert _peak_mib(knn, z, 5, method="sklearn") < 120

