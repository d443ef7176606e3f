"""Likely label errors: two independent judges of each image must both rate its label below chance.

1. Out-of-fold heads: every image is scored by logistic regressions that never saw it (k-fold on
   standardised, PCA-reduced features), once in each of ``SPLITS`` fold splits; the heads judge
   the label below chance only when every split's head does, so the list does not depend on
   which images happened to share a fold.
2. Its neighbours: the share of its ``NEIGHBOURS`` nearest images (cosine) that carry its label.

Both read :func:`label_features`: the backbone's final features followed by its mid layer's
(``BackboneSpec.mid_layer``, e.g. lite's last stride-32 stage before the head), which keeps
shape detail the classifier-facing features pool away (a shirt's sleeves against a T-shirt's).

An image is listed when both give its label less than chance (1/K), ranked by cleanlab's
self-confidence (the splits' mean probability of the given label; lower = more likely wrong).
Classes that merely look alike (shirt / T-shirt / pullover) get low head probabilities but keep
some neighbours of their own class; a flipped image has none. Measured on planted flips
(bench/audit/label-layers.md, 30 Fashion-MNIST and 15 MNIST sets; docs/audit-research.md,
"fourth pass"): recall / precision 0.85 / 0.84 on Fashion-MNIST (0.86 / 0.77 with the final
features and 3 splits averaged, the check before) and 0.79 / 0.94 on MNIST (0.79 / 0.90), where
cleanlab's ``find_label_issues`` (confident learning) cut at chance gave 0.75-0.83 / 0.60-0.65
and 0.63-0.75 / 0.83-0.92 on the final features: its per-class thresholds over-count look-alike
classes and, with the heads' soft probabilities, leave out up to a third of the flips on MNIST.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from graftwork.datacheck.inputs import AuditInputs
from graftwork.datacheck.neighbours import knn, unit
from graftwork.errors import DataError

__all__ = ["find_label_issues", "oof_probabilities", "oof_split_probabilities",
           "neighbour_votes", "label_features", "MIN_PER_CLASS"]

log = logging.getLogger(__name__)

FOLDS = 5
#: Fold splits, each scoring every image once (each costs one k-fold fit): an image is listed
#: only when the heads of every split rate its label below chance (docs/audit-research.md,
#: "fourth pass": 3 splits averaged let through images that one split's heads still accept).
SPLITS = 5
#: Nearest images whose labels vote (measured on Fashion-MNIST: 15 lets look-alikes through,
#: 20-40 agree; docs/audit-research.md).
NEIGHBOURS = 20
#: Images a class needs for k-fold scoring: every fold must hold one to train on.
MIN_PER_CLASS = 2


def _folds(labels: np.ndarray, classes: list[str]) -> int:
    counts = np.bincount(labels, minlength=len(classes))
    smallest = int(counts.min())
    if smallest < MIN_PER_CLASS:
        name = classes[int(counts.argmin())]
        raise DataError(f"class {name!r} has {smallest} usable image(s): the label check scores "
                        f"every image with heads trained on the others (k-fold), which needs "
                        f"at least {MIN_PER_CLASS} per class",
                        f"add images to {name!r}, or remove the folder")
    if smallest < FOLDS:
        log.info("label check: %d folds (class %r has %d images)", smallest,
                 classes[int(counts.argmin())], smallest)
    return min(FOLDS, smallest)


def oof_split_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int,
                            folds: int, *, C: float = 0.003, pca: int = 256, seed: int = 0,
                            splits: int = 1) -> np.ndarray:
    """Out-of-fold class probabilities of each fold split (splits, n, K): in split ``s``
    (fold seed ``seed + s``) each image is scored by a logistic regression fitted on the other
    folds only (standardised, PCA-reduced features)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(features)
    if pca and pca < min(x.shape):
        x = PCA(pca, random_state=seed).fit_transform(x)
    probs = np.zeros((splits, len(labels), n_classes))
    for split in range(splits):
        kfold = StratifiedKFold(folds, shuffle=True, random_state=seed + split)
        for tr, te in kfold.split(x, labels):
            model = LogisticRegression(C=C, max_iter=2000).fit(x[tr], labels[tr])
            probs[split][np.ix_(te, model.classes_)] = model.predict_proba(x[te])
    return probs


def oof_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, *,
                      C: float = 0.003, pca: int = 256, seed: int = 0,
                      splits: int = 1) -> np.ndarray:
    """Out-of-fold class probabilities (n, K), averaged over ``splits`` fold splits
    (:func:`oof_split_probabilities`)."""
    return oof_split_probabilities(features, labels, n_classes, folds, C=C, pca=pca, seed=seed,
                                   splits=splits).mean(axis=0)


def label_features(inputs: AuditInputs) -> np.ndarray:
    """What both judges read: the final features, followed by the backbone's mid-layer
    features where it has one (each block centred and scaled to unit variance per column, then
    by 1/sqrt(its width), so each block weighs the same in a cosine)."""
    if inputs.mid_features is None:
        return inputs.features
    blocks = [inputs.features, inputs.mid_features]
    return np.hstack([(b - b.mean(0)) / (b.std(0) + 1e-6) / np.sqrt(b.shape[1]) for b in blocks]
                     ).astype(np.float32)


def neighbour_votes(inputs: AuditInputs, x: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Share of each image's ``k`` nearest other images in ``x`` (fewer in a small set) that
    carry its label, (n,); ``x`` is ``inputs.features`` (whose search the other checks share)
    or :func:`label_features`."""
    k = max(1, min(k, len(inputs.labels) - 1))
    if x is inputs.features:
        _, ind = inputs.neighbours(k)
    else:
        _, ind = knn(unit(x), k, exact_up_to=inputs.exact_up_to)
    return (inputs.labels[ind] == inputs.labels[:, None]).mean(axis=1)


def find_label_issues(inputs: AuditInputs) -> list[dict[str, Any]]:
    """Likely label errors, most likely first: {path, label, suggested, score} (score:
    cleanlab's self-confidence of the given label, lower = more likely wrong)."""
    from cleanlab.rank import get_label_quality_scores
    from threadpoolctl import threadpool_limits

    labels, classes = inputs.labels, inputs.classes
    folds = _folds(labels, classes)
    # one BLAS thread: these small dense problems spend longer in thread barriers than in
    # arithmetic (PCA of 600 x 1280: 0.5 s on one thread, 14 s on two of a busy machine)
    with threadpool_limits(1):
        x = label_features(inputs)
        each = oof_split_probabilities(x, labels, len(classes), folds, splits=SPLITS)
    probs = each.mean(axis=0)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    chance = 1.0 / len(classes)
    suspect = ((each[:, np.arange(len(labels)), labels].max(axis=0) < chance)
               & (neighbour_votes(inputs, x) < chance))
    ranked = [int(i) for i in np.argsort(quality, kind="stable") if suspect[i]]
    return [{"path": inputs.paths[i], "label": classes[labels[i]],
             "suggested": classes[int(probs[i].argmax())], "score": round(float(quality[i]), 4)}
            for i in ranked]
