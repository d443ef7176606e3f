"""Run reports: training curves, test evaluation, a self-contained HTML page, run listings.

Everything here reads the files a training run leaves in its directory (``config.json``,
``metrics.json``, ``history.csv``, ``predictions_test.csv``, ``summary.txt``); it never imports
torch, so reporting, listing and comparing runs stay fast and work on any machine.

Charts are built as inline SVG from the data (no matplotlib, no JavaScript), so the browser
renders their text and scales them; each is also written as ``plots/<name>.svg``. The top
losses are small thumbnails (made with Pillow) embedded as ``data:`` URIs, so ``report.html``
can be moved or mailed on its own: no JavaScript, no external URLs.

A run directory is read by :mod:`graftwork.rundir.reader` (``read_run``, re-exported here).
The HTML page kit, :mod:`graftwork.report.kit` (stylesheet, tables, sections, cards, thumbnails,
the self-contained page), is public: any other page is built from it as ``report.html`` is.
The rest lives in private modules: ``_svg`` (the small SVG layer: markup, ticks, axes, legends,
colours), ``_plots`` (training curves, learning rate, reliability diagram), ``_testcharts``
(confusion matrix, top-losses grid), ``_metrics`` (scoring the test predictions), ``_html`` (the
report page: header, chart sections, assembly), ``_sections`` (its sections drawn from the
record alone: phases, parameters, BatchNorm, configuration, summary), ``_tables`` (listing and
comparing runs) and ``_format`` (number parsing and plain-text formatting shared by the others).
"""
from __future__ import annotations

from graftwork.report._format import fmt_acc_ci
from graftwork.report._html import build_report, render_html
from graftwork.report._metrics import Evaluation, evaluate, per_class_metrics
from graftwork.report._plots import (curve_chart, curve_charts, lr_chart, plot_curves,
                                     reliability_chart, smooth)
from graftwork.report._svg import Chart
from graftwork.report._tables import compare_runs, format_compare, format_table, list_runs
from graftwork.report._testcharts import (confusion_chart, confusion_matrix, plot_confusion,
                                          top_losses, top_losses_grid)
from graftwork.rundir.reader import (Run, read_config, read_history, read_metrics,
                                     read_predictions, read_run)

__all__ = [
    "Run", "read_run", "read_config", "read_metrics", "read_history", "read_predictions",
    "smooth", "Chart", "curve_chart", "curve_charts", "lr_chart", "plot_curves",
    "reliability_chart", "confusion_matrix", "per_class_metrics", "confusion_chart",
    "plot_confusion", "top_losses", "top_losses_grid",
    "Evaluation", "evaluate", "build_report", "render_html",
    "list_runs", "format_table", "compare_runs", "format_compare", "fmt_acc_ci",
]
