"""Scoring the test predictions: per-class metrics and the report's test evaluation."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from graftwork.report._format import ratio
from graftwork.rundir.reader import Run
from graftwork.report._svg import Chart
from graftwork.report._testcharts import (all_classes, confusion_chart, confusion_matrix,
                                          top_losses_grid)


def per_class_metrics(labels: Sequence[str], preds: Sequence[str],
                      classes: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, plus accuracy and macro averages.

    Returns ``{"classes": {name: {"precision", "recall", "f1", "support"}}, "accuracy",
    "macro": {"precision", "recall", "f1"}, "support"}``. Divisions by zero give 0.0; the
    macro average is over every class (as scikit-learn does), including unseen ones.
    """
    matrix = confusion_matrix(labels, preds, classes)
    names = all_classes(labels, preds, classes)
    true_pos = np.diag(matrix)
    per_class: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(names):
        precision = ratio(true_pos[i], matrix[:, i].sum())
        recall = ratio(true_pos[i], matrix[i, :].sum())
        per_class[name] = {"precision": precision, "recall": recall,
                           "f1": ratio(2 * precision * recall, precision + recall),
                           "support": int(matrix[i, :].sum())}
    macro = {key: (float(np.mean([m[key] for m in per_class.values()])) if per_class else 0.0)
             for key in ("precision", "recall", "f1")}
    return {"classes": per_class, "accuracy": ratio(true_pos.sum(), matrix.sum()),
            "macro": macro, "support": int(matrix.sum())}


@dataclass
class Evaluation:
    """Test-split results computed from ``predictions_test.csv``: metrics, the confusion
    matrix chart and the top-losses grid (HTML; None when no prediction is wrong)."""

    metrics: dict[str, Any]
    mean_loss: float
    n_wrong: int
    confusion: Chart
    top_losses_html: str | None


def evaluate(run: Run, n_top_losses: int = 16) -> Evaluation:
    """Score ``run.predictions`` and build the confusion matrix and the top-losses grid."""
    labels = [str(r["label"]) for r in run.predictions]
    preds = [str(r["pred"]) for r in run.predictions]
    losses = [r["loss"] for r in run.predictions if math.isfinite(r["loss"])]
    return Evaluation(
        metrics=per_class_metrics(labels, preds, run.classes),
        mean_loss=float(np.mean(losses)) if losses else math.nan,
        n_wrong=sum(t != p for t, p in zip(labels, preds, strict=True)),
        confusion=confusion_chart(labels, preds, run.classes),
        top_losses_html=top_losses_grid(run.predictions, n_top_losses, base_dir=run.path),
    )
