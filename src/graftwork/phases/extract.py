"""``extract``: every image once through the frozen backbone (features cached), a head trained
on the features. No network is built when every feature is already cached."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graftwork.phases.base import (Phase, PhaseContext, PhaseDefaults, PhasePlan,
                                   feature_batch_size, sqrt_scaled_lr)
from graftwork.training import TrainConfig, evaluate, tensor_batches, torch_threads

__all__ = ["Extract"]


class Extract(Phase):
    name = "extract"
    description = "a dense head on cached backbone features"
    defaults = PhaseDefaults(epochs=40, lr=1e-3, optimizer="adam", schedule="none", patience=8)
    needs_network = False

    def config(self, params: Mapping[str, Any], n_train: int) -> TrainConfig:
        """Larger batches on big data (~n/20, <= 256) with a square-root-scaled Adam rate."""
        cfg = super().config(params, n_train)
        batch = feature_batch_size(cfg.batch_size, n_train)
        lr = cfg.lr if params.get("lr") else sqrt_scaled_lr(cfg.lr, batch, cfg.batch_size)
        return TrainConfig(**{**cfg.as_dict(), "batch_size": batch, "lr": lr})

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        s = ctx.session
        x, y = s.features(ctx.splits.train, "features train")
        head = s.head
        validate = None
        if ctx.splits.val:
            xv, yv = s.features(ctx.splits.val, "features val")
            validate = lambda: evaluate(head, tensor_batches(xv, yv, 256))  # noqa: E731
        return PhasePlan(head, lambda g, bs: tensor_batches(x, y, bs, g), validate, len(x))

    def run(self, ctx: PhaseContext):  # type: ignore[no-untyped-def]
        with torch_threads(1):  # a small head is many times slower on two OpenMP threads
            return super().run(ctx)
