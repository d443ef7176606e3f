"""Finding the images of a data folder: class folders, explicit or stratified splits, and the
symbolic-link policy (links inside DATA followed once, links out of it and loops skipped)."""
from __future__ import annotations

import errno
import logging
import math
import os
import random
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graftwork.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_NAMES", "Sample", "Skipped", "Splits", "discover",
           "list_images"]

log = logging.getLogger("graftwork.data")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Splits:
    """Class names (sorted folder names) and the samples of each split."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    explicit: bool = False  # True when train/val/test folders were given

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _within(path: str, folder: str) -> bool:
    return (path + os.sep).startswith(folder.rstrip(os.sep) + os.sep)


def _link(path: str, data: str) -> tuple[str | None, str]:
    """(why the symlink ``path`` is skipped or None, its real path): folder links never count."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return ("symlink loop: the link never resolves" if exc.errno == errno.ELOOP
                else "broken symlink"), ""
    real = os.path.realpath(path)
    if not stat.S_ISDIR(mode):
        return (None if stat.S_ISREG(mode) else "not a regular file"), real
    if _within(os.path.realpath(os.path.dirname(path)), real):
        return "symlink loop: points to a folder that contains it", real
    if _within(real, data):
        return "symlinked folder inside the data folder: not followed (counted where it is)", real
    return "symlinked folder outside the data folder: not followed", real


