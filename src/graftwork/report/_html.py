"""The self-contained ``report.html`` page: charts inlined as SVG and top-loss thumbnails as
``data:`` URIs, no JavaScript and no external URLs, so the page can be moved or mailed on its
own. Each chart is also written as ``plots/<name>.svg``."""
from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from graftwork.report._format import (descending, fmt, fmt_acc, fmt_cell, fmt_int, fmt_seconds,
                                      fmt_share, pretty, ratio, to_float, to_int)
from graftwork.report._metrics import Evaluation, evaluate
from graftwork.report._plots import (calibration_of, check_smoothing, curve_charts,
                                     phase_segments, reliability_chart)
from graftwork.rundir.files import PLOTS_DIR, REPORT_FILE
from graftwork.rundir.reader import Run, backbone_name, read_run, section_of
from graftwork.report._svg import SVG_CSS, Chart

log = logging.getLogger(__name__)

#: Files in ``plots/`` that a build replaces: its charts, and the PNG plots of older versions.
STALE_PLOTS = ("*.svg", "*.png")


# --------------------------------------------------------------------------- HTML helpers

def _e(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: #1d2430; background: #f5f6f8; margin: 0; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 0 0 12px; border-bottom: 2px solid #dde1e7; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 18px 0 8px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 8px;
          padding: 18px 22px; margin: 18px 0; }
