"""Old import paths, kept for one release: ``import graftwork.classifier`` still works, with a
``DeprecationWarning`` naming the new module (the module tree was regrouped into packages in
0.2; see ``docs/architecture.md``).

One table, :data:`MOVED`, maps each old public module to its new home; a meta-path finder
answers imports of those names with the new module itself, so both names are one object.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "install"]

#: old module -> new module (removed in the release after next)
MOVED = {
    "graftwork.classifier": "graftwork.estimator.classifier",
    "graftwork.baseline": "graftwork.estimator.baseline",
    "graftwork.heads": "graftwork.model.heads",
    "graftwork.summary": "graftwork.model.summary",
    "graftwork.bn": "graftwork.model.bn",
    "graftwork.fold": "graftwork.model.fold",
    "graftwork.calibration": "graftwork.model.calibration",
    "graftwork.callbacks": "graftwork.training.callbacks",
    "graftwork.devices": "graftwork.training.devices",
    "graftwork.distributed": "graftwork.training.distributed",
    "graftwork.export": "graftwork.deploy.export",
    "graftwork.serve": "graftwork.deploy.serve",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.target}; the old name goes in the next "
                      "release", DeprecationWarning, stacklevel=4)
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system stamps the alias spec over it
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed: only its own spec is put back."""
        module.__spec__ = self._spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(MOVED[name]))


def install() -> None:
    """Answer the old names (once per process)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
