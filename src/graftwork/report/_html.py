"""The self-contained ``report.html`` page, built with the HTML kit (:mod:`graftwork.report.kit`):
charts inlined as SVG and top-loss thumbnails as ``data:`` URIs, no JavaScript and no external
URLs, so the page can be moved or mailed on its own. Each chart is also written as
``plots/<name>.svg``. The sections drawn from the run's record alone (phases, parameters,
BatchNorm, configuration, model summary) live in :mod:`graftwork.report._sections`; this module
holds the header, the chart sections and the page."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import graftwork.report.kit as kit
from graftwork.report._format import fmt_acc, fmt_acc_ci, fmt_int, fmt_seconds, to_float
from graftwork.report._metrics import Evaluation, evaluate
from graftwork.report._plots import (calibration_of, check_smoothing, curve_charts,
                                     phase_segments, reliability_chart)
from graftwork.report._sections import (bn_section, config_section, ladder_section,
                                        params_section, summary_section)
from graftwork.report._svg import Chart
from graftwork.rundir.files import PLOTS_DIR, REPORT_FILE
from graftwork.rundir.reader import Run, backbone_name, read_run, section_of

log = logging.getLogger(__name__)

_e = kit.escape

#: Files in ``plots/`` that a build replaces: its charts, and the PNG plots of older versions.
STALE_PLOTS = ("*.svg", "*.png")


# --------------------------------------------------------------------------- sections

def _header(run: Run, evaluation: Evaluation | None) -> str:
    """The title, the run's folder and the headline numbers as cards."""
    metrics, config = run.metrics, run.config
    val, test = section_of(metrics, "val"), section_of(metrics, "test")
    test_acc = test.get("accuracy", evaluation.metrics["accuracy"] if evaluation else None)
    cards = [("backbone", backbone_name(config) or "-"),
             ("strategy", str(config.get("strategy") or "-")),
             ("val accuracy", fmt_acc_ci(val.get("accuracy"), val.get("accuracy_ci"),
                                         val.get("n"))),
             ("test accuracy", fmt_acc_ci(test_acc, test.get("accuracy_ci"), test.get("n"))),
             ("wall time", fmt_seconds(metrics.get("wall_time_s"))),
             ("classes", str(len(run.classes)) if run.classes else "-")]
    if metrics.get("skipped"):
        cards.append(("skipped images", fmt_int(metrics["skipped"])))
    calibration = calibration_of(metrics)
    if calibration is not None:
        eces = [to_float(calibration.get(k)) for k in ("ece_before", "ece_after")]
        cards.append(("ECE before \u2192 after",
                      " \u2192 ".join(f"{e:.3f}" if math.isfinite(e) else "-" for e in eces)))
    created = f" &middot; created {_e(config['created'])}" if config.get("created") else ""
    warnings = [w for w in metrics.get("warnings") or [] if isinstance(w, str)]
    notes = "".join(f'<p class="verdict bad">Warning: {_e(w)}</p>' for w in warnings)
    return kit.header(f"graftwork run: {run.name}", str(run.path.resolve()),
                      subtitle_html=created, body=kit.cards(cards) + notes)


def _curves_section(curves: Sequence[Chart], run: Run) -> str:
    """The training curves, one chart per metric."""
    if not curves:
        return ""
    charts = "".join(kit.figure(chart) for chart in curves)
    phases = [name for name, _, _ in phase_segments(run.history)]
    sequence = " \u2192 ".join(phases)
    note = (f'<p class="muted">{len(run.history)} epochs over {len(phases)} phase(s): '
            f"{_e(sequence)}. Dots are raw values, lines are smoothed per phase; "
            "dashed lines mark phase boundaries.</p>")
    return kit.section("curves", "Training curves", note + f'<div class="plots">{charts}</div>')


