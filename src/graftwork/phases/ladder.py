"""Running a strategy's phases in order, and keeping the best rung of a sequence.

A strategy is one phase after its warm-up (``strategy="finetune"``: extract, then finetune) or
a registered sequence (``ladder``: extract -> frozen -> finetune). In a sequence each rung may
decline to run (``Phase.skip``), starts from the best rung so far (a rung that did not improve
validation is not climbed from), and the sequence ends on its best rung: a :class:`Rung`
records each candidate, :meth:`Rung.beats` is the one rule that picks between two. A new
sequence is one ``register_strategy`` line (:mod:`graftwork.phases`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from graftwork.phases.base import Phase, PhaseContext
from graftwork.training.callbacks import dispatch
from graftwork.training.loop import TrainConfig

__all__ = ["Rung", "Climb", "climb"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rung:
    """A trained phase that a sequence may keep: its validation score and its weights."""

    phase: str
    val_accuracy: float
    val_loss: float
    state: dict[str, torch.Tensor] = field(repr=False)  # the model's weights after the phase
    pristine: bool  # backbone weights as pretrained: cached features still describe the model

    def beats(self, other: Rung | None) -> bool:
        """Higher validation accuracy, then lower validation loss (ties keep ``other``)."""
        return other is None or ((self.val_accuracy, -self.val_loss)
                                 > (other.val_accuracy, -other.val_loss))


@dataclass
class Climb:
    """What running the phases gave: a summary row per phase run, each phase's parameter
    counts and settings, the rungs skipped (and why) and, for a sequence, the rung kept."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    trainable: dict[str, dict[str, int]] = field(default_factory=dict)
    configs: dict[str, TrainConfig] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    kept: Rung | None = None


def _kept(name: str, val: dict[str, float], ctx: PhaseContext, best: Rung | None) -> Rung | None:
    """The rung of phase ``name`` (its weights copied) if it beats ``best``, else None."""
    rung = Rung(name, val.get("accuracy", -1.0), val.get("loss", 0.0), {}, ctx.session.pristine)
    if not rung.beats(best):
        return None
    return replace(rung, state={k: v.clone() for k, v in ctx.session.model.state_dict().items()})


def _restore(ctx: PhaseContext, rung: Rung) -> None:
    ctx.session.model.load_state_dict(rung.state)
    ctx.session.pristine = rung.pristine


def climb(phases: Sequence[Phase], ctx: PhaseContext, *, sequence: bool,
          test: Callable[[], dict[str, float]]) -> Climb:
    """Run ``phases`` in order on ``ctx``; ``test()`` scores the model after each phase on
    the test split ({} without one). With ``sequence``, rungs may skip, each starts from the
    best rung so far, and the best rung's weights are restored at the end (``Climb.kept``)."""
    out = Climb()
    best: Rung | None = None
    for i, phase in enumerate(phases):
        why = phase.skip(ctx, best.val_accuracy if best else None) if sequence and i else None
        if why:
            log.info("%s skipped: %s", phase.name, why)
            out.skipped[phase.name] = why
            continue
        start = ctx.previous
        if sequence and best is not None and best.phase != ctx.previous:
            log.info("%s starts from %s (%s did not improve validation accuracy)", phase.name,
                     best.phase, ctx.previous)
            _restore(ctx, best)
            start = best.phase
        result, cfg, counts = phase.run(ctx)
        ctx.previous = phase.name
        out.trainable[phase.name], out.configs[phase.name] = counts, cfg
        val = result.best_val or {"accuracy": math.nan, "loss": math.nan}
        scores = test()
        row = {"phase": phase.name, "best_val_accuracy": val.get("accuracy"),
               "best_val_loss": val.get("loss"), "test_accuracy": scores.get("accuracy"),
               "test_loss": scores.get("loss"), "epochs": len(result.history),
               "best_epoch": result.best_epoch, "wall_time_s": round(result.seconds, 2),
               "trainable_params": counts["trainable_params"], "warm_start": start}
        out.rows.append(row)
        dispatch(ctx.callbacks, "on_phase_end", phase.name, row)
        if sequence and len(phases) > 1:
            best = _kept(phase.name, val, ctx, best) or best
    if sequence and best is not None:
        _restore(ctx, best)  # a sequence keeps its best rung
        out.kept = best
    return out
