"""``frozen``: the head trained on augmented images through the frozen backbone (its BatchNorm
layers in inference mode). On a CPU the backbone runs on the inference engine (ONNX Runtime
where installed) and only the head runs in torch; elsewhere the whole model runs in torch."""
from __future__ import annotations

from typing import ClassVar

import torch

from graftwork.data.transforms import train_transform
from graftwork.features import bind_backbone
from graftwork.features.pipeline import Gate
from graftwork.model.graft import freeze_backbone
from graftwork.phases._engine import OnEngine, pixel_batches, uses_engine
from graftwork.phases.base import (Phase, PhaseContext, PhaseDefaults, PhasePlan,
                                   images_per_class)
from graftwork.training.loop import evaluate, tensor_batches

__all__ = ["Frozen", "augmented_batches"]


def augmented_batches(ctx: PhaseContext):  # type: ignore[no-untyped-def]
    """An epoch of augmented, normalised training images for the all-torch model."""
    s = ctx.session
    tf = train_transform(s.preprocessing, ctx.params.get("augment"),
                         ctx.params.get("augment_policy") or "classic")
    return lambda g, bs: s.image_batches(ctx.splits.train, tf, g, bs)


def planned_images(ctx: PhaseContext, phase: Phase) -> int:
    """Images the phase will push through the engine (decides whether an export pays)."""
    n = len(ctx.splits.train)
    return n * phase.config(ctx.params, n).epochs


class Frozen(Phase):
    name = "frozen"
    description = "the head on augmented images through the frozen backbone"
    defaults = PhaseDefaults(epochs=8, lr=1e-3, optimizer="adam", schedule="none", patience=4)
    # In the ladder, from this many training images per class the rung is skipped: at 200 per
    # class (fmnist-2000 in bench/quality.md as of commit 07c29af) no epoch beat the extraction
    # head on any seed (+0.0 points, 3 of 3 ties) for ~100 s per seed; below, it paid up to +0.9
    skip_from_per_class: ClassVar[int] = 150

    def skip(self, ctx: PhaseContext, best_val_accuracy: float | None) -> str | None:
        per_class = images_per_class(ctx.splits)
        if per_class < self.skip_from_per_class:
            return None
        return (f"{per_class:.0f} training images per class; from {self.skip_from_per_class} "
                "graftwork's quality benchmark measured no gain from it over extraction; "
                "--strategy frozen runs it alone")

    def trainable(self, ctx: PhaseContext) -> None:
        freeze_backbone(ctx.session.model.backbone, 0)

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        s = ctx.session
        model = s.model
        engine = uses_engine(ctx)
        validate = None
        if ctx.splits.val:  # backbone frozen, val not augmented: cached features give the same
            xv, yv = s.features(ctx.splits.val, "features val")
            runtime = None if engine else ctx.runtime
            validate = lambda: evaluate(model.head, tensor_batches(xv, yv, 256), runtime)  # noqa: E731
        n = len(ctx.splits.train)
        if engine:
            model.eval()
            runner = bind_backbone(model.backbone, s.preprocessing, s.cache(), s.options.engine,
                                   planned_images(ctx, self))
            gate = Gate()
            return PhasePlan(OnEngine(runner, model.head, model, gate),
                             pixel_batches(s, ctx.splits.train, ctx.params.get("augment"),
                                           ctx.params.get("augment_policy"), gate),
                             validate, n, runtime=False)
        model.to(memory_format=torch.channels_last)
        model.to(ctx.runtime.device)  # type: ignore[union-attr]
        return PhasePlan(model, augmented_batches(ctx), validate, n)