def _entries(folder: str | Path) -> list[os.DirEntry[str]]:
    """Sorted entries of ``folder``; hidden ones (.DS_Store, ._img.jpg, .git) are ignored."""
    with os.scandir(folder) as it:  # d_type: plain files and folders need no stat
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _image_files(folder: str, data: str, skipped: list[Skipped], seen: dict[str, str]) -> list[str]:
    """Images below ``folder``, sorted depth-first, symlinks as in ``discover``; ``seen`` maps
    real path -> first path (later copies are skipped); other files are recorded in ``skipped``."""
    images: list[str] = []
    stack = [(folder, os.path.realpath(folder))]
    while stack:
        top, real_top = stack.pop()
        try:
            entries = _entries(top)
        except OSError as exc:
            skipped.append(Skipped(str(exc.filename or top), f"cannot read folder: {exc.strerror}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for e in entries:
            reason, real = None, os.path.join(real_top, e.name)
            try:
                if e.is_symlink():
                    reason, real = _link(e.path, data)
                elif e.is_dir(follow_symlinks=False):
                    subdirs.append((e.path, real))
                    continue
                elif not e.is_file(follow_symlinks=False):  # FIFOs, devices: block or never end
                    reason = "not a regular file"
            except OSError as exc:
                reason = f"cannot read: {exc.strerror}"
            if reason is None and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                reason = ("system file" if e.name in ("Thumbs.db", "desktop.ini")
                          else "not an image file (extension)")
            elif reason is None and real in seen:
                reason = f"duplicate of {seen[real]!r} (same file)"
            if reason:
                skipped.append(Skipped(e.path, reason))
            else:
                seen[real] = e.path
                images.append(e.path)
        stack.extend(reversed(subdirs))
    return images


def list_images(folder: Path, skipped: list[Skipped] | None = None) -> list[Path]:
    """Image files below ``folder`` (symlinks as in ``discover``, ``folder`` being DATA);
    other files, folder links and second copies of one real file are recorded in ``skipped``."""
    found = _image_files(os.fspath(folder), os.path.realpath(folder),
                         skipped if skipped is not None else [], {})
    return [Path(p) for p in found]


def _class_folders(folder: Path, data: str, skipped: list[Skipped]) -> tuple[list[str], str]:
    """Sorted class folder names, and a note naming the symlinked folders left out."""
    names: list[str] = []
    links: list[str] = []
    try:
        for e in _entries(folder):
            reason = _link(e.path, data)[0] if e.is_symlink() else None
            if reason and reason != "not a regular file":  # links to files: ignored like files
                skipped.append(Skipped(e.path, reason))
                links.append(e.name)
            elif not e.is_symlink() and e.is_dir():
                names.append(e.name)
    except OSError as exc:
        raise DataError(f"cannot read folder {str(folder)!r}: {exc.strerror}",
                        "check the path and its permissions") from exc
    return names, f" (symlinked folders are not followed: {links})" if links else ""


def _scan_split(folder: Path, classes: list[str], data: str, skipped: list[Skipped],
                seen: dict[str, str]) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        files = _image_files(str(folder / name), data, skipped, seen)
        if not files:
            raise DataError(f"class folder {str(folder / name)!r} has no images",
                            "add images to it or remove the folder (symlinked folders and "
                            "second copies of an image do not count)")
        samples.extend(Sample(p, label) for p in files)
    return samples


def _part_sizes(fractions: Sequence[float], n: int) -> list[int]:
    """Images of a class of ``n`` each held-out part takes (at least one where its fraction is
    above 0): the one rule of :func:`_stratified_split`."""
    return [max(1, round(f * n)) if f > 0 else 0 for f in fractions]


def images_needed(fractions: Sequence[float]) -> int | None:
    """The fewest images per class from which every count splits with ``fractions`` leaving
    images to train on (rounding makes some smaller counts work and larger ones fail); None
    when the fractions sum to 1 or more."""
    held = [f for f in fractions if f > 0]
    if sum(held) >= 1:
        return None
    # every part takes at most f * n + 1 images, so from k / (1 - sum) on each count works
    bound = math.floor(len(held) / (1 - sum(held))) + 1
    fails = [n for n in range(1, bound + 1) if sum(_part_sizes(fractions, n)) >= n]
    return max(fails, default=0) + 1


def _describe(fractions: Sequence[float]) -> str:
    names = ("val", "test")
    parts = [f"{names[i] if i < len(names) else f'part {i}'} fraction {f:g}"
             for i, f in enumerate(fractions) if f > 0]
    return " and ".join(parts) + " set aside" if parts else "nothing set aside"


def _stratified_split(samples: list[Sample], fractions: Sequence[float], seed: int,
                      classes: list[str]) -> list[list[Sample]]:
    """Split per class with a seeded shuffle; every part gets at least one image of each class."""
    rng = random.Random(seed)
    parts: list[list[Sample]] = [[] for _ in range(len(fractions) + 1)]
    for label, name in enumerate(classes):
        items = [s for s in samples if s.label == label]
        rng.shuffle(items)
        sizes = _part_sizes(fractions, len(items))
        if sum(sizes) >= len(items):
            need = images_needed(fractions)
            at_least = (f"at least {need} images" if need else
                        "more images than these fractions can split (they leave none to train on)")
            raise DataError(f"class {name!r} has {len(items)} images, too few for this split "
                            f"({_describe(fractions)} of each class, and one image to train on)",
                            f"give each class {at_least}, or lower the val/test fractions, or "
                            "provide train/ and val/ folders")
        start = 0
        for i, size in enumerate(sizes):
            parts[i + 1].extend(items[start:start + size])
            start += size
        parts[0].extend(items[start:])
    return parts


def discover(root: str | Path, val_fraction: float = 0.2, test_fraction: float = 0.2,
             seed: int = 0) -> Splits:
    """Read an image folder: ``root/train|val|test/<class>/*`` or ``root/<class>/*``.

    Without a ``val/`` (or ``test/``) folder, a stratified seeded split of the training images
    takes its place. Raises ``DataError`` with a fix for every unusable layout.
    Symlinks (DATA = ``realpath(root)``): links to files are followed wherever they point;
    symlinked folders, at the class level or deeper, are never followed (inside DATA they would
    count images twice or under another label, outside it they reach system paths): each is
    listed once in ``skipped`` with its reason, and is no class. A ``train/``, ``val/`` or
    ``test/`` that is a symlinked folder is a ``DataError``. One real file counts once: later
    copies (order train, val, test; sorted walk) are skipped as duplicates.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"folder {str(root)!r} does not exist", "check the path")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder",
                        "pass the folder that holds one sub-folder per class")
    data = os.path.realpath(root)
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # real path -> first path: one real file counts once
    explicit = (root / "train").is_dir()
    for split in SPLIT_NAMES if explicit else ():
        if (root / split).is_symlink() and (root / split).is_dir():
            raise DataError(f"{str(root / split)!r} is a symlinked folder: not followed",
                            f"replace the link by the folder it points to, "
                            f"{os.path.realpath(root / split)!r}")
    train_dir = root / "train" if explicit else root
    classes, note = _class_folders(train_dir, data, skipped)
    if not classes:
        raise DataError(f"no class folders in {str(train_dir)!r}{note}",
                        "put images in one sub-folder per class, e.g. DATA/cats, DATA/dogs")
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]!r}) in {str(train_dir)!r}{note}",
                        "a classifier needs at least two class folders")
    train = _scan_split(train_dir, classes, data, skipped, seen)
    given: dict[str, list[Sample]] = {}
    for split in ("val", "test"):
        folder = root / split
        if explicit and folder.is_dir():
            found, note = _class_folders(folder, data, skipped)
            if found != classes:
                extra = sorted(set(found) - set(classes))
                lacking = sorted(set(classes) - set(found))
                raise DataError(f"{split}/ classes differ from train/ (extra: {extra}, "
                                f"missing: {lacking}){note}",
                                "use the same class folders in train/, val/ and test/")
            given[split] = _scan_split(folder, classes, data, skipped, seen)
    fractions = [val_fraction if "val" not in given else 0.0,
                 test_fraction if ("test" not in given and not explicit) else 0.0]
    parts = _stratified_split(train, fractions, seed, classes)
    splits = Splits(classes, parts[0], given.get("val", parts[1]), given.get("test", parts[2]),
                    skipped, explicit)
    log.info("data %s: %d classes, %s", root, len(classes), splits.counts())
    return splits
