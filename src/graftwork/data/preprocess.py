"""A model's eval preprocessing as one frozen value, :class:`Preprocessing` (a leaf module: no
torch at import, no graftwork imports but ``errors``).

The resize rule is defined here and nowhere else: the short side goes to ``resize_size =
round(image_size / crop_pct)`` (antialiased, with ``interpolation``), then a centre crop of
``image_size``; JPEGs may decode at a reduced scale no smaller than ``resize_size``. Two
implementations follow it: ``data.transforms`` (PIL, training batches) and
``features.decode`` (uint8 tensors: engines, export, serving).

``as_dict()`` is the JSON form: ``config.json``'s ``preprocessing`` section and part of the
feature-cache key (``features.cache``), so its keys and value types must not change.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graftwork.errors import ConfigError

__all__ = ["Preprocessing", "DEFAULT_INTERPOLATION", "DEFAULT_CROP_PCT", "INTERPOLATIONS"]

#: The one default interpolation and crop fraction (``BackboneSpec`` uses them too).
DEFAULT_INTERPOLATION = "bicubic"
DEFAULT_CROP_PCT = 0.875
#: torchvision's ``InterpolationMode`` values (tests/test_preprocess.py keeps them in step).
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
_REQUIRED = ("image_size", "mean", "std")
_KEYS = (*_REQUIRED, "interpolation", "crop_pct")
_FIX = "give preprocessing as {image_size, mean, std, interpolation, crop_pct}"


def _is_num(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _bad(key: str, want: str, got: Any) -> ConfigError:
    return ConfigError(f"preprocessing.{key} must be {want} (got {got!r})", _FIX)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to :attr:`resize_size`, centre-crop ``image_size``, scale to 0..1,
    normalise with ``mean``/``std`` (RGB). Values keep their types (``as_dict`` must hash as
    the dict stored before); bad values raise ``ConfigError``."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = DEFAULT_INTERPOLATION
    crop_pct: float = DEFAULT_CROP_PCT

    def __post_init__(self) -> None:
        size = self.image_size
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
            raise _bad("image_size", "a positive integer", size)
        object.__setattr__(self, "image_size", int(size))
        for key, low in (("mean", None), ("std", 0.0)):
            value = getattr(self, key)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise _bad(key, "a list of 3 finite numbers", value)
            value = tuple(value)
            if len(value) != 3 or not all(_is_num(v) and (low is None or v > low) for v in value):
                raise _bad(key, "a list of 3 finite numbers" + (" above 0" if low is not None
                                                                  else ""), list(value))
            object.__setattr__(self, key, value)
        if not isinstance(self.interpolation, str) or self.interpolation not in INTERPOLATIONS:
            raise _bad("interpolation", "one of " + ", ".join(INTERPOLATIONS), self.interpolation)
        if not _is_num(self.crop_pct) or not 0 < self.crop_pct <= 1:
            raise _bad("crop_pct", "a number above 0 and at most 1", self.crop_pct)

    @property
    def resize_size(self) -> int:
        """The short side before the centre crop (also the smallest JPEG draft size)."""
        return int(round(self.image_size / self.crop_pct))

    def interpolation_mode(self) -> Any:
        """``interpolation`` as torchvision's ``InterpolationMode``."""
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (config.json, the feature-cache key): same keys and value types as
        the dict graftwork always stored."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Preprocessing) -> Preprocessing:
        """The inverse of :meth:`as_dict`; ``interpolation`` and ``crop_pct`` may be left out
        (the defaults above); a ``Preprocessing`` is returned as it is. Raises ``ConfigError``
        naming the bad, missing or unknown key."""
        if isinstance(data, Preprocessing):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"preprocessing must be a dict (got {type(data).__name__})", _FIX)
        unknown = sorted(set(data) - set(_KEYS), key=str)
        if unknown:
            raise ConfigError(f"preprocessing.{unknown[0]} is not a preprocessing setting "
                              f"(known: {', '.join(_KEYS)})", _FIX)
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ConfigError(f"preprocessing.{missing[0]} is missing", _FIX)
        return cls(**data)
