"""One name, one definition (issue 28): the run-directory readers and writers are defined once
in src/ (module sizes and import cycles: tests/test_layout.py)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "graftwork"
ONCE = ("load_run", "read_run", "read_metrics", "read_json", "read_csv", "write_csv",
        "thumbnail")


def _definitions() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for module in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.setdefault(node.name, []).append(str(module.relative_to(SRC)))
    return found


def test_readers_are_defined_once() -> None:
    found = _definitions()
    for name in ONCE:
        assert len(found.get(name, [])) == 1, (name, found.get(name))
    assert found["load_run"] == ["estimator/persist.py"]  # the classifier; the record: read_run
    assert found["read_run"] == ["rundir/reader.py"]
    assert found["read_metrics"] == ["rundir/files.py"]

