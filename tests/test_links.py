"""Symbolic links in the image folder (issue 11.3): files followed, folders never, one file once."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftwork.data.discover import (IMAGE_EXTENSIONS, Sample, Skipped, Splits, _stratified_split,
                                     discover, list_images)
from graftwork.errors import DataError
from tests.conftest import make_image_folder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symlinks")

LOOP_UP = "symlink loop: points to a folder that contains it"
LOOP = "symlink loop: the link never resolves"
INSIDE = "symlinked folder inside the data folder: not followed (counted where it is)"
OUTSIDE = "symlinked folder outside the data folder: not followed"


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def _red_blue(root: Path, n: int = 4) -> Path:
    """DATA/blue/b{i}.png, DATA/red/r{i}.png."""
    for i in range(n):
        _png(root / "blue" / f"b{i}.png", i)
        _png(root / "red" / f"r{i}.png", 10 + i)
    return root


def _labels(splits: Splits) -> dict[str, str]:
    """file name -> class name over all splits (fails on a name counted twice)."""
    out: dict[str, str] = {}
    for s in splits.train + splits.val + splits.test:
        assert s.path not in out
        out[s.path] = splits.classes[s.label]
    return out


def _reasons(splits: Splits) -> dict[str, str]:
    paths = [s.path for s in splits.skipped]
    assert len(paths) == len(set(paths)), "a path listed twice in skipped"
    return {s.path: s.reason for s in splits.skipped}


def _expected_flat(root: Path, n: int = 4) -> dict[str, str]:
    return {**{str(root / "blue" / f"b{i}.png"): "blue" for i in range(n)},
            **{str(root / "red" / f"r{i}.png"): "red" for i in range(n)}}


# ------------------------------------------------------------------------------ observed bugs
def test_class_level_link_to_the_data_folder_is_no_class(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    os.symlink(".", root / "zself")  # ln -s . DATA/zself
    splits = discover(root, 0.0, 0.0)
    assert splits.classes == ["blue", "red"]
    assert _labels(splits) == _expected_flat(root)
    assert _reasons(splits) == {str(root / "zself"): LOOP_UP}


def test_link_to_the_parent_inside_a_class_does_not_relabel(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    os.symlink("..", root / "red" / "up")  # ln -s .. DATA/red/up
    os.symlink("../blue", root / "red" / "also_blue")
    os.symlink("blue", root / "green")  # class-level link to a folder inside DATA
    splits = discover(root, 0.0, 0.0)
    assert splits.classes == ["blue", "red"]
    assert _labels(splits) == _expected_flat(root)
    assert _reasons(splits) == {str(root / "red" / "up"): LOOP_UP,
                                str(root / "red" / "also_blue"): INSIDE,
                                str(root / "green"): INSIDE}


def test_self_loop_links_are_reported_not_dropped(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    os.symlink("zloop", root / "zloop")  # class level: was dropped silently
    os.symlink("loop", root / "red" / "loop")  # a link to itself
    os.symlink("b", root / "red" / "a")  # a chain that loops
    os.symlink("a", root / "red" / "b")
    os.symlink(".", root / "red" / "here")
    (root / "red" / "deep").mkdir()
    os.symlink(str(root / "red"), root / "red" / "deep" / "back")
    splits = discover(root, 0.0, 0.0)
    assert splits.classes == ["blue", "red"]
    assert _labels(splits) == _expected_flat(root)
    assert _reasons(splits) == {str(root / "zloop"): LOOP, str(root / "red" / "loop"): LOOP,
                                str(root / "red" / "a"): LOOP, str(root / "red" / "b"): LOOP,
                                str(root / "red" / "here"): LOOP_UP,
                                str(root / "red" / "deep" / "back"): LOOP_UP}


@pytest.mark.skipif(not os.path.isdir("/etc"), reason="needs /etc")
def test_link_to_etc_in_a_class_is_not_followed(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    os.symlink("/etc", root / "red" / "etc")
    os.symlink("/etc", root / "etc_class")
    splits = discover(root, 0.0, 0.0)
    assert splits.classes == ["blue", "red"]
    assert _labels(splits) == _expected_flat(root)
    assert _reasons(splits) == {str(root / "red" / "etc"): OUTSIDE,
                                str(root / "etc_class"): OUTSIDE}
    skipped: list[Skipped] = []
    assert len(list_images(root / "red", skipped)) == 4
    assert skipped == [Skipped(str(root / "red" / "etc"), OUTSIDE)]


# ------------------------------------------------------------------------------ file links
def test_file_links_inside_data_count_once(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    os.symlink("r0.png", root / "red" / "same_class.png")
    os.symlink("../blue/b1.png", root / "red" / "other_class.png")  # blue/ is walked first
    os.symlink(str(root / "red" / "r2.png"), root / "blue" / "zz_abs.png")  # blue before red
    os.symlink("r3.png", root / "red" / "a_link_first.png")  # the link sorts before its target
    splits = discover(root, 0.0, 0.0)
    labels = _labels(splits)
    assert sorted(labels.values()) == ["blue"] * 5 + ["red"] * 3
    assert labels[str(root / "blue" / "zz_abs.png")] == "blue"  # first occurrence wins
    assert labels[str(root / "red" / "a_link_first.png")] == "red"
    r = _reasons(splits)
    dup = "duplicate of {!r} (same file)".format
    assert r == {str(root / "red" / "same_class.png"): dup(str(root / "red" / "r0.png")),
                 str(root / "red" / "other_class.png"): dup(str(root / "blue" / "b1.png")),
                 str(root / "red" / "r2.png"): dup(str(root / "blue" / "zz_abs.png")),
                 str(root / "red" / "r3.png"): dup(str(root / "red" / "a_link_first.png"))}


def test_file_links_across_splits_keep_the_first_in_train_val_test_order(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "DATA", classes=2, counts={"train": 3, "val": 2, "test": 2},
                             size=8)
    tr, va, te = (root / s / "class_0" for s in ("train", "val", "test"))
    os.symlink("../../train/class_0/train_0_0.png", va / "leak.png")
    os.symlink(str(va / "val_0_1.png"), tr / "from_val.png")  # train wins over val
    os.symlink("../../val/class_0/val_0_0.png", te / "test_leak.png")  # val wins over test
    splits = discover(root, 0.2, 0.2)
    assert splits.counts() == {"train": 7, "val": 3, "test": 4}
    assert str(tr / "from_val.png") in {s.path for s in splits.train}
    dup = "duplicate of {!r} (same file)".format
    assert _reasons(splits) == {str(va / "leak.png"): dup(str(tr / "train_0_0.png")),
                                str(va / "val_0_1.png"): dup(str(tr / "from_val.png")),
                                str(te / "test_leak.png"): dup(str(va / "val_0_0.png"))}
    reals = [os.path.realpath(s.path) for s in splits.train + splits.val + splits.test]
    assert len(reals) == len(set(reals))


def test_file_link_to_an_image_outside_data_is_followed(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    outside = _png(tmp_path / "elsewhere" / "o.png", 99)
    os.symlink(outside, root / "red" / "o.png")
    os.symlink(outside, root / "blue" / "again.png")  # one real file: counted once
    splits = discover(root, 0.0, 0.0)
    labels = _labels(splits)
    assert labels[str(root / "blue" / "again.png")] == "blue"
    assert str(root / "red" / "o.png") not in labels and len(labels) == 9
    assert _reasons(splits) == {
        str(root / "red" / "o.png"): f"duplicate of {str(root / 'blue' / 'again.png')!r} (same file)"}


# ------------------------------------------------------------------------------ folder links
def test_class_folder_linking_outside_data_is_reported(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    for i in range(3):
        _png(tmp_path / "green_real" / f"g{i}.png", i)
    os.symlink(tmp_path / "green_real", root / "green")
    splits = discover(root, 0.0, 0.0)
    assert splits.classes == ["blue", "red"]
    assert _labels(splits) == _expected_flat(root)
    assert _reasons(splits) == {str(root / "green"): OUTSIDE}
    (root / "blue" / "b0.png").rename(tmp_path / "blue_moved")
    os.rename(root / "blue", tmp_path / "blue_real")
    os.symlink(tmp_path / "blue_real", root / "blue")
    with pytest.raises(DataError, match=r"only one class \('red'\).*not followed: \['blue', "
                                        r"'green'\]") as err:
        discover(root, 0.0, 0.0)
    assert err.value.fix


def test_linked_split_folders_are_data_errors(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "DATA", classes=2, counts={"train": 3, "val": 2}, size=8)
    os.rename(root / "val", tmp_path / "val_real")
    os.symlink(tmp_path / "val_real", root / "val")
    with pytest.raises(DataError, match="val' is a symlinked folder") as err:
        discover(root)
    assert "val_real" in err.value.fix
    os.remove(root / "val")
    os.rename(tmp_path / "val_real", root / "val")
    (root / "val" / "class_1").rename(tmp_path / "c1")
    os.symlink(tmp_path / "c1", root / "val" / "class_1")
    with pytest.raises(DataError, match=r"missing: \['class_1'\]\) \(symlinked folders are not"):
        discover(root)
    os.rename(root / "train", tmp_path / "train_real")
    os.symlink(tmp_path / "train_real", root / "train")
    with pytest.raises(DataError, match="train' is a symlinked folder"):
        discover(root)


def test_class_holding_only_a_folder_link_has_no_images(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    (root / "pink").mkdir()
    os.symlink("../red", root / "pink" / "red")
    with pytest.raises(DataError, match="pink' has no images") as err:
        discover(root, 0.0, 0.0)
    assert "symlinked folders" in err.value.fix


def test_reasons_are_one_line_and_paths_stay_in_data(tmp_path: Path) -> None:
    root = _red_blue(tmp_path / "DATA")
    odd = root / "red" / "0two\nlines.png"  # sorts first: r0.png becomes its duplicate
    odd.symlink_to("r0.png")
    os.symlink("r0.png", root / "red" / "s.png")
    os.symlink("/", root / "red" / "slash")
    os.symlink("missing", root / "red" / "gone.png")
    os.mkfifo(root / "red" / "pipe.png")
    splits = discover(root, 0.0, 0.0)
    assert all("\n" not in s.reason and "\r" not in s.reason for s in splits.skipped)
    assert all(s.path.startswith(str(root) + os.sep) for s in splits.skipped)
    r = _reasons(splits)
    assert r[str(root / "red" / "slash")] == LOOP_UP  # / contains DATA
    assert r[str(root / "red" / "gone.png")] == "broken symlink"
    assert r[str(root / "red" / "pipe.png")] == "not a regular file"
    assert r[str(root / "red" / "r0.png")] == f"duplicate of {str(odd)!r} (same file)"


def test_data_folder_given_through_a_link(tmp_path: Path) -> None:
    real = _red_blue(tmp_path / "real")
    os.symlink(real, tmp_path / "DATA")
    root = tmp_path / "DATA"
    os.symlink(str(real / "blue"), root / "red" / "abs_blue")  # real path: inside DATA
    splits = discover(root, 0.0, 0.0)
    assert _labels(splits) == _expected_flat(root)
    assert _reasons(splits) == {str(root / "red" / "abs_blue"): INSIDE}


# ------------------------------------------------------------------------------ no links: unchanged
def _old_walk(folder: Path, skipped: list[Skipped]) -> list[str]:
    """The walk before issue 11.3 (commit 2a89f13), for layouts without links."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                continue
            if not stat.S_ISREG(os.stat(path).st_mode):
                skipped.append(Skipped(path, "not a regular file"))
            elif os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
                out.append(path)
            else:
                skipped.append(Skipped(path, "system file" if name in ("Thumbs.db", "desktop.ini")
                                       else "not an image file (extension)"))
    return out


