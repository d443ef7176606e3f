"""What training does about ``graft audit``'s findings without auditing: leave out the files a
list names (``graft train --exclude audit.csv``) and warn when the same file sits in two splits
(an exact copy in test and train inflates the test accuracy a run prints)."""
from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from graftwork.data.digests import file_digests
from graftwork.data.discover import Splits
from graftwork.errors import ConfigError, DataError

__all__ = ["read_exclude", "without", "split_copies"]

log = logging.getLogger("graftwork.data")


def read_exclude(list_file: str | Path, data: str | Path) -> set[str]:
    """The real paths of the files ``list_file`` names: a CSV with a ``path`` column (such as
    graft audit's ``audit.csv``) or one path per line (``#`` comments); each relative to DATA
    or absolute. ``ConfigError`` when the list cannot be read or names nothing in DATA."""
    path = Path(list_file)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--exclude {str(path)!r} cannot be read: {exc}",
                          "pass graft audit's audit.csv or a text file of paths") from exc
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), [])
    if "path" in header:
        names = [row.get("path") or "" for row in csv.DictReader(lines)]
    else:
        names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    names = [n.removeprefix("'") for n in names if n]  # a formula-guarded cell
    root = Path(data)
    real = {os.path.realpath(n if os.path.isabs(n) else root / n) for n in names}
    present = {p for p in real if os.path.isfile(p)}
    if names and not present:
        raise ConfigError(f"none of the {len(names)} files --exclude {str(path)!r} names is in "
                          f"{str(root)!r}", "pass the DATA folder the list was made for")
    if len(present) < len(real):
        log.warning("--exclude: %d of the %d listed files are not in %s", len(real) - len(present),
                    len(real), root)
    return present


def without(splits: Splits, excluded: set[str]) -> tuple[Splits, list[str]]:
    """``splits`` without the files whose real path is in ``excluded``, and the paths left out;
    ``DataError`` when a class of the training split would be left empty."""
    dropped: list[str] = []

    def keep(samples: list) -> list:
        out = []
        for s in samples:
            (dropped if os.path.realpath(s.path) in excluded else out).append(s)
        return out

    kept = replace(splits, train=keep(splits.train), val=keep(splits.val),
                   test=keep(splits.test))
    dropped = [s.path for s in dropped]
    present = {s.label for s in kept.train}
    for label, name in enumerate(kept.classes):
        if label not in present:
            raise DataError(f"--exclude leaves class {name!r} without training images",
                            "keep some of its images, or remove the class folder")
    return kept, dropped


def split_copies(splits: Splits, cache_root: str | Path | None) -> list[tuple[str, str]]:
    """(train image, held-out image) pairs with the same bytes: one per held-out copy."""
    names = {"train": splits.train, "val": splits.val, "test": splits.test}
    samples = [(name, s.path) for name, group in names.items() for s in group]
    digests = file_digests([p for _, p in samples], cache_root)
    first: dict[bytes, dict[str, str]] = defaultdict(dict)
    for (split, path), digest in zip(samples, digests):
        if digest is not None:
            first[digest].setdefault(split, path)
    return [(where["train"], where[other]) for where in first.values() if "train" in where
            for other in ("val", "test") if other in where]
