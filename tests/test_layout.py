"""The folder tree is the architecture: a package per layer, small modules, and no two modules
that import each other, not even inside a function or under ``TYPE_CHECKING``."""
from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "graftwork"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every graftwork module ``name`` imports, anywhere in the file (functions, TYPE_CHECKING
    blocks included); ``from pkg import mod`` counts as importing ``pkg.mod``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
    return {m for m in found if m in known and m != name}


def test_no_two_modules_import_each_other() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    # strongly connected components (Tarjan): any with two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, cycles


def test_the_top_level_is_a_handful_of_modules_and_every_module_is_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, long


def test_the_cache_root_rule_is_written_once() -> None:
    hits = [f"{p}:{i}" for p in PACKAGE.rglob("*.py")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if "cache_dir or default_cache_dir" in line or "or default_cache_dir()" in line]
    assert len(hits) <= 1, hits


@pytest.mark.parametrize("old, new", [("graftwork.classifier", "graftwork.estimator.classifier"),
                                      ("graftwork.heads", "graftwork.model.heads"),
                                      ("graftwork.export", "graftwork.deploy.export")])
def test_old_import_paths_still_work_with_a_deprecation_warning(old: str, new: str) -> None:
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as e:\n    print('warned', e)\n"
            f"warnings.simplefilter('ignore')\nimport {old} as a, {new} as b\n"
            f"print(a is b, b.__spec__.name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("warned") and new in out[0]
    assert out[1] == f"True {new}"


def test_the_public_api_is_unchanged() -> None:
    import graftwork
    from graftwork import ImageClassifier, create_backbone
    from graftwork.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ImageClassifier.__module__ == "graftwork.estimator.classifier"
        assert callable(create_backbone) and callable(main)
        assert "ImageClassifier" in graftwork.__all__
