"""The backbone network: a pretrained trunk plus global average pooling, images -> features."""
from __future__ import annotations

import re

import torch
from torch import nn

from graftwork.backbones.spec import BackboneSpec, WeightsInfo

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """A pretrained trunk plus global average pooling: images (N,3,H,W) -> features (N,D)."""

    def __init__(self, trunk: nn.Module, spec: BackboneSpec, weights: WeightsInfo) -> None:
        super().__init__()
        self.trunk = trunk
        self.spec = spec
        self.weights = weights
        self.feature_dim = self._infer_feature_dim()

    def forward_maps(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.trunk, "forward_features"):
            return self.trunk.forward_features(x)
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_maps(x)
        if f.ndim == 4:
            return f.mean(dim=(2, 3))
        if f.ndim == 3 and hasattr(self.trunk, "forward_head"):  # token models (ViT)
            return self.trunk.forward_head(f, pre_logits=True)
        return f.flatten(1)

    def _infer_feature_dim(self) -> int:
        if isinstance(getattr(self.trunk, "num_features", None), int):  # timm models
            return int(self.trunk.num_features)
        size = max(self.spec.input_size, 32) if self.spec.library != "custom" else self.spec.input_size
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            dim = int(self(torch.zeros(1, 3, size, size)).shape[1])
        self.train(was_training)
        return dim

    def block_param_names(self) -> list[tuple[str, list[str]]]:
        """Ordered blocks (earliest first) with the full parameter names each contains."""
        names = [n for n, _ in self.named_parameters()]
        if self.spec.blocks:
            out = []
            for block, pattern in self.spec.blocks:
                rx = re.compile(r"trunk\." + pattern)
                out.append((block, [n for n in names if rx.match(n)]))
            return out
        from timm.models import group_parameters

        matcher = getattr(self.trunk, "group_matcher", None)
        if matcher is None:
            return [("all", names)]
        groups = group_parameters(self.trunk, matcher(coarse=True))
        return [(f"group{i}:{_common_prefix(p)}", [f"trunk.{n}" for n in p])
                for i, p in enumerate(groups.values())]


    def split(self, n_unfrozen: int | str) -> tuple[nn.Module, nn.Module]:
        """``(prefix, suffix)``: images -> maps at the first of the last ``n_unfrozen`` blocks,
        and maps -> pooled features; ``suffix(prefix(x)) == self(x)``, parameters shared.

        0 gives ``(self, Identity)``, ``"all"`` ``(Identity, self)``. Raises
        ``NotImplementedError`` for architectures it cannot split (use the all-torch path).
        """
        from graftwork.backbones.split import split_backbone

        return split_backbone(self, n_unfrozen)


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        prefix.append(tokens[0])
    return ".".join(prefix) or names[0].split(".")[0]


