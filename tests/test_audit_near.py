"""graft audit's near copies: a crop of an image among look-alikes (all built on a few shapes,
as digits are) is grouped with its source, and no look-alike is; the registered signal's
memory stays bounded."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from graftwork.datacheck.duplicates import _registered, find_duplicates
from graftwork.datacheck.inputs import THUMB, AuditInputs


def _cropped(img: np.ndarray, cut: float) -> np.ndarray:
    """``cut`` px off the top and left edges, stretched back to the same size."""
    s = img.shape[0]
    return np.asarray(Image.fromarray(img.astype(np.float32), "F").resize(
        (s, s), Image.Resampling.BILINEAR, box=(cut, cut, s, s)))


def _look_alikes(n: int = 200, copies: int = 4, seed: int = 0) -> AuditInputs:
    """``n`` thumbnails on 4 smooth shapes (small variations of each), then crops (1.5 px,
    resized back) of the first ``copies``, whose features are their sources' moved by noise."""
    rng = np.random.default_rng(seed)
    shapes = gaussian_filter(rng.standard_normal((4, THUMB, THUMB)), (0, 3, 3))
    shapes /= shapes.std((1, 2), keepdims=True)
    wiggle = gaussian_filter(rng.standard_normal((n, THUMB, THUMB)), (0, 1, 1))
    wiggle /= wiggle.std((1, 2), keepdims=True)
    imgs = shapes[np.arange(n) % 4] + 0.25 * wiggle
    imgs = np.concatenate([imgs, [_cropped(imgs[i], 1.5) for i in range(copies)]])
    thumbs = ((imgs - imgs.min()) / (imgs.max() - imgs.min()) * 255).astype(np.uint8)
    m = len(imgs)
    features = rng.standard_normal((m, 32)).astype(np.float32)
    features[:n] += 3 * rng.standard_normal((4, 32)).astype(np.float32)[np.arange(n) % 4]
    features[n:] = features[:copies] + 0.8 * rng.standard_normal((copies, 32))
    digests = [bytes([i % 256, i // 256]) * 16 for i in range(m)]
    return AuditInputs(data=Path("."), paths=[f"img{i}.png" for i in range(m)],
                       labels=np.zeros(m, np.int64), splits=np.array(["train"] * m),
                       classes=["a"], features=features, file_digests=digests,
                       pixel_digests=digests, thumbs=thumbs, sizes=np.full((m, 2), THUMB),
                       gray=np.ones(m, bool))


def test_cropped_copies_among_look_alikes_are_grouped_with_their_source() -> None:
    # the three-signal rule (features, 16 and 8 px thumbnails) found none of these four
    groups = find_duplicates(_look_alikes())
    assert sorted(sorted(g["paths"]) for g in groups) == [
        sorted([f"img{i}.png", f"img{200 + i}.png"]) for i in range(4)]
    assert {g["kind"] for g in groups} == {"near"}


def test_registered_similarity_sees_through_a_crop_and_memory_stays_bounded() -> None:
    inputs = _look_alikes(copies=1)
    a, b = np.array([0, 0]), np.array([200, 4])  # its crop; a look-alike of the same shape
    crop, look_alike = _registered(inputs.thumbs, a, b)
    assert crop > 0.99 > look_alike
    rng = np.random.default_rng(0)
    pairs = np.sort(rng.integers(0, 2000, (40_000, 2)), axis=1)
    thumbs = rng.integers(0, 256, (2000, THUMB, THUMB), dtype=np.uint8)
    tracemalloc.start()
    try:
        _registered(thumbs, pairs[:, 0], pairs[:, 1])
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < 60  # 40,000 pairs' 81 crops at once would be 12 GiB
