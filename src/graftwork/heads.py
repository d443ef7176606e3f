"""Classifier heads trained on top of backbone features."""
from __future__ import annotations

from torch import nn

__all__ = ["HEADS", "build_head"]

HEADS = ("mlp", "linear")


def build_head(kind: str, in_dim: int, num_classes: int, hidden: int = 256,
               dropout: float = 0.5) -> nn.Sequential:
    """``mlp``: the classic Dense(hidden, relu) + Dropout + Dense(classes); ``linear``: a probe."""
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(),
                             nn.Linear(in_dim, num_classes))
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
