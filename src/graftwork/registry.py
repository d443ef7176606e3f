"""A registry by name, shared by every extension point: phases and strategies, inference
engines, heads, weight sources, backbones, data checks.

    ENGINES = Registry("engine", flag="--engine")
    ENGINES.register("torch", TorchEngine)        # or @ENGINES.register("torch") on a class
    ENGINES.names()                                # ['auto', 'onnx', 'torch', ...] in order
    ENGINES.lookup("tortch")  # ConfigError: unknown engine 'tortch' (did you mean 'torch'?)

A :class:`Registry` is an ordered ``dict`` (name -> entry), so tests and plug-ins may also use
``in``, ``pop`` and iteration; the CLI reads its ``names()`` lazily, when it parses, so an
entry registered after import is a choice too.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from graftwork.errors import ConfigError, GraftError

__all__ = ["Registry", "did_you_mean"]

T = TypeVar("T")


class Registry(dict[str, T]):
    """Entries of one kind by name, in registration order, with a did-you-mean error."""

    def __init__(self, kind: str, *, flag: str = "", error: type[GraftError] = ConfigError
                 ) -> None:
        super().__init__()
        self.kind = kind
        self.flag = flag
        self.error = error

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: Any = None) -> Any:
        """Add ``entry`` under ``name`` (a later registration replaces an earlier one); without
        ``entry``, a decorator."""
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if entry is None:
            def decorate(obj: T) -> T:
                self[name] = obj
                return obj
            return decorate
        self[name] = entry
        return entry

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self)

    def lookup(self, name: Any) -> T:
        """The entry of ``name``; ``self.error`` (a ``ConfigError`` by default) naming the
        choices, and the closest ones, otherwise."""
        if isinstance(name, str) and name in self:
            return self[name]
        raise self.error(self.unknown(name), self.fix(name))

    def unknown(self, name: Any) -> str:
        """``"unknown engine 'x'"``, with the flag when there is one."""
        where = f" ({self.flag})" if self.flag else ""
        return f"unknown {self.kind}{where} {name!r}"

    def fix(self, name: Any) -> str:
        """``"did you mean 'torch'? choose one of: auto, onnx, torch"``."""
        return did_you_mean(name, self.names())


def did_you_mean(name: Any, names: Sequence[str]) -> str:
    """``"did you mean 'torch'? choose one of: auto, onnx, torch"`` (the hint only where a name
    is close to ``name``)."""
    close = difflib.get_close_matches(str(name), list(names), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}choose one of: {', '.join(names)}"
