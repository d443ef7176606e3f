"""The `graft audit` checks as plain functions over numpy arrays (research version, issue 31).

Inputs: ``features`` (n, d) float32 pooled backbone features, ``labels`` (n,) ints, ``splits``
(n,) split names, ``file_digests`` (sha256 of the file bytes), ``pixel_digests`` (digest of the
decoded RGB pixels + shape) and ``thumbs`` (n, 32, 32) float32 grayscale thumbnails (area
averaged from the decoded image). Outputs are plain lists of dicts, indices into the arrays.

Nothing here builds an n x n matrix: neighbours come from graftwork's k-NN index
(``graftwork.datacheck.inputs.knn``); the shared pieces (unit rows, thumbnail vectors,
union-find) are the product's, the variants swept in docs/audit-research.md are here.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from graftwork.datacheck.duplicates import _pair_scores, _thumb_vectors, _Union
from graftwork.datacheck.inputs import knn
from graftwork.datacheck.inputs import unit as _l2n

__all__ = ["label_issues", "duplicate_groups", "outliers", "knn"]


# ----------------------------------------------------------------------------- label issues
def oof_probabilities(features: np.ndarray, labels: np.ndarray, *, folds: int = 5,
                      C: float = 0.003, pca: int = 256, seed: int = 0,
                      train_mask: np.ndarray | None = None) -> np.ndarray:
    """Out-of-fold class probabilities: each image scored by a logistic regression (standardised
    features, PCA to ``pca`` dims, L2 strength 1/C) fitted on the other folds only (and, in
    those, only where ``train_mask``)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(features)
    if pca and pca < x.shape[1]:
        x = PCA(min(pca, len(x) - 1), random_state=seed).fit_transform(x)
    k = int(labels.max()) + 1
    probs = np.zeros((len(labels), k))
    counts = np.bincount(labels, minlength=k)
    n_splits = max(2, min(folds, int(counts[counts > 0].min())))
    for tr, te in StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, labels):
        if train_mask is not None:
            tr = tr[train_mask[tr]]
        m = LogisticRegression(C=C, max_iter=2000).fit(x[tr], labels[tr])
        probs[np.ix_(te, m.classes_)] = m.predict_proba(x[te])
    return probs


