"""Per-layer model summary (Keras style) via torchinfo, with BN statistics counted apart."""
from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

from graftwork.model.graft import parameter_counts

__all__ = ["model_summary", "backbone_table", "run_summary"]

_COLUMNS = ("input_size", "output_size", "num_params", "trainable")


def _table(module: nn.Module, input_size: tuple[int, ...], depth: int) -> str:
    """torchinfo's table: name, input/output shape, params and trainable flag per layer."""
    from torchinfo import summary

    was_training = module.training
    stats = summary(module, input_size=input_size, depth=depth, verbose=0, col_names=_COLUMNS,
                    row_settings=("var_names",), device="cpu", mode="eval")
    module.train(was_training)
    # torchinfo 1.8 prints "(Units.MEGABYTES)" on Python >= 3.11: show the unit letter instead
    return re.sub(r"\(Units\.(\w+)\)", lambda m: f"({m.group(1)[0]})", str(stats))


def _totals(counts: Mapping[str, int]) -> str:
    return (f"Trainable weights: {counts['trainable_params']:,}\n"
            f"Frozen weights: {counts['frozen_params']:,}\n"
            f"BatchNorm running statistics (buffers, not weights): {counts['bn_buffers']:,}")


def model_summary(model: nn.Module, image_size: int, depth: int = 3) -> str:
    """Name, input/output shape, params and trainable flag per layer, then the totals."""
    return f"{_table(model, (1, 3, image_size, image_size), depth)}\n{_totals(parameter_counts(model))}"


def backbone_table(backbone: nn.Module, image_size: int, depth: int = 3) -> str:
    """The per-layer table of a backbone alone (images -> features)."""
    return _table(backbone, (1, 3, image_size, image_size), depth)


def run_summary(backbone_text: str, head: nn.Module, feature_dim: int,
                counts: Mapping[str, int]) -> str:
    """A trained run's summary: the backbone's table, the head's table, the totals."""
    return (f"Backbone (images -> features)\n{backbone_text}\n\n"
            f"Head (features -> logits)\n{_table(head, (1, feature_dim), 3)}\n{_totals(counts)}")
