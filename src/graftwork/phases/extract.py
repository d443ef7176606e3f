"""``extract``: every image once through the frozen backbone (features cached), a head trained
on the features. No network is built when every feature is already cached."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from graftwork.errors import ConfigError
from graftwork.model.heads import HEAD_CANDIDATES, HeadChoice, build_head
from graftwork.phases.base import (Phase, PhaseContext, PhaseDefaults, PhasePlan,
                                   feature_batch_size, phase_params, sqrt_scaled_lr)
from graftwork.training.loop import TrainConfig, evaluate, tensor_batches, torch_threads
from graftwork.training.metrics import paired

__all__ = ["Extract", "augmented_views", "stratified_folds", "CV_BELOW", "CV_FOLDS"]

log = logging.getLogger(__name__)

#: ``head="auto"`` cross-validates on train + val below this many validation images per class
CV_BELOW = 20
CV_FOLDS = 5


def stratified_folds(labels: Sequence[int], k: int, seed: int
                     ) -> list[tuple[list[int], list[int]]]:
    """``k`` (train indices, held-out indices) pairs: each class's indices shuffled (seeded)
    and dealt round-robin, so every fold holds each class in proportion."""
    gen = torch.Generator().manual_seed(seed)
    fold_of = [0] * len(labels)
    for c in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == c]
        for rank, pos in enumerate(torch.randperm(len(members), generator=gen).tolist()):
            fold_of[members[pos]] = rank % k
    return [([i for i in range(len(labels)) if fold_of[i] != f],
             [i for i in range(len(labels)) if fold_of[i] == f]) for f in range(k)]


def augmented_views(ctx: PhaseContext, views: int, x: torch.Tensor, y: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` followed by the cached features of ``views`` augmented views of every
    training image (:mod:`graftwork.features.views`)."""
    from graftwork.features.views import augment_recipe

    s, train = ctx.session, ctx.splits.train
    recipe = augment_recipe(ctx.params.get("augment"), ctx.params.get("augment_policy")
                            or "classic")
    res = s.extract_views(train, recipe, views, "features train views")
    stats = s.extract_stats
    stats["views_extracted"] = stats.get("views_extracted", 0) + res.extracted
    stats["views_cached"] = stats.get("views_cached", 0) + res.cached
    labels = torch.tensor([smp.label for smp in train], dtype=torch.long).repeat(views)
    return (torch.cat([x, res.features[res.ok]]),  # type: ignore[index]
            torch.cat([y, labels[res.ok]]))


