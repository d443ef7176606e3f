"""``graft audit DATA``: what is wrong with a folder of labelled images (one library call,
:func:`graftwork.datacheck.audit`): a table here, ``--json`` on stdout, and ``audit.csv``,
``audit.json`` and ``audit.html`` in ``--out`` (never inside DATA)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from graftwork.cli.common import _friendly, _progress_bars, _setup_logging
from graftwork.cli.options import param_option
from graftwork.errors import DataError
from graftwork.rundir.outdir import check_out_place, ensure_out_dir

__all__ = ["audit"]


def _out_dir(out: Path | None, data: Path, cache_dir: str | None) -> Path:
    """``--out`` (default ``audit-<DATA name>`` here), checked and created; never in DATA (nor
    the cache)."""
    out = out if out is not None else Path(f"audit-{data.resolve().name}")
    check_out_place(out, data, cache_dir)
    ensure_out_dir(out, "audit folder")
    return out


def _table(result: Any) -> str:
    from graftwork.report import format_table

    s = result.summary
    lines = [f"{s['images']} images, {len(s['classes'])} classes {s['splits']}: "
             f"{len(result.label_issues)} likely label errors, {len(result.duplicates)} "
             f"duplicate groups ({len(result.leaks)} across splits), {len(result.outliers)} "
             f"outliers ({s['seconds']['total']:.1f} s)"]
    lines += [f"note: {n['message']}" for n in s["notes"]]
    if result.duplicates:
        rows = [{"kind": g["kind"], "splits": "+".join(g["splits"]), "images": len(g["paths"]),
                 "paths": " ".join(g["paths"][:3]) + (" ..." if len(g["paths"]) > 3 else "")}
                for g in result.duplicates]
        lines += ["", "duplicates (leaks first)",
                  format_table(rows, ["kind", "splits", "images", "paths"])]
    if result.label_issues:
        lines += ["", "likely label errors (most likely first)",
                  format_table(result.label_issues, ["path", "label", "suggested", "score"])]
    if result.outliers:
        lines += ["", "outliers", format_table(result.outliers, ["path", "score"])]
    return "\n".join(lines)


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@param_option("backbone")
@param_option("weights")
@param_option("image_size")
@param_option("cache_dir")
@param_option("num_workers")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder for audit.csv, audit.json and audit.html [default: audit-<DATA name>].")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON object.")
@param_option("quiet")
@param_option("verbose")
@_friendly
def audit(data: Path, backbone: str, weights: str | None, image_size: int | None,
          cache_dir: str | None, num_workers: int | None, out: Path | None, as_json: bool,
          quiet: bool, verbose: bool) -> None:
    """Find likely label errors, duplicates (leaks across splits first) and outliers in DATA."""
    from graftwork.datacheck import audit as run_audit
    from graftwork.datacheck.page import build_page
    from graftwork.datacheck.result import HTML_FILE

    _setup_logging(verbose, quiet or as_json)
    if not data.is_dir():
        raise DataError(f"folder {str(data)!r} does not exist", "check the path")
    folder = _out_dir(out, data, cache_dir)
    result = run_audit(data, backbone=backbone, weights=weights, image_size=image_size,
                       cache_dir=cache_dir, num_workers=num_workers,
                       progress=_progress_bars(quiet or as_json))
    result.write(folder)
    build_page(result, folder / HTML_FILE)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(_table(result))
        click.echo(f"\nwrote {folder / HTML_FILE} and {folder / 'audit.csv'} (graft train DATA "
                   f"--exclude {folder / 'audit.csv'} leaves the listed files out)")
