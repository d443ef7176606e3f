"""The end-to-end model (backbone + head), freezing, and the BatchNorm policy.

"Frozen" (``requires_grad=False``) and "inference mode" are different things: a frozen BN layer
put in training mode still normalises with batch statistics and still updates its running
averages. :class:`GraftModel` therefore keeps every BN layer of a frozen part in inference
mode whatever ``model.train()`` says, and unfrozen BN layers too unless ``train_bn`` is set.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from graftwork.backbones.network import Backbone

__all__ = ["GraftModel", "freeze_backbone", "parameter_counts", "bn_layers"]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def bn_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer (1d/2d/3d, SyncBN, timm's BatchNormAct2d) with its name."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _BN_TYPES)]


class GraftModel(nn.Module):
    """Images -> logits. ``train()`` applies the BN policy after setting modes."""

    def __init__(self, backbone: Backbone, head: nn.Module, train_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.train_bn = train_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> GraftModel:
        super().train(mode)
        if mode:
            for _, bn in bn_layers(self.backbone):
                frozen = not any(p.requires_grad for p in bn.parameters(recurse=False))
                if frozen or not self.train_bn:
                    bn.eval()
        return self

    def bn_in_train_mode(self) -> list[str]:
        """Names of BN layers that would update running statistics right now."""
        return [n for n, m in bn_layers(self) if m.training]


def resolve_unfreeze(backbone: Backbone, unfreeze: int | str,
                     per_class: float | None = None) -> int | str:
    """``unfreeze`` with ``"auto"`` replaced: the backbone's ``finetune_more_blocks`` when the
    training set has at least its ``finetune_more_from`` images per class (``per_class``), else
    its ``finetune_blocks`` (a count: at most its number of blocks)."""
    if unfreeze != "auto":
        return unfreeze
    spec = backbone.spec
    blocks: int | str = spec.finetune_blocks
    if (spec.finetune_more_from is not None and per_class is not None
            and per_class >= spec.finetune_more_from):
        blocks = spec.finetune_more_blocks
    return blocks if blocks == "all" else min(int(blocks), len(backbone.block_param_names()))


def freeze_backbone(backbone: Backbone, unfreeze: int | str = 0) -> list[str]:
    """Freeze the backbone except its last ``unfreeze`` blocks (``"all"``: everything trains;
    ``"auto"``: the backbone's ``finetune_blocks``; the finetune phase resolves ``"auto"``
    with the training set's size first, see ``resolve_unfreeze``).

    Returns the names of the unfrozen blocks.
    """
    unfreeze = resolve_unfreeze(backbone, unfreeze)
    blocks = backbone.block_param_names()
    if unfreeze == "all":
        n = len(blocks)
    else:
        n = int(unfreeze)
        if n < 0 or n > len(blocks):
            raise ValueError(f"unfreeze must be between 0 and {len(blocks)} (or 'all')")
    chosen = blocks[len(blocks) - n:] if n else []
    trainable = {p for _, names in chosen for p in names}
    for name, param in backbone.named_parameters():
        param.requires_grad = name in trainable or (unfreeze == "all")
    return [b for b, _ in chosen]


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trainable and frozen weights, and BN running statistics (buffers) counted apart."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    bn_buffers = sum(m.running_mean.numel() + m.running_var.numel()
                     for _, m in bn_layers(model) if m.running_mean is not None)
    return {"trainable_params": trainable, "frozen_params": frozen, "bn_buffers": bn_buffers}
