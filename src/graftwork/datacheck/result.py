"""What ``graft audit`` found, and its files: ``audit.csv`` (the files a person may exclude,
formula-safe) and ``audit.json``; ``audit.html`` is built by :mod:`.page`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graftwork.rundir.files import write_csv, write_json

__all__ = ["AuditResult", "CSV_FILE", "JSON_FILE", "HTML_FILE", "CSV_COLUMNS"]

CSV_FILE = "audit.csv"
JSON_FILE = "audit.json"
HTML_FILE = "audit.html"
#: One row per file a person may want to leave out (``graft train --exclude audit.csv``).
CSV_COLUMNS = ("path", "finding", "label", "suggested", "score", "kind", "splits", "copy_of")


@dataclass
class AuditResult:
    """Findings; every path is relative to DATA."""

    data: Path
    label_issues: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    #: for each likely label error, the nearest images of its suggested class (for the page)
    neighbours: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` object: exactly label_issues, duplicates, outliers, summary."""
        return {"label_issues": self.label_issues, "duplicates": self.duplicates,
                "outliers": self.outliers, "summary": self.summary}

    @property
    def leaks(self) -> list[dict[str, Any]]:
        """Duplicate groups that span two or more splits."""
        return [g for g in self.duplicates if len(g["splits"]) > 1]

    def csv_rows(self) -> list[dict[str, Any]]:
        """The files to review, one row each: flagged labels, outliers, and every member of a
        duplicate group but the one kept (the first in train, else the first)."""
        rows = [{"path": r["path"], "finding": "label_issue", "label": r["label"],
                 "suggested": r["suggested"], "score": r["score"]} for r in self.label_issues]
        for group in self.duplicates:
            kept = group["paths"][0]
            finding = "leak" if len(group["splits"]) > 1 else "duplicate"
            rows += [{"path": p, "finding": finding, "kind": group["kind"],
                      "score": group["similarity"], "splits": " ".join(group["splits"]),
                      "copy_of": kept} for p in group["paths"][1:]]
        rows += [{"path": r["path"], "finding": "outlier", "score": r["score"]}
                 for r in self.outliers]
        return rows

    def write(self, out: Path) -> None:
        """``audit.csv`` and ``audit.json`` in ``out`` (atomic writes)."""
        write_csv(out / CSV_FILE, CSV_COLUMNS, self.csv_rows())
        write_json(out / JSON_FILE, self.as_dict())
