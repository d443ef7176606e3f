"""``refit``: once the phases have chosen a model on the validation images, train the same
configuration again on train + validation and keep that as the final model.

The validation images did their job (early stopping, the keep decisions, ``head="auto"``); a
small data set then gains from training on them too. The refit re-runs the kept model's path
(the kept rung and the rungs it warm-started from, e.g. extract -> finetune) from the starting
weights, each phase with the settings it used and for the number of epochs that was best on
validation, with nothing held out: every epoch runs and the last one's weights are kept. The
validation accuracy reported afterwards is the one measured before the refit (a refit model
has seen those images); the test split is never trained on.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from graftwork.data.discover import Splits
from graftwork.model.graft import resolve_unfreeze
from graftwork.model.heads import build_head
from graftwork.phases.base import Phase, PhaseContext, images_per_class
from graftwork.phases.ladder import Climb
from graftwork.training.loop import TrainConfig

__all__ = ["refit_path", "refit", "starting_backbone", "with_val_in_train"]

log = logging.getLogger(__name__)


def starting_backbone(ctx: PhaseContext) -> dict[str, torch.Tensor] | None:
    """A copy of the backbone's pretrained weights, taken before training (None when no
    phase builds the network: then the refit never needs them)."""
    s = ctx.session
    if not s.network_built:
        return None
    return {k: v.detach().clone() for k, v in s.model.backbone.state_dict().items()}


def with_val_in_train(splits: Splits) -> Splits:
    """``splits`` with the validation images moved into training (none held out)."""
    return replace(splits, train=[*splits.train, *splits.val], val=[])


def refit_path(climbed: Climb, *, sequence: bool) -> list[str]:
    """The phases that made the final model, first to last: the kept rung (or, outside a
    sequence, the last phase run) and the rungs it warm-started from; a phase whose best epoch
    was its start (``best_epoch == 0``) added nothing and is left out."""
    rows = {r["phase"]: r for r in climbed.rows}
    if not rows:
        return []
    name: str | None = (climbed.kept.phase if sequence and climbed.kept is not None
                        else climbed.rows[-1]["phase"])
    path: list[str] = []
    while name is not None and name in rows and name not in path:
        path.append(name)
        name = rows[name].get("warm_start")
    return [p for p in reversed(path) if rows[p].get("best_epoch") or p == path[-1]]


def _options(cfg: TrainConfig, epochs: int) -> dict[str, Any]:
    """A phase's settings as it used them (data-size rules must not change them when the
    training set grows by the validation images), for ``epochs`` epochs."""
    return {"epochs": max(1, epochs), "lr": cfg.lr, "optimizer": cfg.optimizer,
            "schedule": cfg.schedule, "weight_decay": cfg.weight_decay,
            "label_smoothing": cfg.label_smoothing}  # no patience: a refit runs every epoch


def refit(ctx: PhaseContext, phases: Sequence[Phase], climbed: Climb, *, sequence: bool,
          backbone: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    """Retrain the final model's path on train + val (see the module docstring); returns the
    record saved in ``metrics.json["refit"]``: phases, epochs, images, seconds."""
    path = refit_path(climbed, sequence=sequence)
    rows = {r["phase"]: r for r in climbed.rows}
    by_name = {p.name: p for p in phases}
    s, splits = ctx.session, ctx.splits
    if backbone is not None:
        s.model.backbone.load_state_dict(backbone)
        s.pristine = True
    spec = s.head_spec
    torch.manual_seed(ctx.params.get("seed", 0))
    s.set_head(build_head(spec["kind"], s.backbone.feature_dim, len(splits.classes),
                          spec.get("hidden", 256), spec.get("dropout", 0.0)))
    epochs = {p: int(rows[p].get("best_epoch") or rows[p].get("epochs") or 1) for p in path}
    options = {p: _options(climbed.configs[p], epochs[p]) for p in path}
    merged = with_val_in_train(splits)
    params = {**ctx.params, "head": spec["kind"], "phase_options": options}
    if s.network_built:  # the blocks fine-tuning chose for the training set it was judged on
        params["unfreeze"] = resolve_unfreeze(s.model.backbone, params.get("unfreeze", "auto"),
                                              images_per_class(splits))
    # the curves and loggers keep the validated run; the refit's epochs go to the log only
    run = replace(ctx, params=params, splits=merged, checkpoint_dir=None, resume=False,
                  previous=None, refit=True, callbacks=[])
    text = (f"refit on train + val ({len(merged.train)} images): "
            + ", ".join(f"{p} {epochs[p]} epochs" for p in path)
            + "; the validation accuracy is the one measured before the refit")
    log.info("%s", text)
    seconds = 0.0
    for name in path:
        result, _, _ = by_name[name].run(run)
        run.previous = name
        seconds += result.seconds
    return {"phases": path, "epochs": epochs, "train_images": len(merged.train),
            "wall_time_s": round(seconds, 2), "text": text}
