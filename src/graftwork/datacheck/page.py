"""``audit.html``: a self-contained page (the report kit: inline CSS, images as ``data:`` URIs,
no script) where a person decides in seconds: every flagged image beside the nearest images of
the class it is suggested to be, both (all) members of each duplicate group, the outliers."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import graftwork.report.kit as kit
from graftwork.datacheck.result import AuditResult
from graftwork.rundir.files import atomic_write_text

__all__ = ["build_page"]

_CSS = """
.group { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin: 0 0 14px;
         padding: 0 0 12px; border-bottom: 1px solid #eef1f5; }
.group figure.loss { width: 150px; }
.group .sep { align-self: center; color: #5b6573; font-size: 0.85em; width: 70px; }
.leak { color: #b42318; font-weight: 600; }
"""


def _tile(data: Path, path: str, lines: Sequence[tuple[str, str]]) -> str:
    uri = kit.thumbnail(path, base_dir=data, size=kit.THUMBNAIL)
    image = (f'<img src="{uri}" alt="{kit.escape(path)}" loading="lazy">' if uri else
             '<div class="missing">cannot show</div>')
    caption = "".join(f'<span class="{cls}" title="{kit.escape(text)}">{text}</span>'
                      for cls, text in lines)
    return f'<figure class="loss">{image}<figcaption>{caption}</figcaption></figure>'


def _name(path: str) -> tuple[str, str]:
    return ("prob", kit.escape(path))


def _label_section(result: AuditResult, neighbours: dict[str, list[str]]) -> str:
    if not result.label_issues:
        return ""
    rows = []
    for issue in result.label_issues:
        tiles = [_tile(result.data, issue["path"], [
            _name(issue["path"]), ("true", f"filed as <b>{kit.escape(issue['label'])}</b>"),
            ("pred", f"looks like <b>{kit.escape(issue['suggested'])}</b>"),
            ("prob", f"score {issue['score']:.3f}")])]
        near = neighbours.get(issue["path"], [])
        if near:
            tiles.append(f'<div class="sep">nearest {kit.escape(issue["suggested"])}:</div>')
            tiles += [_tile(result.data, p, [_name(p)]) for p in near]
        rows.append(f'<div class="group">{"".join(tiles)}</div>')
    note = ('<p class="muted">Each image the out-of-fold heads and confident learning (cleanlab) '
            "say is probably filed under the wrong class, most likely first, beside the images "
            "of the suggested class it is closest to. Fix the label (move the file) or exclude "
            "it: <code>graft train DATA --exclude AUDIT/audit.csv</code>.</p>")
    return kit.section("labels", f"Likely label errors ({len(result.label_issues)})",
                       note + "".join(rows))


def _duplicate_section(result: AuditResult) -> str:
    if not result.duplicates:
        return ""
    rows = []
    for group in result.duplicates:
        leak = len(group["splits"]) > 1
        head = (f'<div class="sep"><span class="leak">{"leak" if leak else ""}</span> '
                f'{kit.escape(group["kind"])} ({kit.escape(", ".join(group["splits"]))})</div>')
        tiles = [_tile(result.data, p, [_name(p)]) for p in group["paths"]]
        rows.append(f'<div class="group">{head}{"".join(tiles)}</div>')
    note = ('<p class="muted">Groups of the same image: exact (same bytes or same pixels) or near '
            "(re-encoded, cropped, resized, relit). A group in two splits is a <b>leak</b>: the "
            "test accuracy counts images the model trained on. Leaks come first.</p>")
    return kit.section("duplicates", f"Duplicates ({len(result.duplicates)} groups, "
                       f"{len(result.leaks)} leaks)", note + "".join(rows))


def _outlier_section(result: AuditResult) -> str:
    if not result.outliers:
        return ""
    tiles = [_tile(result.data, r["path"], [_name(r["path"]), ("prob", f"score {r['score']:.3f}")])
             for r in result.outliers]
    note = ('<p class="muted">Images far from every other image in feature space: often images of '
            "no class (a stray photo, a blank scan). Remove them or add their class.</p>")
    return kit.section("outliers", f"Outliers ({len(result.outliers)})",
                       note + f'<div class="losses">{"".join(tiles)}</div>')


def _notes_section(result: AuditResult) -> str:
    notes = result.summary.get("notes") or []
    if not notes:
        return ""
    rows = [[kit.escape(n["check"]), kit.escape(n["message"]),
             kit.escape(", ".join(n.get("examples") or []))] for n in notes]
    return kit.section("notes", "Notes", kit.table(["check", "finding", "examples"], rows))


def build_page(result: AuditResult, out: Path) -> Path:
    """Write ``out`` (audit.html) for ``result``."""
    neighbours = result.neighbours
    s = result.summary
    cards = kit.cards([("images", f"{s.get('images', 0):,}"),
                       ("classes", str(len(s.get("classes", [])))),
                       ("label issues", str(len(result.label_issues))),
                       ("leaks", str(len(result.leaks))),
                       ("duplicate groups", str(len(result.duplicates))),
                       ("outliers", str(len(result.outliers)))])
    sections = [("notes", "Notes", _notes_section(result)),
                ("duplicates", "Duplicates", _duplicate_section(result)),
                ("labels", "Label errors", _label_section(result, neighbours)),
                ("outliers", "Outliers", _outlier_section(result))]
    present = [(a, t, h) for a, t, h in sections if h]
    body = (kit.header("graftwork audit", str(result.data.resolve()), body=cards)
            + kit.nav([(a, t) for a, t, _ in present]) + "".join(h for _, _, h in present))
    if not present:
        body += kit.section("clean", "Nothing found", "<p>No check found a problem.</p>")
    atomic_write_text(out, kit.page(f"graftwork audit: {result.data.name}", body, _CSS))
    return out
