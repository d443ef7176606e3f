"""Tests for graftwork.report.kit, the HTML page kit: a page of its own (as ``graft audit``'s
will be) built from the kit alone is self-contained."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from graftwork.report import kit


def _image(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


def test_page_from_the_kit_alone_is_self_contained(tmp_path: Path) -> None:
    _image(tmp_path / "data" / "cat" / "1.png", (400, 200))
    uri = kit.thumbnail("cat/1.png", base_dir=tmp_path / "data")
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    rows = [[kit.escape("cat/1.png"), kit.escape("<dup> of cat/7.png")], ["a", "3"]]
    body = (kit.header("Data audit", "data/ & more",
                       body=kit.cards([("images", "1,204"), ("problems", "<1>")]))
            + kit.nav([("problems", "Problems")])
            + kit.section("problems", "Problems",
                          kit.table(["image", "problem"], rows, [False, True], ["best"])
                          + f'<img src="{uri}" alt="cat/1.png">'
                          + kit.kv_table({"wall_time_s": 75.0, "nested": {"a": [1]}})
                          + kit.details("Raw", {"x": "<y>"})))
    page = kit.page("graftwork audit: <data>", body, extra_css=".extra { color: red; }")

    assert page.startswith("<!DOCTYPE html>\n") and page.endswith("</html>\n")
    assert "<title>graftwork audit: &lt;data&gt;</title>" in page
    assert kit.CSS in page and ".extra { color: red; }" in page
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith(("data:image/", "#")), attribute
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "<script" not in page.lower()
    assert "<dup>" not in page and "&lt;dup&gt; of cat/7.png" in page and "&lt;1&gt;" in page
    assert '<tr class="best"><td>cat/1.png</td><td class="num">' in page
    assert "1m 15s" in page  # kv_table formats by key
    tags = _Tags()
    tags.feed(page)
    assert not tags.open and tags.seen >= {"html", "main", "header", "nav", "section", "table",
                                           "img", "details", "pre"}  # every element closed


class _Tags(HTMLParser):
    """Checks that every element but the void ones is closed, in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, tag


def test_thumbnail_tiny_png_and_unreadable(tmp_path: Path) -> None:
    tiny = kit.thumbnail(str(_image(tmp_path / "tiny.png", (20, 10))))
    assert tiny is not None and tiny.startswith("data:image/png;base64,")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert kit.thumbnail(str(tmp_path / "broken.jpg")) is None
    assert kit.thumbnail("nowhere.png", base_dir=tmp_path) is None
    assert kit.thumbnail("") is None
