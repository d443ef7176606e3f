"""Duplicates within and across splits, as groups.

``exact``: the same file bytes (sha256) or the same decoded pixels in other bytes. ``near``: a
copy re-encoded, cropped, resized or relit. A classification network's pooled features ignore
exactly what tells a copy from a look-alike, so near copies are verified with signals of their
own: candidate pairs are each image's nearest neighbours (an index, never an n x n matrix) in
three signals -- pooled features (cosine) and zero-mean, unit-norm grayscale thumbnails at 16
and 8 px (correlation: brightness and contrast drop out) -- and scored in those three and a
fourth, registered one, computed for the candidate pairs only: the best correlation of the
32 px thumbnails over crops of either image (each edge cut by 0, 0.75 or 1.5 px, resampled
back to 32 px: a crop and a resize are a scale and a shift per axis). A pair is linked when the
two are much closer to each other than each is to its next neighbour, summed over the signals:
``sum log((1 - s_next) / (1 - s_pair))`` >= ``THRESHOLD``. A copy stands out from its
look-alikes in at least one signal; a look-alike does not. Groups are connected components.
A group whose images sit in two splits is a leak and comes first. docs/audit-research.md
has the measurements ("Duplicates", "Near copies, second pass").
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from graftwork.datacheck.inputs import AuditInputs, knn, unit

__all__ = ["find_duplicates", "THRESHOLD"]

K = 10
THRESHOLD = 2.5  # docs/audit-research.md: the sweep over the planted-fault sets
SIDES = (16, 8)
CROPS = (0.0, 0.75, 1.5)  # px of a 32 px thumbnail cut off each edge, the registered signal
PAIR_BATCH = 4096  # candidate pairs whose rows are gathered at once
REGISTER_BATCH = 256  # candidate pairs registered at once (9 MiB per array of crops)


class _Union:
    """Union-find over ``n`` items."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _thumb_vectors(thumbs: np.ndarray, side: int) -> np.ndarray:
    n, s, _ = thumbs.shape
    f = s // side
    # float32 sums of at most 16 uint8 values: exact, whatever the order
    t = thumbs.reshape(n, side, f, side, f).mean((2, 4), dtype=np.float32).reshape(n, -1)
    return unit(t - t.mean(1, keepdims=True))


