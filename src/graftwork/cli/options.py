"""``param_option(name)``: a click option generated from the one options table
(:data:`graftwork.params.PARAMS`): its flag, type (a range, or a choice read from a registry
when parsing), default, help and whether the default is shown.

    @param_option("epochs")
    @param_option("batch_size", default=64)      # a command's own default or help
    @param_option("engine", extra_choices=("ray",))

Every option of ``graft train`` and ``graft extract`` is made here (tests check it).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from graftwork.params import PARAMS, click_type

__all__ = ["TableOption", "param_option"]

F = TypeVar("F", bound=Callable[..., Any])


class TableOption(click.Option):
    """A click option made from ``PARAMS[table_name]``."""

    def __init__(self, *args: Any, table_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table_name = table_name


def param_option(name: str, *, extra_choices: Sequence[str] = (), **overrides: Any
                 ) -> Callable[[F], F]:
    """The click option of ``PARAMS[name]``; ``overrides`` replace what the table says
    (``default``, ``help``, ...), ``extra_choices`` add values to a choice."""
    spec = PARAMS[name]
    flag = f"{spec.flag}/{spec.off}" if spec.off else spec.flag
    decls = [d for d in (spec.short, flag) if d]
    settings: dict[str, Any] = {"help": spec.help or None, "default": spec.default,
                                "show_default": spec.default is not None
                                and spec.kind != "flag" and not spec.multiple}
    if spec.kind == "flag":
        settings["is_flag"] = True
    elif spec.kind != "bool":
        settings["type"] = click_type(name, extra_choices)
    if spec.multiple:
        settings["multiple"] = True
    if spec.metavar:
        settings["metavar"] = spec.metavar
    if spec.required:
        settings["required"] = True
    settings.update(overrides)
    if settings.get("default") is not None:
        settings.setdefault("show_default", True)
    return click.option(*decls, spec.dest or spec.name, cls=TableOption, table_name=name,
                         **settings)
