"""``finetune``: from a trained head, the last ``unfreeze`` blocks train too, with a small
learning rate that decays block by block away from the head (discriminative rates).

On a CPU the backbone is split at the first unfrozen block: the frozen prefix runs on the
inference engine (its outputs for the validation images computed once), the suffix and the head
train in torch. Architectures that cannot be split, and CUDA/MPS runs, use the all-torch path."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from graftwork.data.transforms import eval_transform
from graftwork.errors import ConfigError
from graftwork.features.pipeline import Gate
from graftwork.model.graft import freeze_backbone, resolve_unfreeze
from graftwork.phases._engine import (OnEngine, bind_prefix, identity_runner, pixel_batches,
                                      split_or_none, uses_engine)
from graftwork.phases.base import (Phase, PhaseContext, PhaseDefaults, PhasePlan,
                                   images_per_class, phase_params)
from graftwork.phases.frozen import augmented_batches, planned_images
from graftwork.training.loop import TrainConfig, evaluate

__all__ = ["Finetune"]

log = logging.getLogger(__name__)

_VAL_MAPS_MAX_BYTES = 512 * 2**20  # precomputed validation maps kept in memory up to this


def _blocks(n: int | str) -> str:
    return "every block" if n == "all" else f"{n} block{'' if n == 1 else 's'}"


class Finetune(Phase):
    name = "finetune"
    description = "the head and the last --unfreeze blocks, small learning rate"
    # AdamW 5e-4 with decoupled weight decay and a one-epoch warm-up (bench/quality.md):
    # torch's RMSprop starts its square average at 0, so its first steps are ~10x the rate,
    # which wrecked unfrozen blocks; Adam 2e-4 without decay moved too little
    defaults = PhaseDefaults(epochs=8, lr=5e-4, optimizer="adamw", schedule="warmcosine",
                             patience=4, weight_decay=0.05)
    # Below 40 training images per class the default rate is 2e-4 (bench/quality.md): on the
    # embedded Fashion-MNIST (30 per class, 6 seeds) +1.9 test points over 5e-4, 6 wins of 6;
    # at 40 per class 5e-4 is 0.5 better (val and test, 3 seeds), at 100 (MNIST) 1.1 better
    small_data: ClassVar[tuple[int, float]] = (40, 2e-4)
    warmup = ("extract",)
    changes_backbone = True

    def config(self, params: Mapping[str, Any], n_train: int,
               per_class: float | None = None) -> TrainConfig:
        """The defaults, with the smaller rate below ``small_data[0]`` images per class unless
        a rate was given."""
        cfg = super().config(params, n_train, per_class)
        below, lr = self.small_data
        if per_class is not None and per_class < below and not phase_params(
                params, self.name).get("lr"):
            log.info("finetune: learning rate %g (%.0f training images per class; %g from %d)",
                     lr, per_class, cfg.lr, below)
            cfg = replace(cfg, lr=lr)
        return cfg

    @classmethod
    def unfreeze(cls, ctx: PhaseContext) -> int | str:
        """The ``unfreeze`` parameter, ``"auto"`` resolved for this backbone and the number of
        training images per class."""
        return resolve_unfreeze(ctx.session.model.backbone, ctx.params.get("unfreeze", "auto"),
                                images_per_class(ctx.splits))

    def check(self, ctx: PhaseContext) -> None:
        unfreeze = self.unfreeze(ctx)
        if unfreeze == "all":
            return
        backbone = ctx.session.model.backbone
        n = len(backbone.block_param_names())
        if not isinstance(unfreeze, int) or isinstance(unfreeze, bool) or not 0 <= unfreeze <= n:
            name = ctx.params.get("backbone")
            raise ConfigError(f"unfreeze={unfreeze!r} does not fit {name}, which has {n} blocks",
                              f"choose 0..{n}, 'all' or 'auto' (see `graft summary {name}`)")

    def trainable(self, ctx: PhaseContext) -> None:
        backbone = ctx.session.model.backbone
        unfreeze = self.unfreeze(ctx)
        ctx.session.unfrozen_blocks = freeze_backbone(backbone, unfreeze)
        if ctx.params.get("unfreeze", "auto") == "auto":
            spec = backbone.spec
            why = (f"{images_per_class(ctx.splits):.0f} training images per class; "
                   f"{_blocks(spec.finetune_blocks)}, {_blocks(spec.finetune_more_blocks)} from "
                   f"{spec.finetune_more_from}"
                   if spec.finetune_more_from is not None else "this backbone's default")
            log.info("unfreeze=auto: %s of %d blocks train (%s)",
                     len(ctx.session.unfrozen_blocks), len(backbone.block_param_names()), why)

    def param_groups(self, ctx: PhaseContext, cfg: TrainConfig) -> list[dict[str, Any]]:
        """The head at ``lr``, then each trainable block at ``lr * lr_decay**depth``."""
        model = ctx.session.model
        groups: list[dict[str, Any]] = [{"params": list(model.head.parameters()), "lr": cfg.lr}]
        by_name = dict(model.backbone.named_parameters())
        trainable = [(b, n) for b, n in model.backbone.block_param_names()
                     if any(by_name[p].requires_grad for p in n)]
        decay = ctx.params.get("lr_decay", 0.8)
        for depth, (_, names) in enumerate(reversed(trainable)):
            params = [by_name[p] for p in names if by_name[p].requires_grad]
            if params:
                groups.append({"params": params, "lr": cfg.lr * decay ** depth})
        return groups

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        s = ctx.session
        model = s.model
        n = len(ctx.splits.train)
        size = s.preprocessing.image_size  # an example batch, to fold BN (fold.py)
        parts = split_or_none(model.backbone, self.unfreeze(ctx)) \
            if uses_engine(ctx) else None
        if parts is None:
            validate = None
            if ctx.splits.val:
                tf = eval_transform(s.preprocessing)
                validate = lambda: evaluate(  # noqa: E731
                    model, s.image_batches(ctx.splits.val, tf, None, 64), ctx.runtime)
            model.to(memory_format=torch.channels_last)
            device = ctx.runtime.device if ctx.runtime is not None else torch.device("cpu")
            model.to(device)
            example = torch.randn(2, 3, size, size, device=device)
            return PhasePlan(model, augmented_batches(ctx), validate, n,
                             example=example.contiguous(memory_format=torch.channels_last))
        prefix, suffix = parts
        runner = bind_prefix(prefix, model, s.preprocessing, s.cache(), s.options.engine,
                             planned_images(ctx, self))
        tail = nn.Sequential(suffix, model.head).to(memory_format=torch.channels_last)
        gate = Gate()
        return PhasePlan(OnEngine(runner, tail, model, gate),
                         pixel_batches(s, ctx.splits.train, ctx.params.get("augment"),
                                       ctx.params.get("augment_policy"), gate),
                         self._validation(ctx, runner, tail), n,
                         example=torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8))

    @staticmethod
    def _validation(ctx: PhaseContext, runner: Any, tail: nn.Module) -> Any:
        """Validation through the tail on the prefix's outputs, computed once (the prefix is
        frozen) when they fit in memory, else every epoch."""
        s, val = ctx.session, ctx.splits.val
        if not val:
            return None
        model = s.model
        eval_pixels = pixel_batches(s, val, None)
        on_engine = OnEngine(runner, tail, model)
        model.eval()
        with torch.inference_mode():
            first = next(iter(eval_pixels(None, 8)), None)
        per_image = runner(first[0][:1]).numel() * 4 if first is not None else 0
        if per_image * len(val) > _VAL_MAPS_MAX_BYTES:
            return lambda: evaluate(on_engine, eval_pixels(None, 64), ctx.runtime)
        with torch.inference_mode():
            maps = [(runner(x), y) for x, y in eval_pixels(None, 64)]
        on_maps = OnEngine(identity_runner(), tail, model)
        return lambda: evaluate(on_maps, maps, ctx.runtime)
