"""Decoding for the inference engines: resize + centre crop on uint8 tensors, normalisation in the
engine (or inside an exported graph).

Workers ship uint8 HWC images (4x fewer bytes than float); :class:`Normalize` turns a uint8 NHWC
batch into the network's float NCHW input with the same operations, in the same order, as
``data.eval_transform``. Sizes, interpolation, mean and std come from one
:class:`~graftwork.data.preprocess.Preprocessing`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from graftwork.data.preprocess import Preprocessing

__all__ = ["resize_rule", "FastEvalTransform", "AugmentPixels", "Normalize", "FromPixels", "resize_size"]


def resize_rule(pre: Preprocessing) -> dict[str, Any]:
    """:class:`FastEvalTransform` in words an implementation can follow, exactly (an exported
    model's ``preprocess.json`` carries it; README's onnxruntime recipe implements it)."""
    return {
        "short_side": pre.resize_size,
        "long_side": "int(short_side * long / short), truncated (torchvision's rule); the "
                     "image is left as it is when both sides already have their size",
        "passes": "width first, then height, each only where that side changes; uint8 between "
                  "and after the passes",
        "filter": f"{pre.interpolation}, antialiased as Pillow's: support "
                  "(2 for bicubic, 1 for bilinear) * max(1, in / out), source centre "
                  "(i + 0.5) * in / out, first tap int(centre - support + 0.5) clipped to 0, "
                  "taps up to int(centre + support + 0.5) clipped to the side, at most "
                  "ceil(support) * 2 + 1 of them; bicubic is "
                  "Keys' kernel with a = -0.5, bilinear the triangle 1 - |x|, evaluated at "
                  "(j - centre + 0.5) / max(1, in / out)",
        "fixed_point": "weights of each output divided by their sum, then for the whole pass "
                       "precision p = the largest p <= 22 with int(0.5 + max_weight * 2^p) "
                       "< 2^15; weights round(w * 2^p) (halves away from 0); a pixel is "
                       "(sum(weight * value) + 2^(p-1)) >> p clamped to 0..255 (torch's uint8 "
                       "antialiased kernel; torchvision resizes bilinear this way on AVX2, AVX512 "
                       "and arm64 CPUs, elsewhere in float, rounded)",
        "crop": "a centre crop of image_size: top = int(round((height - image_size) / 2)), "
                "left = int(round((width - image_size) / 2)) (Python's round: halves to even)",
    }


def resize_size(pre: Preprocessing) -> int:
    """The short side ``eval_transform`` resizes to before its centre crop (``pre.resize_size``)."""
    return pre.resize_size


class FastEvalTransform:
    """``eval_transform``'s resize + centre crop on the image as a uint8 tensor; uint8 HWC out.

    torchvision runs the same ``Resize``/``CenterCrop`` on a uint8 tensor with its native
    (AVX2) antialiased resampler, about 4x faster than on a PIL image; pixels agree with the PIL
    path within a few grey levels on rare pixels (mean difference ~0.005 levels).
    """

    def __init__(self, pre: Preprocessing) -> None:
        self.size = pre.image_size
        self.resize = pre.resize_size
        self.interpolation = pre.interpolation_mode()

    def __call__(self, img: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if isinstance(img, np.ndarray):
            x = torch.from_numpy(img).permute(2, 0, 1)
        else:
            if img.mode != "RGB":
                img = img.convert("RGB")
            x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # CHW view
        x = TF.resize(x, [self.resize], interpolation=self.interpolation, antialias=True)
        x = TF.center_crop(x, [self.size, self.size])
        return x.permute(1, 2, 0).contiguous()


class AugmentPixels(FastEvalTransform):
    """The training augmentation on uint8 pixels: ``eval_transform``'s resize + centre crop
    (torchvision on a uint8 tensor), then the policy's random ops (affine, flip, ...) on the crop
    as a PIL image, as ``data.train_transform`` does; uint8 HWC out (for the engines). PIL's
    affine is ~2.5x faster than torchvision's on a uint8 tensor (0.48 vs 1.17 ms per image)."""

    def __init__(self, pre: Preprocessing, aug: Any, policy: str = "classic") -> None:
        super().__init__(pre)
        from torchvision.transforms import v2

        from graftwork.data.transforms import augment_ops

        self.augment = v2.Compose(augment_ops(aug, policy))

    def __call__(self, img: Any) -> torch.Tensor:
        from PIL import Image

        crop = Image.fromarray(super().__call__(img).numpy())
        return torch.from_numpy(np.array(self.augment(crop), dtype=np.uint8))


class Normalize(nn.Module):
    """uint8 NHWC batch -> float NCHW (channels_last), scaled to 0..1 and normalised."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        for name, value in (("mean", pre.mean), ("std", pre.std)):
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32).mul(1.0 / 255)
        return x.sub(self.mean).div(self.std)


class FromPixels(nn.Module):
    """A network on uint8 NHWC pixels: what the engines run and what gets exported."""

    def __init__(self, module: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.normalize = Normalize(pre)
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.normalize(x))
