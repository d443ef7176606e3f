"""Per-layer model summary (Keras style) via torchinfo, with BN statistics counted apart."""
from __future__ import annotations

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
    return f"{stats}\n{extra}"
