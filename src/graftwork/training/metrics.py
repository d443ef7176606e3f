"""Scoring logits against labels: accuracy (with ``n`` and its 95% Wilson interval) and loss of
a split, the per-image prediction rows a run saves (``predictions_test.csv``), and the paired
comparison of two models on the same images (:func:`paired`, exact McNemar test).

The two formulas are closed-form and written out here rather than imported from
``scipy.stats`` (about 1 s to import, on every ``graft train`` and ``graft evaluate``); the
tests check both against ``scipy.stats.binomtest``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from graftwork.data.discover import Sample
from graftwork.training.loop import evaluate

__all__ = ["score_logits", "prediction_rows", "wilson_interval", "with_interval",
           "mcnemar_p", "Paired", "paired", "KEEP_ALPHA", "Z95"]

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054
#: A costlier candidate replaces the kept one only when McNemar's exact one-sided test on the
#: validation images gives p below this (and it is right on more of them than it is wrong).
KEEP_ALPHA = 0.05


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95% by default); (0, 1)
    for ``n == 0``. Equal to ``scipy.stats.binomtest(correct, n).proportion_ci("wilson")``."""
    if n <= 0:
        return 0.0, 1.0
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def with_interval(scores: dict[str, Any]) -> dict[str, Any]:
    """``scores`` (``accuracy`` and ``n``) with ``accuracy_ci``: its 95% Wilson interval."""
    n, acc = int(scores.get("n") or 0), scores.get("accuracy")
    if n <= 0 or acc is None or not math.isfinite(acc):
        return dict(scores)
    low, high = wilson_interval(round(acc * n), n)
    return {**scores, "accuracy_ci": [round(low, 6), round(high, 6)]}


def score_logits(samples: Sequence[Sample], logits: torch.Tensor,
                 ok: torch.Tensor) -> dict[str, Any]:
    """Accuracy, loss, ``n`` and the accuracy's 95% interval (``accuracy_ci``) of ``logits``
    (rows of the samples where ``ok``)."""
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)[ok]
    return with_interval(evaluate(nn.Identity(), [(logits, labels)]))


def mcnemar_p(wins: int, losses: int, alternative: str = "greater") -> float:
    """McNemar's exact p-value for ``wins`` images only model A gets right against ``losses``
    only model B gets right: the binomial test of ``wins`` of ``wins + losses`` at one half.
    ``alternative="greater"`` (the keep rule's question: is A better?) is
    ``scipy.stats.binomtest(wins, wins + losses, alternative="greater").pvalue``;
    ``"two-sided"`` is ``binomtest(wins, wins + losses).pvalue``."""
    n = wins + losses
    if n == 0:
        return 1.0
    if alternative == "greater":
        return min(1.0, sum(math.comb(n, i) for i in range(wins, n + 1)) / 2 ** n)
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


@dataclass(frozen=True)
class Paired:
    """A candidate against the incumbent on the same ``n`` images: ``wins`` (only the candidate
    right), ``losses`` (only the incumbent right), the accuracy difference with its 95%
    interval (Agresti-Min: the Wald interval of matched pairs with half an image added to each
    cell) and McNemar's exact one-sided p-value (the chance of at least ``wins`` of the
    ``wins + losses`` images that split them going to the candidate were both equally good);
    ``better`` when the candidate wins significantly."""

    n: int
    wins: int
    losses: int
    diff: float
    diff_ci: tuple[float, float]
    p_value: float
    better: bool

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff"], d["p_value"] = round(self.diff, 6), round(self.p_value, 6)
        d["diff_ci"] = [round(v, 6) for v in self.diff_ci]
        return d

    def text(self) -> str:
        """``+1 of 100 images (1 better, 0 worse), diff +1.0 points [-2.4, +4.5], p = 1``."""
        lo, hi = (100 * v for v in self.diff_ci)
        return (f"{self.wins - self.losses:+d} of {self.n} images ({self.wins} better, "
                f"{self.losses} worse), diff {100 * self.diff:+.1f} points "
                f"[{lo:+.1f}, {hi:+.1f}], p = {self.p_value:.2g}")


def paired(candidate: Sequence[bool], incumbent: Sequence[bool],
           alpha: float = KEEP_ALPHA) -> Paired:
    """Compare per-image correctness of two models on the same images (same order)."""
    if len(candidate) != len(incumbent):
        raise ValueError(f"paired comparison of {len(candidate)} and {len(incumbent)} images")
    n = len(candidate)
    wins = sum(1 for a, b in zip(candidate, incumbent) if a and not b)
    losses = sum(1 for a, b in zip(candidate, incumbent) if b and not a)
    b, c, m = wins + 0.5, losses + 0.5, n + 2
    centre = (b - c) / m
    half = Z95 * math.sqrt(max((b + c) - (b - c) ** 2 / m, 0.0)) / m
    p = mcnemar_p(wins, losses)
    return Paired(n, wins, losses, (wins - losses) / n if n else 0.0,
                  (max(-1.0, centre - half), min(1.0, centre + half)), p,
                  wins > losses and p < alpha)


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
