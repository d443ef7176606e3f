"""One table of every option of the ``graft`` commands and ``ImageClassifier`` parameter: its
allowed values (ranges, or choices read from a registry), default, CLI flag and help; shared by
the CLI (``graftwork.cli.options.param_option``), the Python API and saved-config validation.

    check_param("epochs", 0)  # ConfigError: epochs (--epochs) must be an integer from 1 to 10000
    check_params(clf.get_params())    # the ranges (and val + test fraction below 1)
    check_choices(clf.get_params())   # the choices: head, optimizer, schedule, engine, ...
    @click.option("--epochs", type=click_type("epochs"))

A choice's values come from the registry its ``source`` names (``"module:attribute"``: a
:class:`~graftwork.registry.Registry`, a sequence, or a function returning names), imported when
first read, so a phase or engine registered after import is a choice too, and this module stays
torch-free: only the standard library, ``graftwork.errors`` and ``graftwork.registry`` are
imported (click lazily).
"""
from __future__ import annotations

import functools
import importlib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graftwork.errors import ConfigError
from graftwork.registry import did_you_mean

__all__ = ["ParamSpec", "PARAMS", "RANGES", "check_param", "check_params", "check_choices",
           "click_type"]


@dataclass(frozen=True)
class ParamSpec:
    """The allowed values of one parameter; ``min``/``max`` are inclusive unless ``*_open``.

    ``kind``: ``int``/``float`` (a range), ``choice`` (``choices`` plus those of ``source``),
    ``flag`` (an on switch), ``bool`` (``flag``/``off`` pair), ``str`` or ``path`` (free text,
    checked where it is used). The rest describe the CLI option: ``dest`` (its Python name where
    not ``name``), ``short`` (e.g. ``-q``), ``multiple``, ``metavar``, ``required``; ``checked``
    False leaves a choice to its own check (``strategy``: the phase registry, ``precision``:
    which also takes aliases such as ``float32``).
    """

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
    source: str = ""
    default: Any = None
    dest: str = ""
    short: str = ""
    off: str = ""
    multiple: bool = False
    metavar: str = ""
    required: bool = False
    checked: bool = True

    @property
    def label(self) -> str:
        """``"epochs (--epochs)"``: reads well for both Python and CLI users."""
        return f"{self.name} ({self.flag})" if self.flag else self.name

    def allowed(self) -> tuple[str, ...]:
        """A choice's values, read now: ``choices``, then the names of ``source``."""
        if not self.source:
            return self.choices
        module, _, attr = self.source.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        names = obj.names() if hasattr(obj, "names") else obj() if callable(obj) else obj
        return tuple(dict.fromkeys([*self.choices, *names]))

    def describe(self) -> str:
        """The allowed values in words, e.g. ``"an integer from 1 to 10000"``."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.allowed())
        if self.kind in ("bool", "flag"):
            return "True or False"
        if self.kind in ("str", "path"):
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

    def check(self, value: Any, label: str = "") -> None:
        """Raise ``ConfigError`` unless ``value`` is allowed (``label``: how a choice's message
        names the setting, default ``name``)."""
        if value is None and self.allow_none:
            return
        if self.fits(value):
            return
        unset = ", or leave it unset for the default" if self.allow_none else ""
        if self.kind == "choice":
            raise ConfigError(f"{label or self.name}={value!r} is not one of "
                              f"{list(self.allowed())}", did_you_mean(value, self.allowed())
                              + (f" ({self.flag})" if self.flag else "") + unset)
        fix = f"pass a value in that range, e.g. {self.flag or self.name} {_fmt(self.example)}"
        raise ConfigError(f"{self.label} must be {self.describe()} (got {_got(value)})",
                          fix + unset)

    def fits(self, value: Any) -> bool:
        """Whether ``value`` is allowed (None only when ``allow_none``)."""
        if value is None:
            return self.allow_none
        if self.kind in ("bool", "flag"):
            return isinstance(value, bool)
        if self.kind in ("str", "path"):
            return isinstance(value, str)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.allowed()
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
          flag: str = "", none: bool = False, lo_open: bool = False, hi_open: bool = False,
          default: Any = None) -> ParamSpec:
    """A range: ``int`` or ``float`` from ``lo`` to ``hi``."""
    return ParamSpec(name, kind, lo, hi, lo_open, hi_open, (), none,
                     flag or "--" + name.replace("_", "-"), help, example, default=default)


def _choice(name: str, source: str, default: Any, help: str, *, choices: tuple[str, ...] = (),
            none: bool = False, **cli: Any) -> ParamSpec:
    """A choice among ``choices`` and the names ``source`` (``"module:attribute"``) holds."""
    return ParamSpec(name, "choice", choices=choices, allow_none=none,
                     flag=cli.pop("flag", "--" + name.replace("_", "-")), help=help,
                     example=default, source=source, default=default, **cli)


def _opt(name: str, kind: str, default: Any, help: str, **cli: Any) -> ParamSpec:
    """A ``str``/``path`` value or a ``flag``/``bool`` switch."""
    return ParamSpec(name, kind, allow_none=default is None and kind in ("str", "path"),
                     flag=cli.pop("flag", "--" + name.replace("_", "-")), help=help,
                     example=default, default=default, **cli)


_PER_PHASE = "(default per phase)"
PARAMS: dict[str, ParamSpec] = {s.name: s for s in (
    # ranges
    _spec("epochs", "int", 1, 10000, 10, f"Epochs per phase {_PER_PHASE}.", none=True),
    _spec("batch_size", "int", 1, 4096, 32, "Images per training batch.", default=32),
    _spec("lr", "float", 0, 10, 0.001, "Learning rate (default per phase; finetune: 5e-4, 2e-4 "
          "below 40 training images per class).", none=True, lo_open=True),
    _spec("hidden", "int", 1, 65536, 256, "Hidden units of the mlp head.", default=256),
    _spec("dropout", "float", 0, 1, 0.5, "Head dropout (default: 0.5 for mlp, none for linear).",
          none=True, hi_open=True),
    _spec("patience", "int", 1, 10000, 5, "Early-stopping patience (epochs).", none=True),
    _spec("lr_decay", "float", 0, 1, 0.8, "Learning-rate factor per block further from the head.",
          lo_open=True, default=0.8),
    _spec("image_size", "int", 16, 2048, 224, "Input size in pixels (default: the backbone's).",
          none=True),
    _spec("val_fraction", "float", 0, 0.9, 0.2, "Share of images held out for validation.",
          default=0.2),
    _spec("test_fraction", "float", 0, 0.9, 0.2, "Share of images held out for testing.",
          default=0.2),
    _spec("seed", "int", 0, 2**32 - 1, 0, "Random seed.", default=0),
    _spec("num_workers", "int", 0, 64, 4, "DataLoader workers.", flag="--workers", none=True),
    _spec("aug_views", "int", 0, 64, 4, "extract: K augmented views of every training image as "
          "extra features.", default=0),
    _spec("label_smoothing", "float", 0, 0.5, 0.1, "Label smoothing of the training loss.",
          default=0.0),
    _spec("weight_decay", "float", 0, 1, 0.05, "Weight decay, decoupled with adamw (default per "
          "phase: finetune 0.05 with adamw, else 0).", none=True),
    _spec("top_k", "int", 1, 1000, 5, "Classes listed per image (predict).", default=1),
    _spec("smoothing", "float", 0, 1, 0.8, "Smoothing of the report's curves.", hi_open=True,
          default=0.8),
    _spec("num_processes", "int", 1, 1024, 2, "Local data-parallel processes (relaunches under "
          "torchrun; see docs/scaling-out.md).", default=1),
    # choices, from the registries
    _choice("strategy", "graftwork.phases:strategy_names", "extract", "A phase or a sequence "
            "of phases (ladder: extract, frozen, finetune; a costlier rung is kept only when "
            "significantly better on the validation images).",
            checked=False),
    _choice("head", "graftwork.model.heads:HEADS", "mlp", "auto: a few heads tried on the "
            "validation split (dense heads and L2-regularised linear probes; cheap on cached "
            "features); another replaces the classic one only when significantly better."),
    _choice("optimizer", "graftwork.training.loop:OPTIMIZERS", None, f"Optimizer {_PER_PHASE}.",
            none=True),
    _choice("schedule", "graftwork.training.loop:SCHEDULES", None, "Default per phase; "
            "warmcosine: a one-epoch linear warm-up, then cosine.", none=True),
    _choice("augment_policy", "graftwork.data.transforms:AUGMENT_POLICIES", "mild",
            "Augmentation for frozen/finetune and --aug-views: mild (rotation 10°, shift and zoom "
            "0.1, flip; better than the classic Keras recipe in bench/quality.md), classic "
            "(rotation 40°, shifts, shear, zoom 0.2), trivialwide, none."),
    _choice("precision", "graftwork.training.devices:PRECISIONS", "auto", "auto: bf16 where the "
            "hardware computes it natively (CPUs with AVX512-BF16/AMX, recent GPUs), fp16 on "
            "older GPUs, else fp32.", checked=False),
    _choice("engine", "graftwork.features.engines:ENGINES", "auto", "What runs the frozen part "
            "of the network: ONNX Runtime (when installed and the job repays an export), or "
            "eager torch."),
    _choice("loggers", "graftwork.training.callbacks:LOGGERS", None, "Also log curves for "
            "TensorBoard (RUN/tensorboard).", flag="--logger", multiple=True),
    _choice("export_format", "graftwork.deploy.export:FORMATS", "onnx", "ONNX (onnxruntime) or "
            "TorchScript (torch.jit.load).", flag="--format", dest="fmt"),
    _choice("output_format", "", "table", "How the predictions are printed.",
            choices=("table", "json", "csv"), flag="--format", dest="fmt"),
    # free text (checked where used: the backbone catalog, the device, ...)
    _opt("backbone", "str", "efficientnet_lite0", "Backbone name (see `graft backbones`)."),
    _opt("weights", "str", None, "Weights file (safetensors/state dict) or 'random'."),
    _opt("unfreeze", "str", "auto", "Last N blocks, 'all', or 'auto' (the backbone's default: "
         "for efficientnet_lite* the last 4, the last 6 from 150 training images per class; see "
         "`graft backbones`)."),
    _opt("phase_options", "str", None, "A setting for one phase only, e.g. finetune.lr=1e-4 "
         "(settings: epochs, lr, optimizer, schedule, patience, label_smoothing, weight_decay).",
         flag="--phase-option", dest="phase_option", multiple=True,
         metavar="PHASE.SETTING=VALUE"),
    _opt("class_weights", "str", None, """Loss weight per class: 'auto' (inverse frequency) or """
         """JSON '{"cat": 2}'.""", dest="class_weights_text"),
    _opt("device", "str", "auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps."),
    _opt("cache_dir", "str", None, "Feature cache (default ~/.cache/graftwork)."),
    _opt("exclude", "str", None, "Leave out the files a list names: graft audit's audit.csv, or "
         "one path per line (relative to DATA or absolute); recorded in config.json."),
    _opt("shard", "str", None, "Extract shard I of N (every N-th file by path). Default: from "
         "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT or torchrun's $RANK/$WORLD_SIZE, else all "
         "files.", metavar="I/N"),
    _opt("address", "str", None, "Ray cluster address for --engine ray (default: a local Ray)."),
    _opt("out", "path", None, "Run directory.", required=True),
    # switches
    _opt("overwrite", "flag", False, "Replace a finished run in --out."),
    _opt("resume", "flag", False, "Continue an interrupted run in --out."),
    _opt("train_bn", "flag", False, "Let unfrozen BN layers update statistics."),
    _opt("no_augment", "flag", False, "Switch augmentation off."),
    _opt("no_recalibrate", "flag", False, "Skip BN recalibration after training."),
    _opt("tta", "flag", False, "Average each image's and its mirror's probabilities."),
    _opt("calibrate", "flag", False, "Fit a softmax temperature on validation."),
    _opt("refit", "flag", False, "Once validation has chosen the model, train it again on "
         "train + val (same settings, the chosen epochs)."),
    _opt("strict", "flag", False, "Any bad image is an error."),
    _opt("report", "bool", True, "Write report.html.", off="--no-report"),
    _opt("quiet", "flag", False, "Warnings only (progress bars show on a terminal, else a line "
         "per epoch).", short="-q"),
    _opt("verbose", "flag", False, "Debug messages too.", short="-v"),
)}
#: The ranges of ``PARAMS`` (what ``check_params`` checks).
RANGES: dict[str, ParamSpec] = {n: s for n, s in PARAMS.items() if s.kind in ("int", "float")}


def __getattr__(name: str) -> Any:
    """``OPTIMIZERS``/``SCHEDULES``: the names, kept for compatibility (the registries live in
    ``graftwork.training.loop``)."""
    if name in ("OPTIMIZERS", "SCHEDULES"):
        return PARAMS[name[:-1].lower()].allowed()
    raise AttributeError(name)


def check_param(name: str, value: Any) -> None:
    """Raise ``ConfigError`` (naming the CLI flag and the allowed values) unless ``value`` fits
    ``PARAMS[name]``; an unknown ``name`` is a ``KeyError`` (a programming error)."""
    PARAMS[name].check(value)


def check_params(params: Mapping[str, Any]) -> None:
    """Check every entry of ``params`` that ``RANGES`` describes (others, e.g. ``strategy``,
    are left alone, so ``clf.get_params()`` can be passed as is), then the cross-checks."""
    for name, value in params.items():
        if name in RANGES:
            check_param(name, value)
    val, test = params.get("val_fraction"), params.get("test_fraction")
    if val is not None and test is not None and val + test >= 1:
        raise ConfigError(f"val_fraction + test_fraction (--val-fraction + --test-fraction) must "
                          f"be below 1 (got {_fmt(val)} + {_fmt(test)}): no images are left to "
                          "train on",
                          "lower one of them, e.g. --val-fraction 0.2 --test-fraction 0.2")


def check_choices(params: Mapping[str, Any]) -> None:
    """Check every entry of ``params`` that is a ``checked`` choice of ``PARAMS`` (``head``,
    ``optimizer``, ...) against its registry: ``ConfigError`` with a did-you-mean fix."""
    for name, value in params.items():
        spec = PARAMS.get(name)
        if spec is not None and spec.kind == "choice" and spec.checked:
            spec.check(value)


def click_type(name: str, extra: Sequence[str] = ()) -> Any:
    """A click parameter type for ``PARAMS[name]``: the bounds of a range (floats also refuse
    NaN/inf), or a choice read from its registry when parsing (plus ``extra`` values)."""
    import click

    spec = PARAMS[name]
    float_range, lazy_choice = _click_types()
    if spec.kind == "choice":
        return lazy_choice(spec, tuple(extra))
    if spec.kind in ("bool", "flag"):
        return click.BOOL
    if spec.kind == "path":
        from pathlib import Path

        return click.Path(path_type=Path)
    if spec.kind == "str":
        return click.STRING
    bounds = {"min": spec.min, "max": spec.max, "min_open": spec.min_open,
              "max_open": spec.max_open}
    if spec.kind == "int":
        return click.IntRange(**{k: (int(v) if isinstance(v, float) else v)
                                 for k, v in bounds.items()})
    return float_range(**bounds)


@functools.cache
def _click_types() -> tuple[type, type]:
    """The click types this module defines, made on first use (click is imported lazily)."""
    import click

    class FiniteFloatRange(click.FloatRange):
        """``click.FloatRange`` lets NaN through every bound; this one does not."""

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            number = super().convert(value, param, ctx)
            if not math.isfinite(number):
                self.fail(f"{value!r} is not a finite number", param, ctx)
            return number

    class TableChoice(click.Choice):
        """A choice of ``PARAMS``, read from its registry when parsing (an entry registered
        after import is a choice too); an unknown value's error says which name was meant."""

        def __init__(self, spec: ParamSpec, extra: tuple[str, ...] = ()) -> None:
            super().__init__([])
            self.spec, self.extra = spec, extra

        @property  # type: ignore[override]
        def choices(self) -> tuple[str, ...]:
            return tuple(dict.fromkeys([*self.spec.allowed(), *self.extra]))

        @choices.setter
        def choices(self, value: Any) -> None:
            pass

        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return super().convert(value, param, ctx)
            except click.BadParameter as exc:
                exc.fix = did_you_mean(value, self.choices)  # type: ignore[attr-defined]
                raise

    return FiniteFloatRange, TableChoice