.subtitle { color: #5b6573; margin: 0 0 12px; word-break: break-all; }
nav a { margin-right: 14px; color: #2459a6; text-decoration: none; font-size: 0.95em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 16px;
        flex: 1 1 auto; min-width: 110px; max-width: 300px; }
nav { margin-top: 12px; }
.card .label { color: #5b6573; font-size: 0.8em; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 1.35em; font-weight: 600; word-break: break-word; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 0.93em; }
th, td { border: 1px solid #dde1e7; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: 700; background: #eef7ee; }
.verdict { font-weight: 700; }
.verdict.bad { color: #b42318; } .verdict.ok { color: #1e7b34; }
figure { margin: 0; }
svg.chart { display: block; max-width: 100%; height: auto; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; }
.plots svg.chart { width: 100%; }
figure.chart { overflow-x: auto; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.losses { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
figure.loss { border: 1px solid #dde1e7; border-radius: 6px; padding: 6px; background: #fafbfc;
              min-width: 0; }
figure.loss img, figure.loss .missing { display: block; width: 100%; aspect-ratio: 1;
              object-fit: contain; background: #111827; border-radius: 3px; }
figure.loss img { image-rendering: pixelated; }
figure.loss .missing { background: #d1d5db; color: #4b5563; font-size: 0.85em;
                       display: flex; align-items: center; justify-content: center; }
figure.loss figcaption { font-size: 0.8em; margin-top: 5px; line-height: 1.3; }
figure.loss figcaption span { display: block; overflow: hidden; text-overflow: ellipsis;
                              white-space: nowrap; }
figure.loss .true b { color: #1e7b34; } figure.loss .pred b { color: #b42318; }
figure.loss .prob { color: #5b6573; font-variant-numeric: tabular-nums; }
pre, code { font-family: "DejaVu Sans Mono", Menlo, Consolas, "Liberation Mono", monospace; }
pre { background: #f3f4f6; border: 1px solid #dde1e7; padding: 10px; overflow-x: auto;
      font-size: 0.8em; line-height: 1.35; white-space: pre; }
code { font-size: 0.85em; word-break: break-word; }
details summary { cursor: pointer; color: #2459a6; margin: 6px 0; }
.muted { color: #5b6573; }
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
           row_classes: Sequence[str] = ()) -> str:
    """An HTML table; cells must already be escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if i < len(numeric) and numeric[i] else f"<td>{c}</td>"
            for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_value(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"<code>{_e(json.dumps(value, sort_keys=True))}</code>"
    return _e(fmt_cell(key, value))


def _kv_table(mapping: Mapping[str, Any], raw: bool = False) -> str:
    """A field/value table; ``raw`` shows values exactly as stored (for configuration)."""
    def cell(key: str, value: Any) -> str:
        if raw and not isinstance(value, (dict, list)):
            return _e(value if isinstance(value, str) else json.dumps(value))
        return _kv_value(key, value)

    return _table(["field", "value"], ([_e(k), cell(str(k), v)] for k, v in mapping.items()))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _figure(chart: Chart) -> str:
    """A chart inlined as SVG."""
    return f'<figure class="chart" id="chart-{_e(chart.name)}">{chart.inline()}</figure>'


# --------------------------------------------------------------------------- sections

def _card(label: str, value: str) -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div></div>')


def _header(run: Run, evaluation: Evaluation | None) -> str:
    metrics, config = run.metrics, run.config
    val, test = section_of(metrics, "val"), section_of(metrics, "test")
    test_acc = test.get("accuracy", evaluation.metrics["accuracy"] if evaluation else None)
    cards = [("backbone", backbone_name(config) or "-"),
             ("strategy", str(config.get("strategy") or "-")),
             ("val accuracy", fmt_acc(val.get("accuracy"))),
             ("test accuracy", fmt_acc(test_acc)),
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
    return (f"<header><h1>graftwork run: {_e(run.name)}</h1>"
            f'<p class="subtitle">{_e(run.path.resolve())}{created}</p>'
            f'<div class="cards">{"".join(_card(k, v) for k, v in cards)}</div></header>')


def _ladder_section(run: Run) -> str:
    phases = [p for p in run.metrics.get("phases") or [] if isinstance(p, Mapping)]
    if not phases:
        return ""
    known = ["phase", "best_val_accuracy", "test_accuracy", "wall_time_s", "trainable_params"]
    extra = [k for p in phases for k in p if k not in known]
    columns = [k for k in known if any(k in p for p in phases)] + list(dict.fromkeys(extra))
    best = min(range(len(phases)), key=lambda i: descending(phases[i].get("best_val_accuracy")))
    rows = [[_kv_value(c, p.get(c)) for c in columns] for p in phases]
    numeric = [c != "phase" for c in columns]
    table = _table([_e(pretty(c)) for c in columns], rows, numeric,
                   ["best" if i == best else "" for i in range(len(phases))])
    note = ('<p class="muted">One row per training phase; the best validation accuracy is '
            "highlighted. A phase that starts from trained weights (warm start) keeps them when "
            "no epoch beats them on validation: its best epoch is then 0.</p>")
    skipped = run.metrics.get("skipped_phases")
    if isinstance(skipped, Mapping) and skipped:
        note += "".join(f'<p class="muted">{_e(str(k))} skipped: {_e(str(v))}.</p>'
                        for k, v in skipped.items())
    is_ladder = run.config.get("strategy") == "ladder" or len(phases) > 1
    return _section("ladder", "Strategy ladder" if is_ladder else "Phases", note + table)


def _params_section(run: Run) -> str:
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
    return _section("params", "Parameters per phase",
                    _table(header, rows, [False, True, True, True, True]))


def _doctor_html(doctor: Mapping[str, Any]) -> str:
    parts = ["<h3>BN doctor: train-mode vs eval-mode</h3>"]
    modes = [(name, doctor.get(key)) for name, key in (("train mode", "train_mode"),
                                                       ("eval mode", "eval_mode"))]
    rows = [[_e(name), _e(fmt_acc(m.get("accuracy"))), _e(fmt_acc(m.get("loss")))]
            for name, m in modes if isinstance(m, Mapping)]
    if rows:
        parts.append(_table(["BatchNorm mode", "accuracy", "loss"], rows, [False, True, True]))
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
        parts.append(_table(["layer", "distance"], layer_rows, [False, True]))
    known = {"train_mode", "eval_mode", "gap", "verdict", "fix", "layers"}
    others = {k: v for k, v in doctor.items() if k not in known}
    parts.append(_details("Other doctor fields", others))
    return "".join(parts)


def _bn_section(run: Run) -> str:
    doctor, bn = run.metrics.get("doctor"), run.metrics.get("bn")
    parts = []
    if isinstance(doctor, Mapping) and doctor:
        parts.append(_doctor_html(doctor))
    if isinstance(bn, Mapping) and bn:
        parts.append("<h3>BatchNorm recalibration</h3>" + _kv_table(_flatten(bn)))
    if not parts:
        return ""
    return _section("bn", "BatchNorm", "".join(parts))


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


def _details(summary: str, data: Mapping[str, Any]) -> str:
    if not data:
        return ""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return f"<details><summary>{_e(summary)}</summary><pre>{_e(text)}</pre></details>"


def _curves_section(curves: Sequence[Chart], run: Run) -> str:
    if not curves:
        return ""
    charts = "".join(_figure(chart) for chart in curves)
    phases = [name for name, _, _ in phase_segments(run.history)]
    sequence = " \u2192 ".join(phases)
    note = (f'<p class="muted">{len(run.history)} epochs over {len(phases)} phase(s): '
            f"{_e(sequence)}. Dots are raw values, lines are smoothed per phase; "
            "dashed lines mark phase boundaries.</p>")
    return _section("curves", "Training curves", note + f'<div class="plots">{charts}</div>')


def _eval_section(evaluation: Evaluation | None) -> str:
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
    table = _table(["class", "precision", "recall", "F1", "support"], rows,
                   [False, True, True, True, True])
    parts = [summary, "<h3>Per-class metrics</h3>", table, "<h3>Confusion matrix</h3>",
             _figure(evaluation.confusion)]
    if evaluation.top_losses_html is not None:
        parts += ["<h3>Top losses</h3>",
                  '<p class="muted">The most confidently wrong test images, most confident '
                  "first.</p>", evaluation.top_losses_html]
    return _section("test", "Test evaluation", "".join(parts))


def _calibration_section(run: Run, reliability: Chart | None) -> str:
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
    parts = [_table(["field", "value"], rows, [False, True])]
    if reliability is not None:
        parts.append(_figure(reliability))
    return _section("calibration", "Calibration",
                    note + f'<div class="side">{"".join(parts)}</div>')


KNOWN_CONFIG_KEYS = ("backbone", "strategy", "classes", "weights", "preprocessing",
                     "hyperparameters", "bn_policy", "trainable", "versions", "created")


def _config_section(run: Run) -> str:
    config = run.config
    parts = []
    overview = {"backbone": backbone_name(config), "strategy": config.get("strategy"),
                "created": config.get("created"),
                "classes": ", ".join(run.classes) if run.classes else None}
    parts.append(_kv_table({k: v for k, v in overview.items() if v is not None}, raw=True))
    for key in ("backbone", "weights", "preprocessing", "hyperparameters", "bn_policy", "versions"):
        value = config.get(key)
        if isinstance(value, Mapping) and (key != "backbone" or len(value) > 1):
            parts.append(f"<h3>{_e(key)}</h3>" + _kv_table(value, raw=True))
    parts.append(_details("Other fields",
                          {k: v for k, v in config.items() if k not in KNOWN_CONFIG_KEYS}))
    parts.append(_details("Full config.json", config))
    return _section("config", "Configuration", "".join(parts))


def _summary_section(run: Run) -> str:
    if not run.summary.strip():
        return ""
    return _section("summary", "Model summary", f"<pre>{_e(run.summary.rstrip())}</pre>")


def _nav(links: Sequence[tuple[str, str]]) -> str:
    """In-page links, one per ``(anchor, title)``."""
    return "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in links) + "</nav>"


# --------------------------------------------------------------------------- the page

def render_html(run: Run, curves: Sequence[Chart] = (), evaluation: Evaluation | None = None,
                reliability: Chart | None = None) -> str:
    """The report page for ``run``; ``curves``, ``evaluation`` and ``reliability`` supply the
    charts."""
    sections = [("ladder", "Ladder", _ladder_section(run)),
                ("params", "Parameters", _params_section(run)),
                ("bn", "BatchNorm", _bn_section(run)),
                ("curves", "Curves", _curves_section(curves, run)),
                ("test", "Test evaluation", _eval_section(evaluation)),
                ("calibration", "Calibration", _calibration_section(run, reliability)),
                ("config", "Configuration", _config_section(run)),
                ("summary", "Model summary", _summary_section(run))]
    present = [(anchor, title, html_) for anchor, title, html_ in sections if html_]
    body = (_header(run, evaluation) + _nav([(a, t) for a, t, _ in present])
            + "".join(html_ for _, _, html_ in present))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>graftwork report: {_e(run.name)}</title><style>{CSS}{SVG_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


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