def _old_discover(root: Path, val: float, test: float, seed: int) -> Splits:
    """The discovery before issue 11.3, for layouts without links."""
    skipped: list[Skipped] = []
    explicit = (root / "train").is_dir()
    train_dir = root / "train" if explicit else root

    def classes_of(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def scan(folder: Path) -> list[Sample]:
        return [Sample(p, label) for label, name in enumerate(classes)
                for p in _old_walk(folder / name, skipped)]

    classes = classes_of(train_dir)
    train = scan(train_dir)
    given = {s: scan(root / s) for s in ("val", "test") if explicit and (root / s).is_dir()}
    fractions = [val if "val" not in given else 0.0,
                 test if ("test" not in given and not explicit) else 0.0]
    parts = _stratified_split(train, fractions, seed, classes)
    return Splits(classes, parts[0], given.get("val", parts[1]), given.get("test", parts[2]),
                  skipped, explicit)


def _messy_tree(root: Path, rng: np.random.Generator) -> None:
    """Nested sub-folders, hidden entries, odd names, mixed-case extensions, non-images."""
    names = ["a.png", "B.PNG", "c d.jpg", "ünï.png", "10.png", "9.png", "_x.jpeg", "Z.webp"]
    for cls in ("Cat", "dog", "ñu", "zebra 2"):
        for sub in ("", "sub", "sub/deeper", "Alpha", "sub-2", ".hidden"):
            picked = rng.choice(names, size=int(rng.integers(1, 5)), replace=False)
            for name in picked:
                _png(root / cls / sub / str(name), int(rng.integers(0, 1000)))
        (root / cls / "notes.txt").write_text("x")
        (root / cls / "sub" / "Thumbs.db").write_bytes(b"x")
        (root / cls / ".DS_Store").write_bytes(b"x")
    (root / ".cache").mkdir()


@pytest.mark.parametrize("explicit", [False, True])
def test_layout_without_links_is_unchanged(tmp_path: Path, explicit: bool) -> None:
    rng = np.random.default_rng(7)
    root = tmp_path / "DATA"
    for split in ("train", "val", "test") if explicit else ("",):
        _messy_tree(root / split, rng)
    os.mkfifo(root / ("train" if explicit else "") / "dog" / "sub" / "pipe.png")
    for seed in (0, 1):
        new, old = discover(root, 0.25, 0.2, seed), _old_discover(root, 0.25, 0.2, seed)
        assert new.classes == old.classes
        assert (new.train, new.val, new.test) == (old.train, old.val, old.test)
        assert sorted(new.skipped, key=str) == sorted(old.skipped, key=str)
    assert len(new.train) > 25 and len(new.skipped) >= 9
