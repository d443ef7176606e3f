"""Per-layer model summary (Keras style) via torchinfo, with BN statistics counted apart."""
from __future__ import annotations

import re

from torch import nn

from graftwork.model import parameter_counts

__all__ = ["model_summary"]


def model_summary(model: nn.Module, image_size: int, depth: int = 3) -> str:
    """Name, input/output shape, params and trainable flag per layer, then the totals."""
    from torchinfo import summary

    was_training = model.training
    stats = summary(model, input_size=(1, 3, image_size, image_size), depth=depth, verbose=0,
                    col_names=("input_size", "output_size", "num_params", "trainable"),
                    row_settings=("var_names",), device="cpu", mode="eval")
    model.train(was_training)
    counts = parameter_counts(model)
    extra = (f"Trainable weights: {counts['trainable_params']:,}\n"
             f"Frozen weights: {counts['frozen_params']:,}\n"
             f"BatchNorm running statistics (buffers, not weights): {counts['bn_buffers']:,}")
    # torchinfo 1.8 prints "(Units.MEGABYTES)" on Python >= 3.11: show the unit letter instead
    table = re.sub(r"\(Units\.(\w+)\)", lambda m: f"({m.group(1)[0]})", str(stats))
    return f"{table}\n{extra}"
