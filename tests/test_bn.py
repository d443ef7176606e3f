"""The BatchNorm trap, reproduced and defused (doctor, recalibrate, graftwork's own finetune)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from graftwork import BackboneSpec, ImageClassifier, create_backbone, register_backbone
from graftwork.model.bn import diagnose, recalibrate
from graftwork.cli import main
from graftwork.data.discover import discover
from graftwork.data.transforms import eval_transform
from graftwork.model.heads import build_head
from graftwork.model.graft import GraftModel, bn_layers, freeze_backbone

SIZE = 16
TRAP_SPEC = BackboneSpec(name="trap_cnn", arch="trap_cnn", library="custom", input_size=SIZE,
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear",
                         crop_pct=1.0, blocks=(("block1", r"0\."), ("block2", r"3\.")))


def trap_trunk() -> nn.Module:
    """conv-BN-ReLU x2 with Keras' momentum 0.99 (PyTorch 0.01) and fresh 0/1 statistics."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.01), nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.01)),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1))


register_backbone(TRAP_SPEC, trap_trunk)


@pytest.fixture()
def three_images(tmp_path: Path) -> Path:
    """3 classes x 1 image; val/ holds the same 3 images ("predicting the same images")."""
    rng = np.random.default_rng(0)
    colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]
    patterns = [np.clip(np.array(c) + rng.normal(0, 20, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
                for c in colours]
    for split in ("train", "val"):
        for c, arr in enumerate(patterns):
            folder = tmp_path / "three" / split / f"c{c}"
            folder.mkdir(parents=True)
            Image.fromarray(arr).save(folder / "img.png")
    return tmp_path / "three"


def _batches(data: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    splits = discover(data, 0.0, 0.0)
    tf = eval_transform(TRAP_SPEC.preprocessing())
    x = torch.stack([tf(Image.open(s.path).convert("RGB")) for s in splits.train])
    return [(x, torch.tensor([s.label for s in splits.train]))]


def _trained_trap(data: Path) -> GraftModel:
    """Plain gradient steps, everything in training mode, 5 epochs: the Keras tutorial trap."""
    backbone = create_backbone("trap_cnn", "random")
    model = GraftModel(backbone, build_head("linear", backbone.feature_dim, 3, dropout=0.0))
    model.train_bn = True  # plain PyTorch/Keras behaviour: BN learns batch statistics
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (x, y), = _batches(data)
    model.train()
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _acc(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], train: bool) -> float:
    (x, y), = batches
    model.train(train)
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_trap_reproduced_then_doctor_and_recalibrate_fix_it(three_images: Path) -> None:
    model = _trained_trap(three_images)
    batches = _batches(three_images)
    assert _acc(model, batches, train=True) == 1.0
    assert _acc(model, batches, train=False) == pytest.approx(1 / 3)

    report = diagnose(model, batches)
    assert not report.healthy
    assert report.train_mode["accuracy"] == 1.0
    assert report.eval_mode["accuracy"] == pytest.approx(1 / 3)
    assert report.gap == pytest.approx(2 / 3)
    assert "BatchNorm" in report.verdict and "recalibrate" in report.fix
    assert report.layers and report.layers[0]["name"].startswith("backbone.trunk")

    buffers_before = {n: m.running_mean.clone() for n, m in bn_layers(model)}
    recalibrate(model, batches)
    assert any(not torch.equal(buffers_before[n], m.running_mean) for n, m in bn_layers(model))
    assert _acc(model, batches, train=False) == 1.0
    assert diagnose(model, batches).healthy


def test_doctor_and_recalibrate_commands(three_images: Path, tmp_path: Path) -> None:
    model = _trained_trap(three_images)
    run = ImageClassifier.from_model(model, ["c0", "c1", "c2"],
                                     TRAP_SPEC.preprocessing()).save(tmp_path / "run")
    runner = CliRunner()
    assert runner.invoke(main, ["report", str(run)]).exit_code == 0
    res = runner.invoke(main, ["doctor", str(run), str(three_images), "--json"])
    assert res.exit_code == 0, res.output
    assert "BatchNorm running statistics do not match" in (run / "report.html").read_text()
    import json

    report = json.loads(res.output)
    assert report["gap"] == pytest.approx(2 / 3) and not report["healthy"]
    res = runner.invoke(main, ["doctor", str(run), str(three_images)])
    assert "verdict: BatchNorm running statistics do not match" in res.output
    assert "graft recalibrate" in res.output
    res = runner.invoke(main, ["recalibrate", str(run), str(three_images)])
    assert res.exit_code == 0, res.output
    assert "0.3333 -> 1.0000" in res.output
    res = runner.invoke(main, ["doctor", str(run), str(three_images), "--json"])
    report = json.loads(res.output)
    assert report["healthy"] and report["eval_mode"]["accuracy"] == 1.0
    assert ImageClassifier.load(run).evaluate(three_images / "val")["accuracy"] == 1.0


def test_graftwork_finetune_of_trap_model_predicts_what_it_trained(three_images: Path,
                                                                  tmp_path: Path) -> None:
    trained = _trained_trap(three_images)
    weights = tmp_path / "trap.safetensors"
    save_file({k: v.contiguous() for k, v in trained.backbone.trunk.state_dict().items()},
              str(weights))
    clf = ImageClassifier(backbone="trap_cnn", weights=str(weights), strategy="finetune",
                          cache_dir=str(tmp_path / "cache"), progress=False, num_workers=0)
    clf.fit(three_images)
    assert [p["phase"] for p in clf.phases_] == ["extract", "finetune"]
    assert clf.metrics_["val"]["accuracy"] == 1.0  # eval mode, the same 3 images
    (x, _), = _batches(three_images)
    model = clf.model_
    model.train()  # graftwork's training mode: BN stays in inference mode
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()  # remove the head's deliberate noise, keep everything else as in training
    with torch.no_grad():
        train_logits = model(x)
        model.eval()
        eval_logits = model(x)
    assert torch.allclose(train_logits, eval_logits)
    assert clf.metrics_["bn"]["recalibrated"] is False  # nothing could change the statistics
    assert diagnose(model, _batches(three_images)).healthy


def test_frozen_bn_stays_in_inference_mode_under_train() -> None:
    backbone = create_backbone("trap_cnn", "random")
    model = GraftModel(backbone, nn.Linear(backbone.feature_dim, 3))
    freeze_backbone(backbone, 1)
    model.train()
    assert model.bn_in_train_mode() == []  # default: unfrozen BN in inference mode too
    model.train_bn = True
    model.train()
    assert model.bn_in_train_mode() == ["backbone.trunk.3.1"]  # only the unfrozen block's BN
    freeze_backbone(backbone, 0)
    model.train()
    assert model.bn_in_train_mode() == []


def test_train_bn_finetune_recalibrates_and_records_it(three_images: Path, tmp_path: Path) -> None:
    clf = ImageClassifier(backbone="trap_cnn", weights="random", strategy="finetune",
                          unfreeze="all", train_bn=True, epochs=3,
                          cache_dir=str(tmp_path / "cache"), progress=False, num_workers=0)
    clf.fit(three_images)
    bn = clf.metrics_["bn"]
    assert bn["recalibrated"] is True and bn["layers"] == 2
    assert set(bn["val_before"]) >= {"accuracy", "loss"} and "accuracy" in bn["val_after"]
    assert clf.config()["bn_policy"]["train_bn"] is True
    report = diagnose(clf.model_, _batches(three_images))
    assert report.gap <= 0.05  # after recalibration batch and running statistics agree


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{n}.{b}": getattr(m, b).clone() for n, m in bn_layers(module)
            for b in ("running_mean", "running_var")}


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["frozen", "finetune"])
def test_policy_frozen_bn_buffers_bit_identical_on_real_backbone(strategy: str,
                                                                 tmp_path: Path) -> None:
    """Policy 1 on efficientnet_lite0 with its real offline weights (a handful of images)."""
    from tests.conftest import make_image_folder

    data = make_image_folder(tmp_path / "d", classes=2, counts={"train": 3, "val": 1}, size=24)
    pretrained = _bn_buffers(create_backbone("efficientnet_lite0").trunk)
    clf = ImageClassifier(backbone="efficientnet_lite0", strategy=strategy, image_size=64,
                          epochs=1, batch_size=4, cache_dir=str(tmp_path / "c"),
                          progress=False, num_workers=0).fit(data)
    after = _bn_buffers(clf.model_.backbone.trunk)
    assert clf.pretrained_weights_.source == "package"
    assert pretrained.keys() == after.keys() and len(after) > 40
    assert all(torch.equal(pretrained[k], after[k]) for k in pretrained)
    if strategy == "finetune":  # the unfrozen block's weights did train
        assert clf.unfrozen_blocks_ == ["blocks.4", "blocks.5", "blocks.6", "head"]  # "auto"
        assert clf.trainable_["finetune"]["trainable_params"] > clf.trainable_["extract"]["trainable_params"]
