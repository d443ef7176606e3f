"""Scoring logits against labels: accuracy and loss of a split, and the per-image prediction
rows a run saves (``predictions_test.csv``)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from graftwork.data.discover import Sample
from graftwork.training.loop import evaluate

__all__ = ["score_logits", "prediction_rows"]


def score_logits(samples: Sequence[Sample], logits: torch.Tensor,
                 ok: torch.Tensor) -> dict[str, float]:
    """Accuracy, loss and ``n`` of ``logits`` (rows of the samples where ``ok``)."""
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)[ok]
    return evaluate(nn.Identity(), [(logits, labels)])


def prediction_rows(classes: Sequence[str], samples: Sequence[Sample], logits: torch.Tensor,
                    ok: torch.Tensor) -> list[dict[str, Any]]:
    """One row per usable sample: path, label, prediction, probabilities, loss."""
    probs = logits.softmax(1)
    kept = [s for s, good in zip(samples, ok.tolist()) if good]
    rows = []
    for s, p in zip(kept, probs):
        pred = int(p.argmax())
        rows.append({"path": s.path, "label": classes[s.label], "pred": classes[pred],
                     "prob": round(float(p[pred]), 6), "prob_true": round(float(p[s.label]), 6),
                     "loss": round(-math.log(max(float(p[s.label]), 1e-12)), 6)})
    return rows
