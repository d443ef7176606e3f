"""Images of no class: far from every other image in feature space.

score = mean cosine distance to the ``K`` nearest other images (copies of the image do not
count as neighbours); listed are the images more than ``Z`` robust standard deviations (1.4826
MAD) above the median score, at most max(12, 1% of the images), most outlying first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from graftwork.datacheck.inputs import AuditInputs

__all__ = ["find_outliers"]

K = 5
Z = 3.5
COPY = 0.995  # cosine from which a neighbour is a copy of the image, not a neighbour


def find_outliers(inputs: AuditInputs) -> list[dict[str, Any]]:
    """{path, score} of the images far from every class, most outlying first."""
    sim, _ = inputs.neighbours(K + 5)
    score = np.zeros(len(sim))
    for r, row in enumerate(sim):
        others = row[row < COPY][:K]
        score[r] = 1 - others.mean() if len(others) else 0.0
    median = np.median(score)
    mad = 1.4826 * np.median(np.abs(score - median)) + 1e-12
    robust = (score - median) / mad
    cap = max(12, len(score) // 100)
    return [{"path": inputs.paths[i], "score": round(float(score[i]), 4)}
            for i in np.argsort(-score)[:cap] if robust[i] > Z]
