"""Split a backbone into a frozen prefix and a trainable suffix that share its parameters.

The prefix (images -> feature map at the first unfrozen block) can run on a fast inference engine
while the suffix (feature map -> pooled features) trains in torch. ``suffix(prefix(x))`` runs the
same modules in the same order as ``backbone(x)``, so the result is identical.

Supported: timm EfficientNet/EfficientNet-Lite, timm MobileNetV3, timm ResNet, timm VGG, and
plain ``nn.Sequential`` trunks (torchvision ``mobilenet_v2().features``). Anything else raises
``NotImplementedError`` so that callers fall back to the all-torch path.
"""
from __future__ import annotations


import torch
from torch import nn

__all__ = ["Chain", "Pooled", "split_backbone", "sequential_atoms"]


class Chain(nn.Module):
    """Apply ``modules`` in order (the same module objects as the backbone's: weights shared).

    ``names`` are the modules' qualified names inside the backbone's trunk.
    """

    def __init__(self, names: list[str], modules: list[nn.Module]) -> None:
        super().__init__()
        self.names = list(names)
        self.layers = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Pooled(nn.Module):
    """A :class:`Chain` followed by the backbone's global average pooling: maps -> (N, D)."""

    def __init__(self, chain: Chain) -> None:
        super().__init__()
        self.chain = chain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.chain(x)
        return f.mean(dim=(2, 3)) if f.ndim == 4 else f.flatten(1)


def _flatten(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Plain ``nn.Sequential`` containers opened up (recursively); other modules kept whole."""
    if type(module) is nn.Sequential:
        out = []
        for name, child in module.named_children():
            out += _flatten(f"{prefix}.{name}" if prefix else name, child)
        return out
    return [(prefix, module)]


def _same_method(obj: object, cls: type, name: str) -> bool:
    return getattr(type(obj), name, None) is getattr(cls, name, None)


def sequential_atoms(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk's feature path as an ordered list of (qualified name, module).

    Applying them in order equals ``trunk.forward_features`` (or ``trunk`` for a Sequential).
    Raises ``NotImplementedError`` for an architecture whose forward is not known to be that.
    """
    if type(trunk) is nn.Sequential:
        return _flatten("", trunk)
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet
    from timm.models.vgg import VGG

    def parts(*names: str) -> list[tuple[str, nn.Module]]:
        return [atom for n in names for atom in _flatten(n, getattr(trunk, n))]

    if isinstance(trunk, EfficientNet) and _same_method(trunk, EfficientNet, "forward_features"):
        return parts("conv_stem", "bn1", "blocks", "conv_head", "bn2")
    if isinstance(trunk, MobileNetV3) and _same_method(trunk, MobileNetV3, "forward_features"):
        return parts("conv_stem", "bn1", "blocks")  # conv_head sits after pooling: not features
    if isinstance(trunk, ResNet) and _same_method(trunk, ResNet, "forward_features"):
        return parts("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
    if isinstance(trunk, VGG) and _same_method(trunk, VGG, "forward_features"):
        return parts("features")
    raise NotImplementedError(f"cannot split a {type(trunk).__name__} backbone")


def split_backbone(backbone: nn.Module, n_unfrozen: int | str) -> tuple[nn.Module, nn.Module]:
    """``(prefix, suffix)`` with ``suffix(prefix(x)) == backbone(x)`` and weights shared.

    Train/eval modes belong to the backbone (and ``GraftModel.train``'s BN policy): the parts
    start with the backbone's flag; calling ``.train()`` on a part sets its shared layers.
    ``n_unfrozen`` counts blocks from the end, as ``model.freeze_backbone``. 0 gives
    ``(backbone, nn.Identity())``; ``"all"`` gives ``(nn.Identity(), backbone)``. Otherwise the
    prefix ends at the first module holding a parameter of the last ``n_unfrozen`` blocks, and the
    suffix (which pools) holds exactly those blocks' parameters that the feature path uses.
    """
    blocks = backbone.block_param_names()
    if n_unfrozen == "all":
        return nn.Identity(), backbone
    if isinstance(n_unfrozen, bool) or not isinstance(n_unfrozen, int):
        raise ValueError(f"n_unfrozen must be an int or 'all', not {n_unfrozen!r}")
    if not 0 <= n_unfrozen <= len(blocks):
        raise ValueError(f"n_unfrozen must be between 0 and {len(blocks)} (or 'all')")
    atoms = sequential_atoms(backbone.trunk)
    if n_unfrozen == 0:
        return backbone, nn.Identity()
    owner: dict[str, int] = {}  # full parameter name -> atom index
    for i, (name, module) in enumerate(atoms):
        for pname, _ in module.named_parameters():
            owner[f"trunk.{name}.{pname}" if name else f"trunk.{pname}"] = i
    unfrozen = {p for _, names in blocks[len(blocks) - n_unfrozen:] for p in names} & set(owner)
    boundary = min((owner[p] for p in unfrozen), default=len(atoms))
    in_suffix = {p for p, i in owner.items() if i >= boundary}
    if in_suffix != unfrozen:
        raise NotImplementedError(
            f"the last {n_unfrozen} block(s) of {backbone.spec.name} do not form a contiguous "
            "tail of its feature path")
    names = [n for n, _ in atoms]
    mods = [m for _, m in atoms]
    prefix = Chain(names[:boundary], mods[:boundary])
    suffix = Pooled(Chain(names[boundary:], mods[boundary:]))
    for part in (prefix, suffix, suffix.chain):
        # only the flag, not recursively: the shared modules keep their own modes (the BN
        # policy of GraftModel.train). Without this, anything that restores a module's mode
        # after using it (torch.onnx.export does) would call .train(True) on the shared layers.
        part.training = backbone.training
    return prefix, suffix
