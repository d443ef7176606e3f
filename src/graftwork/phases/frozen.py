"""``frozen``: the head trained inside the end-to-end model on augmented images, backbone
frozen (and its BatchNorm layers in inference mode)."""
from __future__ import annotations

import torch

from graftwork.data import train_transform
from graftwork.model import freeze_backbone
from graftwork.phases.base import Phase, PhaseContext, PhaseDefaults, PhasePlan
from graftwork.training import evaluate, tensor_batches

__all__ = ["Frozen", "augmented_batches"]


def augmented_batches(ctx: PhaseContext):  # type: ignore[no-untyped-def]
    """An epoch of augmented training images for the end-to-end model."""
    s = ctx.session
    tf = train_transform(s.preprocessing, ctx.params.get("augment"),
                         ctx.params.get("augment_policy") or "classic")
    return lambda g, bs: s.image_batches(ctx.splits.train, tf, g, bs)


class Frozen(Phase):
    name = "frozen"
    description = "the head on augmented images through the frozen backbone"
    defaults = PhaseDefaults(epochs=8, lr=1e-3, optimizer="adam", schedule="none", patience=4)

    def trainable(self, ctx: PhaseContext) -> None:
        freeze_backbone(ctx.session.model.backbone, 0)

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        s = ctx.session
        validate = None
        if ctx.splits.val:  # backbone frozen, val not augmented: cached features give the same
            xv, yv = s.features(ctx.splits.val, "features val")
            validate = lambda: evaluate(s.model.head, tensor_batches(xv, yv, 256),  # noqa: E731
                                        ctx.runtime)
        s.model.to(memory_format=torch.channels_last)
        if ctx.runtime is not None:
            s.model.to(ctx.runtime.device)
        return PhasePlan(s.model, augmented_batches(ctx), validate, len(ctx.splits.train))
