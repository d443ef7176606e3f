"""Parsing loose values into numbers and formatting them as plain text (no package imports)."""
from __future__ import annotations

import json
import math
from typing import Any

from graftwork.rundir.reader import to_float, to_int

__all__ = ["to_float", "to_int", "descending", "ratio", "is_missing", "fmt", "fmt_int",
           "fmt_seconds", "fmt_acc", "fmt_acc_ci", "fmt_share", "pretty", "fmt_cell"]


def descending(value: Any) -> float:
    """Sort key putting large numbers first and missing ones (None, NaN) last."""
    number = to_float(value)
    return -number if math.isfinite(number) else math.inf


def ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is zero."""
    return float(num) / float(den) if den else 0.0


# --------------------------------------------------------------------------- formatting

def is_missing(value: Any) -> bool:
    """True for None, NaN and infinities."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt(value: Any) -> str:
    """Plain-text cell: floats as 0.xxxx, None/NaN as '-', bools as yes/no."""
    if is_missing(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def fmt_int(value: Any) -> str:
    """An integer with thousands separators, or '-'."""
    number = to_int(value)
    return "-" if number is None else f"{number:,}"


def fmt_seconds(value: Any) -> str:
    """A duration: ``12.3 s``, ``4m 05s`` or ``1h 02m 03s``; '-' when missing."""
    seconds = to_float(value)
    if not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def fmt_acc(value: Any) -> str:
    """An accuracy (or loss) with four decimals, or '-'."""
    number = to_float(value)
    return "-" if not math.isfinite(number) else f"{number:.4f}"


def fmt_acc_ci(value: Any, interval: Any, n: Any = None) -> str:
    """An accuracy with its 95% interval (and ``n``): ``0.8350 [0.776, 0.880] n=200``; the
    accuracy alone when the interval is missing or malformed (runs of older versions)."""
    text = fmt_acc(value)
    ci = [to_float(v) for v in interval] if isinstance(interval, (list, tuple)) else []
    if text == "-" or len(ci) != 2 or not all(math.isfinite(v) for v in ci):
        return text
    count = to_int(n)
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" + (f" n={count}" if count is not None else "")


def fmt_share(share: float) -> str:
    """A fraction as a percentage that stays informative for tiny shares (0.05%)."""
    return f"{share:.1%}" if share == 0 or share >= 0.01 else f"{share:.2%}"


def pretty(key: str) -> str:
    """A metrics key as a column heading: ``wall_time_s`` -> ``wall time``."""
    words = key.replace("_", " ")
    return words[:-2] if words.endswith(" s") else words


def fmt_cell(key: str, value: Any) -> str:
    """Format a value by what its key says it is (accuracy, seconds, parameter count)."""
    if is_missing(value):
        return "-"
    if key.endswith("_s") or key.endswith("time"):
        return fmt_seconds(value)
    if key.endswith(("params", "buffers")) or key in ("support", "skipped"):
        return fmt_int(value)
    return fmt(value)
