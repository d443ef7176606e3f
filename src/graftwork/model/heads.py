"""Classifier heads trained on top of backbone features; ``HEADS`` holds their builders by name
(the ``--head`` choices: add one with ``HEADS.register(name, builder)``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from collections.abc import Callable
from typing import Any

from torch import nn

from graftwork.registry import Registry

__all__ = ["HEADS", "DEFAULT_DROPOUT", "HeadChoice", "HEAD_CANDIDATES", "build_head",
           "head_dropout"]

DEFAULT_DROPOUT = {"mlp": 0.5, "linear": 0.0, "auto": 0.5}


@dataclass(frozen=True)
class HeadChoice:
    """One head ``head="auto"`` tries on the cached features (the first is kept unless another
    is significantly better on validation)."""

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
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; choose one of {tuple(HEADS)}")
    return HEADS[kind](in_dim, num_classes, hidden, head_dropout(kind, dropout))


def _mlp(in_dim: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def _linear(in_dim: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout) if dropout else nn.Identity(),
                         nn.Linear(in_dim, num_classes))


#: Head builders ``(in_dim, num_classes, hidden, dropout) -> module`` by kind; ``auto`` starts
#: as the classic head until the search on the validation split picks one.
HEADS: Registry[Callable[[int, int, int, float], nn.Sequential]] = Registry("head", flag="--head")
HEADS.register("mlp", _mlp)
HEADS.register("linear", _linear)
HEADS.register("auto", _mlp)
