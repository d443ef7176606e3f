"""Temperature scaling and expected calibration error (pure torch).

    t = fit_temperature(val_logits, val_labels)      # > 1 when the model is over-confident
    probs = (logits / t).softmax(1)
    report = calibration_report(logits, labels, t)   # metrics.json "calibration" section
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["fit_temperature", "expected_calibration_error", "calibration_report", "tta_logits"]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, iterations: int = 50) -> float:
    """The temperature ``T`` minimising the cross-entropy of ``logits / T`` (LBFGS on log T)."""
    logits, labels = logits.detach().float().clone(), labels.detach().long().clone()
    if not len(labels):
        return 1.0
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
                               ) -> tuple[float, list[dict[str, Any]]]:
    """ECE (confidence vs accuracy over ``bins`` equal-width bins) and the bins themselves
    (``lower``, ``upper``, ``confidence``, ``accuracy``, ``count``; empty bins have None)."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    n = max(1, len(labels))
    ece, rows = 0.0, []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        mask = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        count = int(mask.sum())
        row: dict[str, Any] = {"lower": round(lo, 6), "upper": round(hi, 6), "count": count,
                               "confidence": None, "accuracy": None}
        if count:
            c, a = float(conf[mask].mean()), float(correct[mask].mean())
            row.update(confidence=round(c, 6), accuracy=round(a, 6))
            ece += count / n * abs(c - a)
        rows.append(row)
    return ece, rows


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                       bins: int = 15) -> dict[str, Any]:
    """The metrics.json ``calibration`` section: temperature, ECE and bins before/after."""
    before, bins_before = expected_calibration_error(logits.softmax(1), labels, bins)
    after, bins_after = expected_calibration_error((logits / temperature).softmax(1), labels, bins)
    return {"temperature": round(temperature, 6), "ece_before": round(before, 6),
            "ece_after": round(after, 6), "bins": bins_before, "bins_after": bins_after,
            "n": int(len(labels))}


def tta_logits(*logits: torch.Tensor) -> torch.Tensor:
    """Log of the averaged softmax probabilities of several views' logits (a valid logit)."""
    probs = torch.stack([x.float().softmax(1) for x in logits]).mean(0)
    return probs.clamp_min(1e-12).log()