def _exact(keys: Sequence[bytes], uf: _Union) -> None:
    by: dict[bytes, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by[key].append(i)
    for group in by.values():
        for member in group[1:]:
            uf.union(group[0], member)


def _best_two(node: np.ndarray, sim: np.ndarray, m: int) -> np.ndarray:
    """(m, 2): the best and second best similarity each node has in (node, sim) pairs (-2 where
    it has fewer), without a Python loop over the pairs."""
    order = np.lexsort((-sim, node))
    node, sim = node[order], sim[order]
    first = np.r_[True, node[1:] != node[:-1]]
    rank = np.arange(len(node)) - np.maximum.accumulate(np.where(first, np.arange(len(node)), 0))
    best = np.full((m, 2), -2.0)
    for r in (0, 1):
        best[node[rank == r], r] = sim[rank == r]
    return best


def _pair_similarities(z: np.ndarray, a: np.ndarray, b: np.ndarray, batch: int = PAIR_BATCH
                       ) -> np.ndarray:
    """``z[a[i]] . z[b[i]]`` for each pair, ``batch`` pairs at a time: gathering the rows of all
    pairs at once copied two (pairs x d) arrays: 3.7 GiB for 389,441 pairs of 20,000 images."""
    sim = np.empty(len(a), dtype=z.dtype)
    for s in range(0, len(a), batch):
        sim[s:s + batch] = np.einsum("ij,ij->i", z[a[s:s + batch]], z[b[s:s + batch]])
    return sim


def _candidates(neighbour_lists: list[np.ndarray]) -> np.ndarray:
    """(pairs, 2) sorted unique (low, high) row pairs of the given (m, k) neighbour indices."""
    m = len(neighbour_lists[0])
    keys = []
    for ind in neighbour_lists:
        r = np.repeat(np.arange(m, dtype=np.int64), ind.shape[1])
        j = ind.reshape(-1).astype(np.int64)
        keys.append(np.minimum(r, j) * m + np.maximum(r, j))
    key = np.unique(np.concatenate(keys))
    return np.stack([key // m, key % m], axis=1)


def _log_ratios(sim: np.ndarray, a: np.ndarray, b: np.ndarray, m: int) -> np.ndarray:
    """log((1 - s_next) / (1 - s_pair)) of each pair, the smaller of its two ends."""
    best = _best_two(np.r_[a, b], np.r_[sim, sim], m)  # each image's two best

    def other(u: np.ndarray) -> np.ndarray:
        return np.where(sim >= best[u, 0] - 1e-7, best[u, 1], best[u, 0])

    eps = 1e-4
    return np.log(np.minimum((1 - other(a) + eps) / (1 - sim + eps),
                             (1 - other(b) + eps) / (1 - sim + eps)))


def _crop_matrices(side: int, crops: Sequence[float]) -> np.ndarray:
    """(len(crops)^2, side, side): row i of matrix (lo, hi) samples pixel i of the span
    [lo, side - hi] stretched back to ``side`` px (linear interpolation)."""
    x = np.arange(side) + 0.5
    out = np.zeros((len(crops) ** 2, side, side), np.float32)
    for k, (lo, hi) in enumerate((lo, hi) for lo in crops for hi in crops):
        at = np.clip(lo + x * (side - lo - hi) / side - 0.5, 0, side - 1)
        left = np.floor(at).astype(np.int64)
        w = at - left
        np.add.at(out[k], (np.arange(side), left), 1 - w)
        np.add.at(out[k], (np.arange(side), np.minimum(left + 1, side - 1)), w)
    return out


def _zero_mean_unit(thumbs: np.ndarray) -> np.ndarray:
    t = thumbs.astype(np.float32)
    t -= t.mean((1, 2), keepdims=True)
    return t / (np.sqrt((t * t).sum((1, 2), keepdims=True)) + 1e-12)


def _crop_norms(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(n, g, g): the norm of zero-mean ``w[y] @ z[i] @ w[x].T`` (``z`` zero-mean), from
    ``|A|^2 = <Y^T Y, Wx^T Wx>`` with ``Y = Wy z``: no crop is formed."""
    s, g = z.shape[1], len(w)
    gram = np.einsum("kij,kil->kjl", w, w).reshape(g, -1)
    ones = w.sum(1)  # (g, s): Wx^T 1
    out = np.empty((len(z), g, g), np.float32)
    for i in range(0, len(z), 256):
        y = np.matmul(w.reshape(g * s, s), z[i:i + 256]).reshape(-1, g, s, s)
        sq = np.matmul(y.transpose(0, 1, 3, 2), y).reshape(len(y), g, -1) @ gram.T
        mean = y.sum(2) @ ones.T / (s * s)
        out[i:i + 256] = np.sqrt(np.maximum(sq - s * s * mean ** 2, 1e-12))
    return out


def _registered(thumbs: np.ndarray, a: np.ndarray, b: np.ndarray,
                crops: Sequence[float] = CROPS, batch: int = REGISTER_BATCH) -> np.ndarray:
    """The best correlation of each pair's thumbnails over crops of either image:
    ``<Wy A Wx^T, B> = <Wy A, B Wx>``, three batched matrix products per direction."""
    w = _crop_matrices(thumbs.shape[1], crops)
    s, g = thumbs.shape[1], len(w)
    norms = np.empty((len(thumbs), g, g), np.float32)
    for i in range(0, len(thumbs), 4096):
        norms[i:i + 4096] = _crop_norms(_zero_mean_unit(thumbs[i:i + 4096]), w)
    sim = np.empty(len(a), np.float32)
    for i in range(0, len(a), batch):
        ends = (a[i:i + batch], b[i:i + batch])
        z = [_zero_mean_unit(thumbs[e]) for e in ends]
        p, best = len(ends[0]), []
        for one, two in ((0, 1), (1, 0)):  # crops of the first end, then of the second
            left = np.matmul(w.reshape(g * s, s), z[one]).reshape(p, g, -1)  # Wy A
            right = np.matmul(z[two][:, None], w[None]).reshape(p, g, -1)  # B Wx
            c = np.matmul(left, right.transpose(0, 2, 1)) / norms[ends[one]]
            best.append(c.reshape(p, -1).max(1))
        sim[i:i + batch] = np.maximum(*best)
    return sim


def _pair_scores(signals: list[np.ndarray], pairs: np.ndarray, m: int,
                 thumbs: np.ndarray | None = None) -> np.ndarray:
    """How much closer each candidate pair is than either image's next neighbour, summed over
    the signals (and the registered thumbnails, where given)."""
    a, b = pairs[:, 0], pairs[:, 1]
    sims = [_pair_similarities(z, a, b) for z in signals]
    if thumbs is not None:
        sims.append(_registered(thumbs, a, b))
    return np.sum([_log_ratios(sim, a, b, m) for sim in sims], axis=0)


def find_duplicates(inputs: AuditInputs) -> list[dict[str, Any]]:
    """Groups of copies: {paths, kind: "exact"|"near", splits, similarity} (similarity: the
    highest feature cosine between two members); leaks across splits first."""
    n = len(inputs.paths)
    exact = _Union(n)
    _exact(inputs.file_digests, exact)
    _exact(inputs.pixel_digests, exact)
    rep = np.array([i for i in range(n) if exact.find(i) == i])  # one image per exact group
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[exact.find(i)].append(i)
    linked: list[tuple[int, int]] = []
    if len(rep) > 2:
        every = len(rep) == n  # no exact copies: no row copies either
        features, thumbs = ((inputs.features, inputs.thumbs) if every
                            else (inputs.features[rep], inputs.thumbs[rep]))
        signals = [unit(features)] + [_thumb_vectors(thumbs, s) for s in SIDES]
        # the feature search is the one the outlier check reads too (same k) when no image
        # has an exact copy; the thumbnails' searches are their own
        exact_up_to = inputs.exact_up_to
        first = (inputs.neighbours(K)[1] if every
                 else knn(signals[0], K, exact_up_to=exact_up_to)[1])
        pairs = _candidates([first] + [knn(z, K, exact_up_to=exact_up_to)[1]
                                       for z in signals[1:]])
        score = _pair_scores(signals, pairs, len(rep), thumbs=thumbs)
        linked = [(int(a), int(b)) for a, b in pairs[score >= THRESHOLD]]
    near = _Union(len(rep))
    for a, b in linked:
        near.union(a, b)
    components: dict[int, list[int]] = defaultdict(list)
    for r in range(len(rep)):
        components[near.find(r)].append(r)
    z = unit(inputs.features)
    groups = []
    for reps in components.values():
        group = sorted(i for r in reps for i in members[int(rep[r])])
        if len(group) < 2:
            continue
        sims = z[group] @ z[group].T
        np.fill_diagonal(sims, -1.0)
        groups.append({"paths": [inputs.paths[i] for i in group],
                       "kind": "exact" if len(reps) == 1 else "near",
                       "splits": sorted({str(inputs.splits[i]) for i in group}),
                       "similarity": round(min(1.0, float(sims.max())), 4)})
    groups.sort(key=lambda g: (len(g["splits"]) < 2, g["kind"] != "exact", -g["similarity"]))
    return groups
