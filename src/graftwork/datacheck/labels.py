"""Likely label errors: out-of-fold probabilities and confident learning (cleanlab).

Every image is scored by a head that never saw it (k-fold logistic regression on standardised,
PCA-reduced backbone features); cleanlab's ``find_label_issues`` (confident learning) flags the
images whose given label disagrees with them, and ranks them by self-confidence (a second round
without the first round's flags measured no better: docs/audit-research.md). The list is cut
to the flags whose given label the heads rate below chance (1/K): cleanlab's own count also
counts the images of classes that merely look alike, which a person should not relabel
(docs/audit-research.md: on planted flips this lifts precision from 0.37-0.39 to 0.62-0.64 on
Fashion-MNIST and from 0.71-0.76 to 0.86-0.92 on MNIST at recall 0.74-0.83).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from graftwork.datacheck.inputs import AuditInputs
from graftwork.errors import DataError

__all__ = ["find_label_issues", "oof_probabilities", "MIN_PER_CLASS"]

log = logging.getLogger(__name__)

FOLDS = 5
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


def oof_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, *,
                      C: float = 0.003, pca: int = 256, seed: int = 0) -> np.ndarray:
    """Out-of-fold class probabilities (n, K): each image scored by a logistic regression fitted
    on the other folds only."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(features)
    if pca and pca < min(x.shape):
        x = PCA(pca, random_state=seed).fit_transform(x)
    probs = np.zeros((len(labels), n_classes))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        model = LogisticRegression(C=C, max_iter=2000).fit(x[tr], labels[tr])
        probs[np.ix_(te, model.classes_)] = model.predict_proba(x[te])
    return probs


def find_label_issues(inputs: AuditInputs) -> list[dict[str, Any]]:
    """Likely label errors, most likely first: {path, label, suggested, score} (score:
    cleanlab's self-confidence of the given label, lower = more likely wrong)."""
    from cleanlab.filter import find_label_issues as flag
    from cleanlab.rank import get_label_quality_scores
    from threadpoolctl import threadpool_limits

    labels, classes = inputs.labels, inputs.classes
    folds = _folds(labels, classes)
    # one BLAS thread: these small dense problems spend longer in thread barriers than in
    # arithmetic (PCA of 600 x 1280: 0.5 s on one thread, 14 s on two of a busy machine)
    with threadpool_limits(1):
        probs = oof_probabilities(inputs.features, labels, len(classes), folds)
        flagged = flag(labels, probs, n_jobs=1)
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    chance = 1.0 / len(classes)
    ranked = [int(i) for i in np.argsort(quality, kind="stable")
              if flagged[i] and probs[i, labels[i]] < chance]
    return [{"path": inputs.paths[i], "label": classes[labels[i]],
             "suggested": classes[int(probs[i].argmax())], "score": round(float(quality[i]), 4)}
            for i in ranked]
