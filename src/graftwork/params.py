"""One table of ``ImageClassifier`` parameter ranges, shared by the CLI and the Python API.

    check_param("epochs", 0)  # ConfigError: epochs (--epochs) must be an integer from 1 to 10000
    check_params(clf.get_params())
    @click.option("--epochs", type=click_type("epochs"))

Torch-free: only the standard library and ``graftwork.errors`` are imported (click lazily).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graftwork.errors import ConfigError

__all__ = ["ParamSpec", "PARAMS", "OPTIMIZERS", "SCHEDULES", "check_param", "check_params",
           "check_choice", "click_type"]


@dataclass(frozen=True)
class ParamSpec:
    """The allowed values of one parameter; ``min``/``max`` are inclusive unless ``*_open``."""

    name: str
    kind: str
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[str, ...] = ()
    allow_none: bool = False
    flag: str = ""
    help: str = ""
    example: Any = None

    @property
    def label(self) -> str:
        """``"epochs (--epochs)"``: reads well for both Python and CLI users."""
        return f"{self.name} ({self.flag})" if self.flag else self.name

    def describe(self) -> str:
        """The allowed values in words, e.g. ``"an integer from 1 to 10000"``."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "bool":
            return "True or False"
        if self.kind == "str":
            return "a string"
        noun = "an integer" if self.kind == "int" else "a number"
        if self.min is not None and self.max is not None and not (self.min_open or self.max_open):
            return f"{noun} from {_fmt(self.min)} to {_fmt(self.max)}"
        parts = []
        if self.min is not None:
            parts.append(f"{'above' if self.min_open else 'at least'} {_fmt(self.min)}")
        if self.max is not None:
            parts.append(f"{'below' if self.max_open else 'at most'} {_fmt(self.max)}")
        return " ".join([noun, " and ".join(parts)]).strip()

    def check(self, value: Any) -> None:
        """Raise ``ConfigError`` unless ``value`` is allowed."""
        if value is None and self.allow_none:
            return
        if not self.fits(value):
            fix = f"pass a value in that range, e.g. {self.flag or self.name} {_fmt(self.example)}"
            if self.kind == "choice":
                fix = f"pass {self.describe()}"
            if self.allow_none:
                fix += ", or leave it unset for the default"
            raise ConfigError(f"{self.label} must be {self.describe()} (got {_got(value)})", fix)

    def fits(self, value: Any) -> bool:
        """Whether ``value`` is allowed (None only when ``allow_none``)."""
        if value is None:
            return self.allow_none
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool):  # True is an int to Python, never to us
            return False
        if self.kind == "int":
            if not isinstance(value, numbers.Integral):
                return False
        elif not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or not (value >= self.max if self.max_open else value > self.max)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _got(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else _fmt(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _spec(name: str, kind: str, lo: float | None, hi: float | None, example: Any, help: str, *,
          flag: str = "", none: bool = False, lo_open: bool = False,
          hi_open: bool = False) -> ParamSpec:
    return ParamSpec(name, kind, lo, hi, lo_open, hi_open, (), none,
                     flag or "--" + name.replace("_", "-"), help, example)


OPTIMIZERS = ("adam", "adamw", "rmsprop", "nadam", "sgd")
SCHEDULES = ("none", "cosine", "warmcosine", "onecycle")  # warmcosine: 1-epoch warm-up, cosine

PARAMS: dict[str, ParamSpec] = {s.name: s for s in (
    _spec("epochs", "int", 1, 10000, 10, "Epochs per phase (default per phase).", none=True),
    _spec("batch_size", "int", 1, 4096, 32, "Images per training batch."),
    _spec("lr", "float", 0, 10, 0.001, "Learning rate (default per phase).", none=True,
          lo_open=True),
    _spec("hidden", "int", 1, 65536, 256, "Hidden units of the mlp head."),
    _spec("dropout", "float", 0, 1, 0.5, "Head dropout (default: 0.5 for mlp, none for linear).",
          none=True, hi_open=True),
    _spec("patience", "int", 1, 10000, 5, "Early-stopping patience (epochs).", none=True),
    _spec("lr_decay", "float", 0, 1, 0.8, "Learning-rate factor per block further from the head.",
          lo_open=True),
    _spec("image_size", "int", 16, 2048, 224, "Input size in pixels (default: the backbone's).",
          none=True),
    _spec("val_fraction", "float", 0, 0.9, 0.2, "Share of images held out for validation."),
    _spec("test_fraction", "float", 0, 0.9, 0.2, "Share of images held out for testing."),
    _spec("seed", "int", 0, 2**32 - 1, 0, "Random seed."),
    _spec("num_workers", "int", 0, 64, 4, "DataLoader workers.", flag="--workers", none=True),
    _spec("aug_views", "int", 0, 64, 4, "Augmented views per image for cached features."),
    _spec("label_smoothing", "float", 0, 0.5, 0.1, "Label smoothing of the training loss."),
    _spec("weight_decay", "float", 0, 1, 0.05, "Weight decay (decoupled with adamw; default per "
          "phase).", none=True),
    _spec("top_k", "int", 1, 1000, 5, "Classes listed per image (predict)."),
    _spec("smoothing", "float", 0, 1, 0.8, "Smoothing of the report's curves.", hi_open=True),
)}


def check_param(name: str, value: Any) -> None:
    """Raise ``ConfigError`` (naming the CLI flag and the range) unless ``value`` fits
    ``PARAMS[name]``; an unknown ``name`` is a ``KeyError`` (a programming error)."""
    PARAMS[name].check(value)


def check_choice(label: str, value: Any, allowed: Sequence[Any], fix: str) -> None:
    """Raise ``ConfigError`` unless ``value`` is one of ``allowed`` (None in it: may be unset)."""
    if value not in allowed:
        raise ConfigError(f"{label}={value!r} is not one of {[a for a in allowed if a]}", fix)


def check_params(params: Mapping[str, Any]) -> None:
    """Check every entry of ``params`` that ``PARAMS`` describes (others, e.g. ``strategy``,
    are left alone, so ``clf.get_params()`` can be passed as is), then the cross-checks."""
    for name, value in params.items():
        if name in PARAMS:
            check_param(name, value)
    val, test = params.get("val_fraction"), params.get("test_fraction")
    if val is not None and test is not None and val + test >= 1:
        raise ConfigError(f"val_fraction + test_fraction (--val-fraction + --test-fraction) must "
                          f"be below 1 (got {_fmt(val)} + {_fmt(test)}): no images are left to "
                          "train on",
                          "lower one of them, e.g. --val-fraction 0.2 --test-fraction 0.2")


def click_type(name: str) -> Any:
    """A click parameter type with the bounds of ``PARAMS[name]`` (floats also refuse NaN/inf)."""
    import click

    spec = PARAMS[name]
    if spec.kind == "choice":
        return click.Choice(list(spec.choices))
    if spec.kind == "bool":
        return click.BOOL
    if spec.kind == "str":
        return click.STRING
    bounds = {"min": spec.min, "max": spec.max, "min_open": spec.min_open,
              "max_open": spec.max_open}
    if spec.kind == "int":
        return click.IntRange(**{k: (int(v) if isinstance(v, float) else v)
                                 for k, v in bounds.items()})

    class FiniteFloatRange(click.FloatRange):
        """``click.FloatRange`` lets NaN through every bound; this one does not."""

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            number = super().convert(value, param, ctx)
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            return number

    return FiniteFloatRange(**bounds)
