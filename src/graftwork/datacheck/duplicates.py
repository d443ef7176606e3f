"""Duplicates within and across splits, as groups.

``exact``: the same file bytes (sha256) or the same decoded pixels in other bytes. ``near``: a
copy re-encoded, cropped, resized or relit. A classification network's pooled features ignore
exactly what tells a copy from a look-alike, so near copies are verified with signals of their
own: candidate pairs are each image's nearest neighbours (an index, never an n x n matrix) in
three signals -- pooled features (cosine) and zero-mean, unit-norm grayscale thumbnails at 16
and 8 px (correlation: brightness and contrast drop out) -- and a pair is linked when the two
are much closer to each other than each is to its next neighbour, summed over the signals:
``sum log((1 - s_next) / (1 - s_pair))`` >= ``THRESHOLD``. A copy stands out from its
look-alikes in at least one signal; a look-alike does not. Groups are connected components.
A group whose images sit in two splits is a leak and comes first.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from graftwork.datacheck.inputs import AuditInputs, knn, unit

__all__ = ["find_duplicates", "THRESHOLD"]

K = 10
THRESHOLD = 1.5  # docs/audit-research.md: the sweep over two planted-fault sets
SIDES = (16, 8)
PAIR_BATCH = 4096  # candidate pairs whose rows are gathered at once


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


def _pair_scores(signals: list[np.ndarray], pairs: np.ndarray, m: int) -> np.ndarray:
    """How much closer each candidate pair is than either image's next neighbour."""
    a, b = pairs[:, 0], pairs[:, 1]
    score = np.zeros(len(pairs))
    for z in signals:
        sim = _pair_similarities(z, a, b)
        best = _best_two(np.r_[a, b], np.r_[sim, sim], m)  # each image's two best

        def other(u: np.ndarray, s: np.ndarray) -> np.ndarray:
            return np.where(s >= best[u, 0] - 1e-7, best[u, 1], best[u, 0])

        eps = 1e-4
        ratio_a = (1 - other(a, sim) + eps) / (1 - sim + eps)
        ratio_b = (1 - other(b, sim) + eps) / (1 - sim + eps)
        score += np.log(np.minimum(ratio_a, ratio_b))
    return score


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
        signals = [unit(inputs.features if every else inputs.features[rep])]
        signals += [_thumb_vectors(inputs.thumbs if every else inputs.thumbs[rep], s)
                    for s in SIDES]
        # the feature search is the one the outlier check reads too (same k) when no image
        # has an exact copy; the thumbnails' searches are their own
        exact_up_to = inputs.exact_up_to
        first = (inputs.neighbours(K)[1] if every
                 else knn(signals[0], K, exact_up_to=exact_up_to)[1])
        pairs = _candidates([first] + [knn(z, K, exact_up_to=exact_up_to)[1]
                                       for z in signals[1:]])
        score = _pair_scores(signals, pairs, len(rep))
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
