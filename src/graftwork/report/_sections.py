"""Sections of ``report.html`` drawn from the run's record alone, without charts: the phases
(strategy ladder), parameters per phase, BatchNorm (doctor and recalibration), configuration and
model summary. Each returns ``""`` when the run has nothing for it; the page is put together in
:mod:`graftwork.report._html`."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import graftwork.report.kit as kit
from graftwork.report._format import (descending, fmt, fmt_acc, fmt_acc_ci, fmt_int, fmt_share,
                                      pretty, ratio, to_int)
from graftwork.rundir.reader import Run, backbone_name

_e = kit.escape


_INTERVALS = {"best_val_accuracy": ("val_accuracy_ci", "val_n"),
              "test_accuracy": ("test_accuracy_ci", "test_n")}


def _keep_note(run: Run) -> str:
    """Which rung was kept and why: each decision of the keep rule, with its numbers."""
    refit = run.metrics.get("refit")
    refit_note = (f"<p>{_e(str(refit['text']))}.</p>"
                  if isinstance(refit, Mapping) and refit.get("text") else "")
    keep = run.metrics.get("keep")
    if not isinstance(keep, Mapping) or not keep.get("kept"):
        return refit_note
    decisions = [d for d in keep.get("decisions") or [] if isinstance(d, Mapping)]
    items = "".join(f"<li>{_e(str(d.get('text', '')))}</li>" for d in decisions[1:])
    return (f"<p>Kept model: <b>{_e(str(keep['kept']))}</b>. Rule: {_e(str(keep.get('rule')))}"
            " (a difference of a few images is noise; the cheaper rung stays).</p>"
            + (f"<ul>{items}</ul>" if items else "") + refit_note)


def ladder_section(run: Run) -> str:
    """One row per training phase, each accuracy with its 95% interval, the kept rung (else
    the best validation accuracy) highlighted, and the keep decisions."""
    phases = [p for p in run.metrics.get("phases") or [] if isinstance(p, Mapping)]
    if not phases:
        return ""
    known = ["phase", "best_val_accuracy", "vs_kept", "test_accuracy", "wall_time_s",
             "trainable_params"]
    hidden = {k for pair in _INTERVALS.values() for k in pair}
    extra = [k for p in phases for k in p if k not in known and k not in hidden]
    columns = [k for k in known if any(k in p for p in phases)] + list(dict.fromkeys(extra))
    keep = run.metrics.get("keep")
    kept = keep.get("kept") if isinstance(keep, Mapping) else None
    names = [p.get("phase") for p in phases]
    best = (names.index(kept) if kept in names else
            min(range(len(phases)), key=lambda i: descending(phases[i].get("best_val_accuracy"))))

    def cell(c: str, p: Mapping[str, Any]) -> str:
        if c in _INTERVALS:
            ci, n = _INTERVALS[c]
            return _e(fmt_acc_ci(p.get(c), p.get(ci), p.get(n)))
        return kit.kv_value(c, p.get(c))

    rows = [[cell(c, p) for c in columns] for p in phases]
    numeric = [c != "phase" for c in columns]
    table = kit.table([_e(pretty(c)) for c in columns], rows, numeric,
                      ["best" if i == best else "" for i in range(len(phases))])
    note = ('<p class="muted">One row per training phase; the kept rung is highlighted. '
            "Accuracies are followed by their 95% interval [low, high] (Wilson) and the number "
            "of images; vs kept: images a rung gets right minus images it gets wrong against "
            "the rung kept before it, on the same validation images, with McNemar's exact "
            "p-value. A phase that starts from trained weights (warm start) keeps them when "
            "no epoch beats them on validation: its best epoch is then 0.</p>")
    skipped = run.metrics.get("skipped_phases")
    if isinstance(skipped, Mapping) and skipped:
        note += "".join(f'<p class="muted">{_e(str(k))} skipped: {_e(str(v))}.</p>'
                        for k, v in skipped.items())
    is_ladder = run.config.get("strategy") == "ladder" or len(phases) > 1
    return kit.section("ladder", "Strategy ladder" if is_ladder else "Phases",
                       _keep_note(run) + note + table)


def params_section(run: Run) -> str:
    """Trainable and frozen parameters (and BatchNorm buffers) in each phase."""
    trainable = run.config.get("trainable")
    if not isinstance(trainable, Mapping) or not trainable:
        return ""
    keys = ["trainable_params", "frozen_params", "bn_buffers"]
    rows = []
    for phase, counts in trainable.items():
        counts = counts if isinstance(counts, Mapping) else {}
        total = sum(to_int(counts.get(k)) or 0 for k in keys[:2])
        share = ratio(to_int(counts.get("trainable_params")) or 0, total)
        rows.append([_e(phase), *(_e(fmt_int(counts.get(k))) for k in keys),
                     _e(fmt_share(share) if total else "-")])
    header = ["phase", "trainable params", "frozen params", "BN buffers", "trainable share"]
    return kit.section("params", "Parameters per phase",
                       kit.table(header, rows, [False, True, True, True, True]))


def _doctor_html(doctor: Mapping[str, Any]) -> str:
    parts = ["<h3>BN doctor: train-mode vs eval-mode</h3>"]
    modes = [(name, doctor.get(key)) for name, key in (("train mode", "train_mode"),
                                                       ("eval mode", "eval_mode"))]
    rows = [[_e(name), _e(fmt_acc(m.get("accuracy"))), _e(fmt_acc(m.get("loss")))]
            for name, m in modes if isinstance(m, Mapping)]
    if rows:
        parts.append(kit.table(["BatchNorm mode", "accuracy", "loss"], rows,
                               [False, True, True]))
    if doctor.get("gap") is not None:
        parts.append(f"<p>Accuracy gap: <b>{_e(fmt_acc(doctor.get('gap')))}</b></p>")
    if doctor.get("verdict"):
        verdict = str(doctor["verdict"])
        tone = "ok" if verdict.lower().startswith(("ok", "healthy", "fine", "no ")) else "bad"
        parts.append(f'<p>Verdict: <span class="verdict {tone}">{_e(verdict)}</span></p>')
    if doctor.get("fix"):
        parts.append(f"<p>Fix: {_e(doctor['fix'])}</p>")
    layers = [layer for layer in doctor.get("layers") or [] if isinstance(layer, Mapping)]
    if layers:
        layers = sorted(layers, key=lambda layer: descending(layer.get("distance")))[:10]
        parts.append('<p class="muted">BatchNorm layers whose running statistics are furthest '
                     "from the statistics of this data (top 10):</p>")
        layer_rows = [[_e(layer.get("name")), _e(fmt(layer.get("distance")))] for layer in layers]
        parts.append(kit.table(["layer", "distance"], layer_rows, [False, True]))
    known = {"train_mode", "eval_mode", "gap", "verdict", "fix", "layers"}
    others = {k: v for k, v in doctor.items() if k not in known}
    parts.append(kit.details("Other doctor fields", others))
    return "".join(parts)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def bn_section(run: Run) -> str:
    """The BN doctor's verdict and the BatchNorm recalibration, when the run has them."""
    doctor, bn = run.metrics.get("doctor"), run.metrics.get("bn")
    parts = []
    if isinstance(doctor, Mapping) and doctor:
        parts.append(_doctor_html(doctor))
    if isinstance(bn, Mapping) and bn:
        parts.append("<h3>BatchNorm recalibration</h3>" + kit.kv_table(_flatten(bn)))
    if not parts:
        return ""
    return kit.section("bn", "BatchNorm", "".join(parts))


