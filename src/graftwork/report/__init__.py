"""Run reports: training curves, test evaluation, a self-contained HTML page, run listings.

Everything here reads the files a training run leaves in its directory (``config.json``,
``metrics.json``, ``history.csv``, ``predictions_test.csv``, ``summary.txt``); it never imports
torch, so reporting, listing and comparing runs stay fast and work on any machine.

Plots are drawn with Pillow (no matplotlib: importing it alone took longer than drawing every
plot now does, and a report is written at the end of every ``graft train``) and embedded into
``report.html`` as base64 data URIs, so the page can be moved or mailed on its own: no
JavaScript, no external URLs.

The code lives in private modules: ``_run`` (reading a run directory), ``_plots`` (curves,
confusion matrix, top losses), ``_canvas`` (the small drawing layer under the plots),
``_metrics`` (scoring the test predictions), ``_html`` (the report page), ``_tables`` (listing
and comparing runs) and ``_format`` (number parsing and plain-text formatting shared by the
others).
"""
from __future__ import annotations

from graftwork.report._html import build_report, render_html
from graftwork.report._metrics import Evaluation, evaluate, per_class_metrics
from graftwork.report._plots import (confusion_matrix, plot_confusion, plot_curves,
                                     plot_top_losses, smooth, top_losses)
from graftwork.report._run import (Run, load_run, read_config, read_history, read_metrics,
                                   read_predictions)
from graftwork.report._tables import compare_runs, format_compare, format_table, list_runs

__all__ = [
    "Run", "load_run", "read_config", "read_metrics", "read_history", "read_predictions",
    "smooth", "plot_curves",
    "confusion_matrix", "per_class_metrics", "plot_confusion", "top_losses", "plot_top_losses",
    "Evaluation", "evaluate", "build_report", "render_html",
    "list_runs", "format_table", "compare_runs", "format_compare",
]
