"""Per-phase settings (``phase_options`` / ``--phase-option``) and ``unfreeze="auto"``."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from graftwork import ConfigError, ImageClassifier
from graftwork.backbones.catalog import get_spec, register_backbone
from graftwork.cli import main
from graftwork.phases.extract import Extract
from graftwork.phases.finetune import Finetune
from tests.conftest import TINY


def test_phase_options_apply_to_their_phase_only() -> None:
    params = {"epochs": 3, "lr": None, "phase_options": {"finetune": {"lr": 5e-5, "epochs": 7,
                                                                       "optimizer": "sgd"}}}
    ft, ex = Finetune().config(params, 100), Extract().config(params, 100)
    assert (ft.lr, ft.epochs, ft.optimizer) == (5e-5, 7, "sgd")
    assert ex.epochs == 3 and ex.optimizer == "adam" and ex.lr != 5e-5


def test_finetune_rate_is_smaller_below_its_small_data_size() -> None:
    """Below ``Finetune.small_data[0]`` images per class the default rate is the smaller one;
    a rate the user gives (for every phase or for finetune) always wins."""
    below, small = Finetune.small_data
    default = Finetune.defaults.lr
    assert small < default
    ft = Finetune()
    assert ft.config({}, 1000, per_class=below).lr == default
    assert ft.config({}, 1000, per_class=below - 1).lr == small
    assert ft.config({}, 1000).lr == default  # size unknown: the plain default
    assert ft.config({"lr": 1e-3}, 10, per_class=1).lr == 1e-3
    assert ft.config({"phase_options": {"finetune": {"lr": 3e-3}}}, 10, per_class=1).lr == 3e-3
    assert Extract().config({}, 10, per_class=1).lr == Extract().config({}, 10).lr


def test_fit_passes_images_per_class_to_the_phase_settings(tiny_data: Path, cache_dir: str,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    """tiny_data has 8 training images per class: the fit uses (and logs) the small-data rate."""
    with caplog.at_level(logging.INFO, logger="graftwork.phases.finetune"):
        clf = ImageClassifier(**TINY, strategy="finetune", epochs=1,
                              cache_dir=cache_dir).fit(tiny_data)
    below, small = Finetune.small_data
    assert clf.phase_configs_["finetune"].lr == small
    assert (f"finetune: learning rate {small:g} (8 training images per class; "
            f"{Finetune.defaults.lr:g} from {below})") in caplog.text


def test_weight_decay_phase_option_shrinks_the_weights(tiny_data: Path, cache_dir: str) -> None:
    """``weight_decay`` reaches the optimizer of its phase only: with a huge decay and the
    same seed, the fine-tuned weights end smaller than without it; extraction is unchanged."""
    norms = {}
    for wd in (0.0, 0.9):
        clf = ImageClassifier(**TINY, strategy="finetune", epochs=2, cache_dir=cache_dir,
                              phase_options={"finetune": {"optimizer": "adamw", "lr": 0.01,
                                                          "weight_decay": wd}}).fit(tiny_data)
        assert clf.phase_configs_["finetune"].weight_decay == wd
        assert clf.phase_configs_["extract"].weight_decay == 0.0
        norms[wd] = sum(float(p.detach().norm()) for p in clf.model_.head.parameters())
    assert norms[0.9] < norms[0.0]


def test_phase_options_reach_the_trained_phases(tiny_data: Path, cache_dir: str) -> None:
    clf = ImageClassifier(**TINY, strategy="finetune", epochs=2, cache_dir=cache_dir,
                          phase_options={"finetune": {"epochs": 1, "schedule": "none"}}
                          ).fit(tiny_data)
    assert clf.phase_configs_["extract"].epochs == 2
    assert clf.phase_configs_["finetune"].epochs == 1
    assert clf.phase_configs_["finetune"].schedule == "none"
    assert len([r for r in clf.history_ if r["phase"] == "finetune"]) == 1


@pytest.mark.parametrize("options, message", [
    ({"frozen": {"lr": 0.1}}, "which this strategy does not run"),
    ({"finetune": {"dropout": 0.1}}, "unknown setting 'dropout'"),
    ({"finetune": {"lr": -1.0}}, "lr"),
    ({"finetune": {"epochs": 0}}, "epochs"),
    ({"finetune": {"weight_decay": 2.0}}, "weight_decay"),
    ({"finetune": {"optimizer": "lion"}}, "is not one of"),
    ({"finetune": 3}, "must map settings"),
    ("finetune.lr=1", "must map phase names"),
])
def test_bad_phase_options_fail_before_training(tiny_data: Path, cache_dir: str, options: object,
                                                message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageClassifier(**TINY, strategy="finetune", cache_dir=cache_dir,
                        phase_options=options).fit(tiny_data)


def test_cli_phase_option(tiny_data: Path, tmp_path: Path) -> None:
    base = ["train", str(tiny_data), "--backbone", "test_efficientnet", "--weights", "random",
            "--image-size", "32", "--strategy", "finetune", "--epochs", "2", "-q",
            "--cache-dir", str(tmp_path / "cache")]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "ok"), "--phase-option",
                                    "finetune.epochs=1", "--phase-option", "finetune.lr=1e-4"])
    assert res.exit_code == 0, res.output
    clf = ImageClassifier.load(tmp_path / "ok")
    assert clf.phase_options == {"finetune": {"epochs": 1, "lr": 1e-4}}
    for bad, text in (("finetune.lr", "PHASE.SETTING=VALUE"), ("finetune.epochs=two",
                                                               "takes a number"),
                      ("frozen.lr=0.1", "does not run"), ("finetune.lr=-1", "lr")):
        res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "bad"),
                                        "--phase-option", bad])
        assert res.exit_code == 2 and text in res.output, (bad, res.output)
        assert "Traceback" not in res.output
        assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_unfreeze_auto_uses_the_backbones_finetune_blocks(tiny_data: Path,
                                                           cache_dir: str) -> None:
    assert get_spec("efficientnet_lite0").finetune_blocks == 4
    clf = ImageClassifier(**TINY, strategy="finetune", epochs=1, cache_dir=cache_dir)
    assert clf.unfreeze == "auto"
    clf.fit(tiny_data)
    n = get_spec(TINY["backbone"]).finetune_blocks if _registered() else 1
    assert len(clf.unfrozen_blocks_) == n
    explicit = ImageClassifier(**TINY, strategy="finetune", epochs=1, unfreeze=2,
                               cache_dir=cache_dir).fit(tiny_data)
    assert len(explicit.unfrozen_blocks_) == 2


@pytest.mark.parametrize("more_from, more, expect", [(8, "all", "all"), (9, "all", 1),
                                                     (8, 2, 2), (9, 2, 1)])
def test_unfreeze_auto_trains_more_blocks_from_enough_images_per_class(
        tiny_data: Path, cache_dir: str, caplog: pytest.LogCaptureFixture, more_from: int,
        more: int | str, expect: int | str) -> None:
    """``finetune_more_from`` images per class (tiny_data: 8) switch "auto" from the last
    ``finetune_blocks`` to the last ``finetune_more_blocks`` (or every block), and the log says
    why; one image short, they do not."""
    name = f"tiny_more_from_{more_from}_{more}"
    register_backbone(dataclasses.replace(get_spec(TINY["backbone"]), name=name,
                                          finetune_blocks=1, finetune_more_from=more_from,
                                          finetune_more_blocks=more))
    with caplog.at_level(logging.INFO, logger="graftwork.phases.finetune"):
        clf = ImageClassifier(**{**TINY, "backbone": name}, strategy="finetune", epochs=1,
                              cache_dir=cache_dir).fit(tiny_data)
    blocks = [b for b, _ in clf.model_.backbone.block_param_names()]
    assert clf.unfrozen_blocks_ == (blocks if expect == "all" else blocks[-int(expect):])
    assert all(p.requires_grad for p in clf.model_.backbone.parameters()) == (expect == "all")
    told = "every block" if more == "all" else f"{more} blocks"
    assert (f"unfreeze=auto: {len(clf.unfrozen_blocks_)} of {len(blocks)} blocks train "
            f"(8 training images per class; 1 block, {told} from {more_from})") in caplog.text


def _registered() -> bool:
    from graftwork.backbones.catalog import is_registered

    return is_registered(TINY["backbone"])
