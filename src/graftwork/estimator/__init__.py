"""The estimator: :class:`ImageClassifier` (:mod:`.classifier`) and what it delegates to —
fitting (:mod:`.fit`), the fitted model and how to run it (:mod:`.session`), evaluation and
prediction (:mod:`.inference`, scores in :mod:`.metrics`), saving and loading runs
(:mod:`.persist`), the scikit-learn parameter contract (:mod:`.base`) and the raw-pixel
baseline (:mod:`.baseline`)."""
from __future__ import annotations

from graftwork.estimator.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