def label_issues(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, C: float = 0.003,
                 pca: int = 256, rounds: int = 1, cut: str = "below_chance", seed: int = 0,
                 return_probs: bool = False) -> Any:
    """Likely label errors, most likely first: [{index, label, suggested, score}].

    1. out-of-fold probabilities (:func:`oof_probabilities`); with ``rounds=2`` the heads are
       fitted again without the images cleanlab flagged in round 1 (every image still scored by
       heads that never saw it);
    2. cleanlab's ``find_label_issues`` (confident learning, prune_by_noise_rate), ranked by
       self-confidence;
    3. the cut (``cut="below_chance"``): of cleanlab's flags, keep those whose given label has an
       out-of-fold probability below 1/K (the head rates the given label less likely than a
       uniform guess). cleanlab's own count also counts the images of classes that look alike
       (Fashion-MNIST shirt/T-shirt/pullover/coat), which are not label errors; ``cut="cleanlab"``
       keeps its list as is.
    ``score`` is cleanlab's label quality (self-confidence, lower = more likely wrong).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels)
    probs = oof_probabilities(features, labels, folds=folds, C=C, pca=pca, seed=seed)
    for _ in range(rounds - 1):
        flagged = find_label_issues(labels, probs)
        probs = oof_probabilities(features, labels, folds=folds, C=C, pca=pca, seed=seed,
                                  train_mask=~flagged)
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    k = probs.shape[1]
    if cut == "below_chance":
        ranked = [i for i in ranked if probs[i, labels[i]] < 1.0 / k]
    out = [{"index": int(i), "label": int(labels[i]), "suggested": int(probs[i].argmax()),
            "score": float(quality[i])} for i in ranked]
    return (out, probs) if return_probs else out


# ----------------------------------------------------------------------------- duplicates
def _exact_groups(keys: Sequence[Any]) -> list[list[int]]:
    by: dict[Any, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        if k is not None:
            by[k].append(i)
    return [g for g in by.values() if len(g) > 1]


def duplicate_groups(features: np.ndarray, thumbs: np.ndarray, file_digests: Sequence[Any],
                     pixel_digests: Sequence[Any], splits: Sequence[str] | None = None, *,
                     k: int = 10, threshold: float = 1.5, sides: tuple[int, ...] = (16, 8),
                     return_pairs: bool = False) -> Any:
    """Groups of duplicates: [{members, kind, score, splits}], kind "exact" or "near".

    exact: the same file bytes (sha256) or the same decoded pixels in other bytes.
    near: on one image per exact group, candidate pairs are the k nearest neighbours in each of
    three signals -- pooled features (cosine) and zero-mean unit-norm thumbnails at 16 and 8 px
    (correlation). A pair is verified by how much closer the two are than each one's next
    neighbour, in every signal: score = sum over signals of
    log((1 - s_2nd) / (1 - s_pair)), s_2nd the best similarity of either image to any other
    candidate (the smaller ratio of the two sides). A copy stands out from its look-alikes in at
    least one signal (features survive JPEG/blur, thumbnails survive crops); a look-alike does
    not. Pairs with score >= ``threshold`` are linked, groups are connected components.
    """
    n = len(features)
    uf = _Union(n)
    exact_pairs = set()
    for keys in (file_digests, pixel_digests):
        for g in _exact_groups(keys):
            for m in g[1:]:
                uf.union(g[0], m)
    rep = [i for i in range(n) if uf.find(i) == i]  # one image per exact group
    exact_root = {i: uf.find(i) for i in range(n)}
    exact_sets: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        exact_sets[exact_root[i]].append(i)
    rep_a = np.array(rep)
    signals = [_l2n(features[rep_a])] + [_thumb_vectors(thumbs[rep_a], s) for s in sides]
    m = len(rep_a)
    neigh = [knn(z, k) for z in signals]
    cand = set()
    for _, ind in neigh:
        for r in range(m):
            for j in ind[r]:
                cand.add((min(r, int(j)), max(r, int(j))))
    pairs = np.array(sorted(cand), dtype=np.int64).reshape(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    score = _pair_scores(signals, pairs, m)
    near_uf = _Union(m)
    linked = score >= threshold
    for (x, y), s in zip(pairs[linked], score[linked]):
        near_uf.union(int(x), int(y))
    comp: dict[int, list[int]] = defaultdict(list)
    for r in range(m):
        comp[near_uf.find(r)].append(r)
    best_score: dict[int, float] = defaultdict(float)
    for (x, y), s in zip(pairs[linked], score[linked]):
        c = near_uf.find(int(x))
        best_score[c] = max(best_score[c], float(s))
    groups = []
    for c, reps in comp.items():
        members = sorted(i for r in reps for i in exact_sets[int(rep_a[r])])
        if len(members) < 2:
            continue
        kind = "exact" if len(reps) == 1 else "near"
        g = {"members": members, "kind": kind,
             "score": float("inf") if kind == "exact" else round(best_score[c], 3)}
        if splits is not None:
            g["splits"] = sorted({str(splits[i]) for i in members})
        groups.append(g)
    groups.sort(key=lambda g: (g["kind"] != "exact", -g["score"]))
    if return_pairs:
        return groups, (rep_a[a], rep_a[b], score)
    return groups


# ----------------------------------------------------------------------------- outliers
def outliers(features: np.ndarray, *, k: int = 5, z: float = 3.5, max_list: int | None = None,
             exclude_near: float = 0.995) -> list[dict]:
    """Images of no class: [{index, score}], most outlying first.

    score = mean cosine distance to the k nearest other images (copies of the image, cosine
    >= ``exclude_near``, do not count as neighbours). The list holds the images whose score is
    more than ``z`` robust standard deviations (1.4826 MAD) above the median, at most
    ``max_list`` (default max(12, 1 % of the images)).
    """
    zf = _l2n(features)
    sim, ind = knn(zf, k + 5)
    d = []
    for r in range(len(zf)):
        s = sim[r][sim[r] < exclude_near][:k]
        d.append(1 - s.mean() if len(s) else 0.0)
    d = np.array(d)
    med = np.median(d)
    mad = 1.4826 * np.median(np.abs(d - med)) + 1e-12
    rz = (d - med) / mad
    cap = max_list or max(12, len(d) // 100)
    order = np.argsort(-d)
    return [{"index": int(i), "score": float(d[i]), "z": float(rz[i])}
            for i in order[:cap] if rz[i] > z]