class Extract(Phase):
    name = "extract"
    description = "a dense head on cached backbone features"
    defaults = PhaseDefaults(epochs=40, lr=1e-3, optimizer="adam", schedule="none", patience=8)
    needs_network = False

    def config(self, params: Mapping[str, Any], n_train: int,
               per_class: float | None = None) -> TrainConfig:
        """Larger batches on big data (~n/20, <= 256) with a square-root-scaled Adam rate."""
        cfg = super().config(params, n_train, per_class)
        batch = feature_batch_size(cfg.batch_size, n_train)
        given = phase_params(params, self.name).get("lr")
        lr = cfg.lr if given else sqrt_scaled_lr(cfg.lr, batch, cfg.batch_size)
        return TrainConfig(**{**cfg.as_dict(), "batch_size": batch, "lr": lr})

    def check(self, ctx: PhaseContext) -> None:
        """``aug_views`` needs an augmentation to make views with."""
        if ctx.params.get("aug_views") and (ctx.params.get("augment") is None
                                            or ctx.params.get("augment_policy") == "none"):
            raise ConfigError("aug_views (--aug-views) needs augmentation, which is off",
                              "drop --no-augment / --augment-policy none, or --aug-views")

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        s = ctx.session
        x, y = s.features(ctx.splits.train, "features train")
        views = ctx.params.get("aug_views") or 0
        if views:  # the original features + K augmented views of every training image
            x, y = augmented_views(ctx, views, x, y)
        head = s.head
        validate = None
        if ctx.splits.val:
            xv, yv = s.features(ctx.splits.val, "features val")
            validate = lambda: evaluate(head, tensor_batches(xv, yv, 256))  # noqa: E731
        return PhasePlan(head, lambda g, bs: tensor_batches(x, y, bs, g), validate, len(x))

    def run(self, ctx: PhaseContext):  # type: ignore[no-untyped-def]
        with torch_threads(1):  # a small head is many times slower on two OpenMP threads
            if ctx.params.get("head") == "auto":
                self._choose_head(ctx)
            return super().run(ctx)

    def _choose_head(self, ctx: PhaseContext) -> None:
        """``head="auto"``: train each of ``HEAD_CANDIDATES`` on the cached features (quietly,
        no checkpoints); a later candidate replaces the one kept so far (the first: the classic
        head) only when it is significantly better on the same images, the ladder's rule
        (:func:`graftwork.training.metrics.paired`). Those images are the validation split, or,
        when it holds fewer than ``CV_BELOW`` images per class (too few to tell heads apart),
        every train + val image scored out of fold (``CV_FOLDS``-fold cross-validation on the
        cached features). The chosen head is then trained again as the phase itself (same
        seed: the same weights), so history and checkpoints are the chosen head's alone."""
        s, splits = ctx.session, ctx.splits
        if not splits.val:
            log.warning("head=auto needs a validation split: using the mlp head")
            return
        quiet = replace(ctx, callbacks=[], checkpoint_dir=None)
        cv = len(splits.val) < CV_BELOW * len(splits.classes)
        pool = [*splits.train, *splits.val] if cv else list(splits.val)
        folds = ([([pool[j] for j in tr], held) for tr, held in
                  stratified_folds([smp.label for smp in pool], CV_FOLDS,
                                   ctx.params.get("seed", 0))]
                 if cv else [(list(splits.train), list(range(len(pool))))])
        # each fold's split and held-out features, read once for every candidate; an image
        # the features skipped (unreadable) has no row, and no say
        held_out = []
        for train, held in folds:
            fold = replace(splits, train=train, val=[pool[j] for j in held], test=[])
            xv, yv = s.features(fold.val, "features val")
            held_out.append((fold, [j for j in held if pool[j].path not in s.skipped], xv, yv))
        usable = sorted(j for _, held, _, _ in held_out for j in held)
        tried: list[dict[str, Any]] = []
        hits: list[tuple[bool, ...]] = []
        best = 0
        for i, choice in enumerate(HEAD_CANDIDATES):
            right = [False] * len(pool)
            for fold, held, xv, yv in held_out:
                s.set_head(self._head(ctx, choice))
                super().run(replace(quiet, splits=fold, params=self._params(ctx, choice)))
                s.head.eval()
                with torch.inference_mode():
                    for j, ok in zip(held, (s.head(xv).argmax(1) == yv).tolist()):
                        right[j] = ok
            hits.append(tuple(right[j] for j in usable))
            tried.append({**choice.as_dict(), "val_accuracy": sum(hits[i]) / len(hits[i])})
            if i:
                test = paired(hits[i], hits[best])
                tried[i]["vs_kept"] = {"against": best, **test.as_dict()}
                best = i if test.better else best
        choice = HEAD_CANDIDATES[best]
        how = (f"{CV_FOLDS}-fold cross-validation on train + val ({len(pool)} images; "
               f"fewer than {CV_BELOW} validation images per class)" if cv else "validation")
        log.info("head=auto: %s (accuracy %.4f by %s; a head replaces the first only when "
                 "significantly better)", choice, tried[best]["val_accuracy"], how)
        s.set_head(self._head(ctx, choice))
        s.head_spec = {"kind": choice.kind, "hidden": choice.hidden, "dropout": choice.dropout,
                       "weight_decay": choice.weight_decay,
                       "chosen_by": "cross-validation" if cv else "validation",
                       "candidates": tried}
        ctx.params = self._params(ctx, choice)

    @staticmethod
    def _head(ctx: PhaseContext, choice: HeadChoice) -> torch.nn.Module:
        s, seed = ctx.session, ctx.params.get("seed", 0)
        torch.manual_seed(seed)
        return build_head(choice.kind, s.backbone.feature_dim, len(ctx.splits.classes),
                          choice.hidden, choice.dropout)

    @classmethod
    def _params(cls, ctx: PhaseContext, choice: HeadChoice) -> dict[str, Any]:
        """``ctx.params`` with the candidate's weight decay as this phase's own setting."""
        options = dict(ctx.params.get("phase_options") or {})
        options[cls.name] = {**options.get(cls.name, {}), "weight_decay": choice.weight_decay}
        return {**ctx.params, "phase_options": options}
