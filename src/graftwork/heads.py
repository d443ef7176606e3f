"""Classifier heads trained on top of backbone features."""
from __future__ import annotations

from torch import nn

__all__ = ["HEADS", "DEFAULT_DROPOUT", "build_head", "head_dropout"]

HEADS = ("mlp", "linear")
DEFAULT_DROPOUT = {"mlp": 0.5, "linear": 0.0}


def head_dropout(kind: str, dropout: float | None) -> float:
    """``dropout``, or the head's default where it is None."""
    return DEFAULT_DROPOUT.get(kind, 0.0) if dropout is None else dropout


def build_head(kind: str, in_dim: int, num_classes: int, hidden: int = 256,
               dropout: float | None = None) -> nn.Sequential:
    """``mlp``: the classic Dense(hidden, relu) + Dropout + Dense(classes); ``linear``: a probe.

    ``dropout=None`` takes the head's default (``DEFAULT_DROPOUT``): the linear probe has none,
    as dropout on its wide input costs more than the rest of its training and does not help.
    """
    dropout = head_dropout(kind, dropout)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(),
                             nn.Linear(in_dim, num_classes))
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