KNOWN_CONFIG_KEYS = ("backbone", "strategy", "classes", "weights", "preprocessing",
                     "hyperparameters", "bn_policy", "trainable", "versions", "created")


def config_section(run: Run) -> str:
    """``config.json``: an overview, its known sections as tables, the rest folded away."""
    config = run.config
    parts = []
    overview = {"backbone": backbone_name(config), "strategy": config.get("strategy"),
                "created": config.get("created"),
                "classes": ", ".join(run.classes) if run.classes else None}
    parts.append(kit.kv_table({k: v for k, v in overview.items() if v is not None}, raw=True))
    for key in ("backbone", "weights", "preprocessing", "hyperparameters", "bn_policy", "versions"):
        value = config.get(key)
        if isinstance(value, Mapping) and (key != "backbone" or len(value) > 1):
            parts.append(f"<h3>{_e(key)}</h3>" + kit.kv_table(value, raw=True))
    parts.append(kit.details("Other fields",
                             {k: v for k, v in config.items() if k not in KNOWN_CONFIG_KEYS}))
    parts.append(kit.details("Full config.json", config))
    return kit.section("config", "Configuration", "".join(parts))


def summary_section(run: Run) -> str:
    """``summary.txt``, the model summary, as preformatted text."""
    if not run.summary.strip():
        return ""
    return kit.section("summary", "Model summary", f"<pre>{_e(run.summary.rstrip())}</pre>")
