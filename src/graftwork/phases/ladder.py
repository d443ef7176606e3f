"""Running a strategy's phases in order, and keeping the best rung of a sequence.

A strategy is one phase after its warm-up (``strategy="finetune"``: extract, then finetune) or
a registered sequence (``ladder``: extract -> frozen -> finetune). In a sequence each rung may
decline to run (``Phase.skip``), starts from the best rung so far (a rung that did not improve
validation is not climbed from), and the sequence ends on its best rung: a :class:`Rung`
records each candidate with its per-image correctness on the validation images, and
:func:`decide` is the one rule that picks between two: a later, costlier rung replaces the kept
one only when McNemar's exact one-sided test on the validation images says it is better
(:func:`graftwork.training.metrics.paired`); otherwise the earlier, cheaper rung stays. Each
decision is recorded with its numbers (``Climb.decisions``) and logged. A new sequence is one
``register_strategy`` line (:mod:`graftwork.phases`).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from graftwork.phases.base import Phase, PhaseContext
from graftwork.training.callbacks import dispatch
from graftwork.training.loop import TrainConfig
from graftwork.training.metrics import KEEP_ALPHA, paired, wilson_interval

__all__ = ["Rung", "Climb", "climb", "decide", "KEEP_RULE"]

#: The keep rule in words (metrics.json ``keep.rule``, the report).
KEEP_RULE = (f"a later rung replaces the kept one only if McNemar's exact one-sided test on "
             f"the validation images gives p < {KEEP_ALPHA:g} that it is better")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rung:
    """A trained phase that a sequence may keep: its validation score and its weights."""

    phase: str
    val_accuracy: float
    val_loss: float
    state: dict[str, torch.Tensor] = field(repr=False)  # the model's weights after the phase
    pristine: bool  # backbone weights as pretrained: cached features still describe the model
    correct: tuple[bool, ...] = field(default=(), repr=False)  # per validation image

    def beats(self, other: Rung | None) -> bool:
        """Whether this rung replaces ``other`` (:func:`decide`)."""
        return decide(self, other)["kept"] == self.phase


def decide(candidate: Rung, incumbent: Rung | None) -> dict[str, Any]:
    """The keep decision between a candidate rung and the kept one, with its numbers: the
    candidate is kept only when it is significantly better on the same validation images
    (:func:`graftwork.training.metrics.paired`); ``text`` says which and why."""
    if incumbent is None:
        return {"phase": candidate.phase, "kept": candidate.phase, "reason": "first rung",
                "text": f"{candidate.phase}: first rung, kept"}
    if not candidate.correct or len(candidate.correct) != len(incumbent.correct):
        return {"phase": candidate.phase, "against": incumbent.phase, "kept": incumbent.phase,
                "reason": "no validation images to compare on",
                "text": f"{candidate.phase}: no validation images to compare it with "
                        f"{incumbent.phase} on: kept {incumbent.phase}"}
    test = paired(candidate.correct, incumbent.correct)
    kept = candidate.phase if test.better else incumbent.phase
    reason = "significantly better" if test.better else "not significantly better"
    return {"phase": candidate.phase, "against": incumbent.phase, **test.as_dict(),
            "kept": kept, "reason": reason,
            "text": f"{candidate.phase} vs {incumbent.phase}: {test.text()} on validation, "
                    f"{reason}: kept {kept}"}


@dataclass
class Climb:
    """What running the phases gave: a summary row per phase run, each phase's parameter
    counts and settings, the rungs skipped (and why) and, for a sequence, the rung kept."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    trainable: dict[str, dict[str, int]] = field(default_factory=dict)
    configs: dict[str, TrainConfig] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    kept: Rung | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)  # one per rung (decide)


def _rung(name: str, val: dict[str, float], ctx: PhaseContext) -> Rung:
    """Phase ``name``'s rung, scored on the validation images by the session (as predictions
    will be), its weights not yet copied."""
    pristine = ctx.session.pristine
    if not ctx.splits.val:
        return Rung(name, val.get("accuracy", -1.0), val.get("loss", 0.0), {}, pristine)
    logits, ok = ctx.session.logits(ctx.splits.val)
    labels = torch.tensor([s.label for s in ctx.splits.val], dtype=torch.long)[ok]
    if not len(labels):
        return Rung(name, math.nan, math.nan, {}, pristine)
    hits = (logits.argmax(1) == labels).tolist()
    loss = float(nn.functional.cross_entropy(logits.float(), labels))
    return Rung(name, sum(hits) / len(hits), loss, {}, pristine, tuple(hits))


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
            log.info("%s starts from %s (%s was not kept)", phase.name,
                     best.phase, ctx.previous)
            _restore(ctx, best)
            start = best.phase
        result, cfg, counts = phase.run(ctx)
        ctx.previous = phase.name
        out.trainable[phase.name], out.configs[phase.name] = counts, cfg
        val = result.best_val or {"accuracy": math.nan, "loss": math.nan}
        rung = _rung(phase.name, val, ctx)
        scores = test()
        row = {"phase": phase.name, "best_val_accuracy": val.get("accuracy"),
               "best_val_loss": val.get("loss"), "test_accuracy": scores.get("accuracy"),
               "test_loss": scores.get("loss"), "epochs": len(result.history),
               "best_epoch": result.best_epoch, "wall_time_s": round(result.seconds, 2),
               "trainable_params": counts["trainable_params"], "warm_start": start}
        if rung.correct:
            row["val_n"] = len(rung.correct)
            row["val_accuracy_ci"] = [round(v, 6) for v in
                                      wilson_interval(sum(rung.correct), len(rung.correct))]
        if "accuracy_ci" in scores:
            row["test_n"], row["test_accuracy_ci"] = scores.get("n"), scores["accuracy_ci"]
        if sequence and len(phases) > 1:
            decision = decide(rung, best)
            out.decisions.append(decision)
            log.info("%s", decision["text"])
            if "p_value" in decision:
                lo, hi = (100 * v for v in decision["diff_ci"])
                row["vs_kept"] = (f"{decision['wins'] - decision['losses']:+d}/{decision['n']}"
                                  f" [{lo:+.1f}, {hi:+.1f}] pts, p={decision['p_value']:.2g}")
            if decision["kept"] == phase.name:
                best = replace(rung, state={k: v.clone() for k, v in
                                            ctx.session.model.state_dict().items()})
        out.rows.append(row)
        dispatch(ctx.callbacks, "on_phase_end", phase.name, row)
    if sequence and best is not None:
        _restore(ctx, best)  # a sequence keeps its best rung
        out.kept = best
    return out
