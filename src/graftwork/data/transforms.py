"""Image transforms on PIL images: the eval resize + centre crop + normalisation of a
:class:`~graftwork.data.preprocess.Preprocessing`, and the training augmentation policies
(``classic``: the Keras-tutorial recipe; ``mild``; ``trivialwide``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from graftwork.data.preprocess import Preprocessing
from graftwork.errors import ConfigError
from graftwork.registry import Registry

__all__ = ["AugmentConfig", "AUGMENT_POLICIES", "MILD", "augment_ops", "eval_transform",
           "train_transform"]


@dataclass(frozen=True)
class AugmentConfig:
    """Keras-tutorial augmentation; each part can be switched off (0 or False)."""

    rotation: float = 40.0  # degrees
    shift: float = 0.2  # fraction of width/height
    shear: float = 0.2  # radians (about 11.5 degrees)
    zoom: float = 0.2  # scale in [1-zoom, 1+zoom]
    hflip: bool = True
    fill: float = 0.0  # constant fill, on the 0..255 scale

    def as_dict(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "shift": self.shift, "shear": self.shear,
                "zoom": self.zoom, "hflip": self.hflip, "fill": self.fill}


def _resize_crop(pre: Preprocessing) -> list[Any]:
    from torchvision.transforms import v2

    return [v2.Resize(pre.resize_size, interpolation=pre.interpolation_mode(), antialias=True),
            v2.CenterCrop(pre.image_size)]


def _to_tensor(pre: Preprocessing) -> list[Any]:
    from torchvision.transforms import v2

    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(pre.mean), std=list(pre.std))]


def eval_transform(pre: Preprocessing) -> Any:
    """Resize the short side to ``pre.resize_size``, centre-crop, scale, normalise."""
    from torchvision.transforms import v2

    return v2.Compose([*_resize_crop(pre), *_to_tensor(pre)])


#: The ``--augment-policy`` choices, by name (the entries say what they do).
AUGMENT_POLICIES: Registry[str] = Registry("augment policy", flag="--augment-policy")
AUGMENT_POLICIES.register("classic", "the Keras-tutorial recipe (AugmentConfig)")
AUGMENT_POLICIES.register("mild", "rotation 10 degrees, shift and zoom 0.1, flips")
AUGMENT_POLICIES.register("trivialwide", "torchvision's TrivialAugmentWide and flips")
AUGMENT_POLICIES.register("none", "no augmentation")
#: ``mild``: smaller affine changes than the classic (Keras-tutorial) recipe, no shear.
MILD = AugmentConfig(rotation=10.0, shift=0.1, shear=0.0, zoom=0.1, hflip=True)


def augment_ops(aug: AugmentConfig | None, policy: str = "classic") -> list[Any]:
    """The random augmentation ops of ``policy`` (they work on PIL images and tensors):
    ``classic`` = ``aug``, ``mild`` = :data:`MILD`, ``trivialwide`` = torchvision's
    TrivialAugmentWide + flips, ``none`` (or ``aug`` None) = no augmentation."""
    import math

    from torchvision.transforms import v2

    if policy not in AUGMENT_POLICIES:
        raise ConfigError(f"augment_policy={policy!r} is not one of {list(AUGMENT_POLICIES)}",
                          "pass --augment-policy " + "|".join(AUGMENT_POLICIES))
    if aug is None or policy == "none":
        return []
    if policy == "trivialwide":
        return [v2.TrivialAugmentWide(fill=int(aug.fill)), v2.RandomHorizontalFlip()]
    if policy == "mild":
        aug = MILD
    ops: list[Any] = []
    if aug.rotation or aug.shift or aug.shear or aug.zoom:
        shear = math.degrees(aug.shear)
        ops.append(v2.RandomAffine(
            degrees=aug.rotation, translate=(aug.shift, aug.shift) if aug.shift else None,
            scale=(1 - aug.zoom, 1 + aug.zoom) if aug.zoom else None,
            shear=(-shear, shear, -shear, shear) if aug.shear else None,
            fill=int(aug.fill)))
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    return ops


def train_transform(pre: Preprocessing, aug: AugmentConfig | None,
                    policy: str = "classic") -> Any:
    """``eval_transform`` plus the augmentation of ``policy`` (see :func:`augment_ops`;
    ``classic``: random affine (rotation, shift, shear, zoom) and flips from ``aug``)."""
    from torchvision.transforms import v2

    ops = augment_ops(aug, policy)
    if not ops:
        return eval_transform(pre)
    return v2.Compose([*_resize_crop(pre), *ops, *_to_tensor(pre)])

