"""Helpers shared by the ``graft`` command modules (:mod:`graftwork.cli` and the modules whose
commands it registers): error handling, logging, options used by several commands.

The command modules import from here, never from ``graftwork.cli``, so importing any of them
first (or running ``python -m graftwork.cli``) makes no import cycle.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from graftwork.cli.options import param_option
from graftwork.errors import GraftError

__all__ = ["_friendly", "_setup_logging", "echo_json", "finite", "_progress_bars", "device_option", "load_classifier",
           "unfreeze_value", "phase_options_value", "build_report_quietly"]

log = logging.getLogger("graftwork")


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors, and file-system errors (a read-only or full disk, a permission),
    into ``Error: message`` + ``Fix: ...`` and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GraftError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            click.echo(f"Fix: {exc.fix or 'see the command --help'}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)
        except OSError as exc:  # a read-only or full disk, a permission, a vanished file
            where = f" on {str(exc.filename)!r}" if exc.filename else ""
            click.echo(f"Error: {exc.strerror or exc}{where}", err=True)
            click.echo("Fix: check that the path exists and that it can be read and written "
                       "(permissions, free space, a read-only file system)", err=True)
            sys.exit(2)

    return wrapper


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts, lists, tuples) made None: a result
    graftwork prints is a number or says it is missing, never NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def echo_json(value: Any, indent: int | None = None) -> None:
    """Print ``value`` as strict JSON (RFC 8259: no NaN, no Infinity; see :func:`finite`)."""
    click.echo(json.dumps(finite(value), indent=indent, allow_nan=False, default=str))


def _setup_logging(verbose: bool, quiet: bool, bars: bool = False) -> None:
    """Log to stderr; per-epoch lines only where no progress bar shows the epochs."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("graftwork.training").setLevel(
        logging.WARNING if bars and not verbose else level)


def _progress_bars(quiet: bool) -> bool:
    """Bars on a terminal only: redirected to a file they would write a line per update."""
    return not quiet and sys.stderr.isatty()


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--device`` for commands that run a saved model."""
    return param_option("device")(func)


def load_classifier(run: Path, device: str) -> Any:
    """The classifier saved in RUN, set to run on ``device``."""
    from graftwork.estimator.classifier import ImageClassifier

    return ImageClassifier.load(run).set_params(device=device)


def unfreeze_value(value: str) -> int | str:
    if value in ("all", "auto"):
        return value
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter("an integer, 'all' or 'auto'", param_hint="'--unfreeze'") \
            from None
    if number < 0:
        raise click.BadParameter("a number of blocks (0 or more), 'all' or 'auto'",
                                 param_hint="'--unfreeze'")
    return number


def phase_options_value(items: tuple[str, ...]) -> dict[str, dict[str, Any]] | None:
    """``--phase-option PHASE.SETTING=VALUE`` (repeatable) as ``phase_options``; numbers are
    parsed here, ranges and names are checked with the other parameters."""
    from graftwork.params import PARAMS

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, text = item.partition("=")
        phase, dot, key = target.partition(".")
        if not (sep and dot and phase and key and text):
            raise click.BadParameter(f"{item!r} is not PHASE.SETTING=VALUE (e.g. "
                                     "finetune.lr=1e-4)", param_hint="'--phase-option'")
        kind = PARAMS[key].kind if key in PARAMS else "str"
        try:
            value: Any = int(text) if kind == "int" else float(text) if kind == "float" else text
        except ValueError:
            raise click.BadParameter(f"{item!r}: {key} takes a number",
                                     param_hint="'--phase-option'") from None
        options.setdefault(phase, {})[key] = value
    return options or None


def build_report_quietly(out: Path) -> None:
    from graftwork.report import build_report

    try:
        build_report(out)
    except Exception as exc:  # a report problem must not lose a trained model
        log.warning("report not written: %s", exc)
