"""The backbone network: a pretrained trunk plus global average pooling, images -> features."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from graftwork.backbones.spec import BackboneSpec, WeightsInfo

__all__ = ["Backbone", "WithMidLayer", "mid_layer_channels", "mid_layer_width"]


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


def mid_layer_channels(state: Mapping[str, torch.Tensor], layer: str) -> int:
    """Output channels of trunk module ``layer``, read off a backbone state dict (keys
    ``trunk.*``) without building it: the length of the module's last 1-D tensor (its final
    norm's running variance)."""
    prefix = f"trunk.{layer}."
    vectors = [v for k, v in state.items() if k.startswith(prefix) and v.ndim == 1]
    if not vectors:
        raise ValueError(f"the backbone has no module {layer!r} with a 1-D parameter or buffer")
    return int(vectors[-1].shape[0])


def mid_layer_width(backbone: Any, layer: str) -> int:
    """The feature width of :class:`WithMidLayer` over ``backbone`` (a network or its prepared
    record: anything with ``feature_dim`` and ``state_dict()``), without running it."""
    return int(backbone.feature_dim) + mid_layer_channels(backbone.state_dict(), layer)


class WithMidLayer(nn.Module):
    """A backbone's pooled features followed by the pooled output of one mid-depth trunk
    module: images (N,3,H,W) -> (N, D + C). ``graft audit``'s label check reads both (the
    mid layer keeps shape detail that the classifier-facing features pool away); shares the
    backbone's parameters."""

    def __init__(self, backbone: Backbone, layer: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.spec = backbone.spec
        self.weights = backbone.weights
        backbone.trunk.get_submodule(layer)  # fails early on a name the trunk lacks
        self.feature_dim = mid_layer_width(backbone, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept: list[torch.Tensor] = []
        mid = self.backbone.trunk.get_submodule(self.layer)
        handle = mid.register_forward_hook(lambda _m, _a, out: kept.append(out))
        try:
            final = self.backbone(x)
        finally:
            handle.remove()
        out = kept[-1]
        return torch.cat([final, out.mean(dim=(2, 3)) if out.ndim == 4 else out.flatten(1)], 1)


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        prefix.append(tokens[0])
    return ".".join(prefix) or names[0].split(".")[0]