def _eval_section(evaluation: Evaluation | None) -> str:
    """Test accuracy, per-class metrics, the confusion matrix and the top losses."""
    if evaluation is None:
        return ""
    m = evaluation.metrics
    summary = (f"<p>Test accuracy <b>{_e(fmt_acc(m['accuracy']))}</b> on {m['support']} images "
               f"({evaluation.n_wrong} wrong), mean loss {_e(fmt_acc(evaluation.mean_loss))}, "
               f"macro F1 {_e(fmt_acc(m['macro']['f1']))}.</p>")
    rows = [[_e(name), *(_e(fmt_acc(c[k])) for k in ("precision", "recall", "f1")),
             _e(c["support"])] for name, c in m["classes"].items()]
    rows.append(["<b>macro average</b>",
                 *(f"<b>{_e(fmt_acc(m['macro'][k]))}</b>" for k in ("precision", "recall", "f1")),
                 _e(m["support"])])
    table = kit.table(["class", "precision", "recall", "F1", "support"], rows,
                   [False, True, True, True, True])
    parts = [summary, "<h3>Per-class metrics</h3>", table, "<h3>Confusion matrix</h3>",
             kit.figure(evaluation.confusion)]
    if evaluation.top_losses_html is not None:
        parts += ["<h3>Top losses</h3>",
                  '<p class="muted">The most confidently wrong test images, most confident '
                  "first.</p>", evaluation.top_losses_html]
    return kit.section("test", "Test evaluation", "".join(parts))


def _calibration_section(run: Run, reliability: Chart | None) -> str:
    """Temperature scaling: the temperature, ECE before and after, the reliability diagram."""
    calibration = calibration_of(run.metrics)
    if calibration is None:
        return ""
    fields = {"temperature": calibration.get("temperature"),
              "ECE before": calibration.get("ece_before"),
              "ECE after": calibration.get("ece_after")}
    rows = [[_e(k), _e(fmt_acc(v))] for k, v in fields.items() if v is not None]
    note = ('<p class="muted">Expected calibration error (ECE): the gap between confidence and '
            "accuracy, averaged over confidence bins; temperature scaling divides the logits by "
            "T. Bars on the diagonal are perfectly calibrated.</p>")
    parts = [kit.table(["field", "value"], rows, [False, True])]
    if reliability is not None:
        parts.append(kit.figure(reliability))
    return kit.section("calibration", "Calibration",
                    note + f'<div class="side">{"".join(parts)}</div>')


# --------------------------------------------------------------------------- the page

def render_html(run: Run, curves: Sequence[Chart] = (), evaluation: Evaluation | None = None,
                reliability: Chart | None = None) -> str:
    """The report page for ``run``; ``curves``, ``evaluation`` and ``reliability`` supply the
    charts."""
    sections = [("ladder", "Ladder", ladder_section(run)),
                ("params", "Parameters", params_section(run)),
                ("bn", "BatchNorm", bn_section(run)),
                ("curves", "Curves", _curves_section(curves, run)),
                ("test", "Test evaluation", _eval_section(evaluation)),
                ("calibration", "Calibration", _calibration_section(run, reliability)),
                ("config", "Configuration", config_section(run)),
                ("summary", "Model summary", summary_section(run))]
    present = [(anchor, title, html_) for anchor, title, html_ in sections if html_]
    body = (_header(run, evaluation) + kit.nav([(a, t) for a, t, _ in present])
            + "".join(html_ for _, _, html_ in present))
    return kit.page(f"graftwork report: {run.name}", body)


def build_report(run_dir: str | Path, smoothing: float = 0.8) -> Path:
    """Write ``plots/*.svg`` and a self-contained ``report.html`` into ``run_dir``.

    Optional files that are missing simply leave their section out. Raises
    :class:`RunDirError` when ``run_dir`` is not a run directory.
    """
    check_smoothing(smoothing)
    run = read_run(run_dir)
    plots_dir = run.path / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    for pattern in STALE_PLOTS:  # a chart this run no longer warrants must not linger
        for stale in plots_dir.glob(pattern):
            stale.unlink(missing_ok=True)
    curves = curve_charts(run.history, smoothing)
    evaluation = evaluate(run) if run.predictions else None
    calibration = calibration_of(run.metrics)
    reliability = reliability_chart(calibration) if calibration is not None else None
    charts = [*curves, *([evaluation.confusion] if evaluation else []),
              *([reliability] if reliability else [])]
    for chart in charts:
        chart.write(plots_dir)
    out = run.path / REPORT_FILE
    out.write_text(render_html(run, curves, evaluation, reliability), encoding="utf-8")
    log.info("wrote %s", out)
    return out
