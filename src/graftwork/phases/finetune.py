"""``finetune``: from a trained head, the last ``unfreeze`` blocks train too, with a small
learning rate that decays block by block away from the head (discriminative rates)."""
from __future__ import annotations

from typing import Any

import torch

from graftwork.data import eval_transform
from graftwork.errors import ConfigError
from graftwork.model import freeze_backbone
from graftwork.phases.base import Phase, PhaseContext, PhaseDefaults, PhasePlan
from graftwork.phases.frozen import augmented_batches
from graftwork.training import TrainConfig, evaluate

__all__ = ["Finetune"]


class Finetune(Phase):
    name = "finetune"
    description = "the head and the last --unfreeze blocks, small learning rate"
    defaults = PhaseDefaults(epochs=6, lr=1e-4, optimizer="rmsprop", schedule="cosine",
                             patience=4)
    warmup = ("extract",)
    changes_backbone = True

    def check(self, ctx: PhaseContext) -> None:
        unfreeze = ctx.params.get("unfreeze", 1)
        if unfreeze == "all":
            return
        backbone = ctx.session.model.backbone
        n = len(backbone.block_param_names())
        if not isinstance(unfreeze, int) or isinstance(unfreeze, bool) or not 0 <= unfreeze <= n:
            name = ctx.params.get("backbone")
            raise ConfigError(f"unfreeze={unfreeze!r} does not fit {name}, which has {n} blocks",
                              f"choose 0..{n} or 'all' (see `graft summary {name}`)")

    def trainable(self, ctx: PhaseContext) -> None:
        ctx.session.unfrozen_blocks = freeze_backbone(ctx.session.model.backbone,
                                                      ctx.params.get("unfreeze", 1))

    def param_groups(self, ctx: PhaseContext, cfg: TrainConfig) -> list[dict[str, Any]]:
        """The head at ``lr``, then each trainable block at ``lr * lr_decay**depth``."""
        model = ctx.session.model
        groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
        by_name = dict(model.backbone.named_parameters())
        trainable = [(b, n) for b, n in model.backbone.block_param_names()
                     if any(by_name[p].requires_grad for p in n)]
        decay = ctx.params.get("lr_decay", 0.5)
        for depth, (_, names) in enumerate(reversed(trainable)):
            params = [by_name[p] for p in names if by_name[p].requires_grad]
            if params:
                groups.append({"params": params, "lr": cfg.lr * decay ** depth})
        return groups

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        s = ctx.session
        validate = None
        if ctx.splits.val:
            tf = eval_transform(s.preprocessing)
            validate = lambda: evaluate(s.model, s.image_batches(ctx.splits.val, tf, None, 64),  # noqa: E731
                                        ctx.runtime)
        s.model.to(memory_format=torch.channels_last)
        if ctx.runtime is not None:
            s.model.to(ctx.runtime.device)
        return PhasePlan(s.model, augmented_batches(ctx), validate, len(ctx.splits.train))
