"""Classifier heads trained on top of backbone features."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

__all__ = ["HEADS", "DEFAULT_DROPOUT", "HeadChoice", "HEAD_CANDIDATES", "build_head",
           "head_dropout"]

HEADS = ("mlp", "linear", "auto")
DEFAULT_DROPOUT = {"mlp": 0.5, "linear": 0.0, "auto": 0.5}


@dataclass(frozen=True)
class HeadChoice:
    """One head ``head="auto"`` tries on the cached features (kept if best on validation)."""

    kind: str
    hidden: int = 256
    dropout: float = 0.0
    weight_decay: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: What ``head="auto"`` compares on the validation split: the classic dense head, a wider one
#: with less dropout, and L2-regularised linear probes (multinomial logistic regression).
HEAD_CANDIDATES = (HeadChoice("mlp", 256, 0.5), HeadChoice("mlp", 512, 0.3),
                   HeadChoice("linear", 0, 0.0, 1e-4), HeadChoice("linear", 0, 0.0, 1e-2))


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
    if kind in ("mlp", "auto"):  # "auto" starts as the classic head until the search picks
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(),
                             nn.Linear(in_dim, num_classes))
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")
