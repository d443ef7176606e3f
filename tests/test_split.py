"""Backbone.split: suffix(prefix(x)) == backbone(x), parameters shared, gradients only in the tail."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from graftwork.backbones.network import Backbone
from graftwork.backbones.spec import BackboneSpec, WeightsInfo
from graftwork.backbones.catalog import _vgg_blocks, create_backbone
from graftwork.backbones.split import sequential_atoms
from graftwork.model.graft import freeze_backbone

SIZE = 32


def _tiny_vgg() -> Backbone:
    """A small timm VGG (two convs per block, Keras-style block names) built directly."""
    from timm.models.vgg import VGG

    cfg = [8, 8, "M", 16, 16, "M", 16, 16, "M", 32, 32, "M", 32, 32, "M"]
    trunk = VGG(cfg, num_classes=0, mlp_ratio=0.01)
    trunk.pre_logits = nn.Identity()
    spec = BackboneSpec(name="tiny_vgg", arch="vgg", blocks=_vgg_blocks((2, 2, 2, 2, 2)))
    return Backbone(trunk, spec, WeightsInfo("random", "", ""))


def _make(name: str) -> Backbone:
    if name == "tiny_vgg":
        return _tiny_vgg()
    return create_backbone(name, weights="random")


# test_efficientnet (timm EfficientNet, group_matcher blocks), efficientnet_lite0 (registered
# blocks), mobilenetv3 (timm; its conv_head lies after pooling), torchvision mobilenet_v2
# (a Sequential trunk), timm resnet18 (group_matcher), a tiny timm VGG (Keras block names).
FAMILIES = ["test_efficientnet", "efficientnet_lite0", "mobilenetv3_small_050", "mobilenet_v2",
            "resnet18", "tiny_vgg"]


@pytest.fixture(scope="module", params=FAMILIES)
def backbone(request: pytest.FixtureRequest) -> Backbone:
    torch.manual_seed(0)
    bb = _make(request.param).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a skipped BN would show
        for m in bb.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return bb


def _param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_split_equals_backbone_for_every_n(backbone: Backbone) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    blocks = backbone.block_param_names()
    with torch.no_grad():
        want = backbone(x)
        for n in [*range(len(blocks) + 1), "all"]:
            prefix, suffix = backbone.split(n)
            got = suffix(prefix(x))
            assert got.shape == want.shape
            assert torch.equal(got, want), (n, float((got - want).abs().max()))


def test_suffix_holds_exactly_the_last_blocks(backbone: Backbone) -> None:
    named = dict(backbone.named_parameters())
    blocks = backbone.block_param_names()
    all_ids = _param_ids(backbone)
    path = {id(p) for _, m in sequential_atoms(backbone.trunk) for p in m.parameters()}
    for n in range(len(blocks) + 1):
        prefix, suffix = backbone.split(n)
        assert _param_ids(prefix) | _param_ids(suffix) <= all_ids  # shared, never copied
        assert not _param_ids(prefix) & _param_ids(suffix)
        tail = {id(named[p]) for _, names in blocks[len(blocks) - n:] for p in names}
        if n == 0:
            assert not _param_ids(suffix)
            continue
        # exactly the last n blocks' parameters that the feature path uses (mobilenetv3's
        # conv_head group comes after pooling: the pooled features never use it)
        assert _param_ids(suffix) == tail & path
    _, whole = backbone.split("all")
    assert whole is backbone


def test_gradient_reaches_only_unfrozen_blocks(backbone: Backbone) -> None:
    n = min(2, len(backbone.block_param_names()))
    trainable = freeze_backbone(backbone, n)
    assert trainable
    try:
        prefix, suffix = backbone.split(n)
        x = torch.randn(2, 3, SIZE, SIZE)
        with torch.no_grad():
            maps = prefix(x)
        assert not maps.requires_grad
        suffix(maps).sum().backward()
        with_grad = {id(p) for p in backbone.parameters() if p.grad is not None}
        assert with_grad == _param_ids(suffix)
        requires = {id(p) for p in backbone.parameters() if p.requires_grad}
        assert _param_ids(suffix) <= requires
    finally:
        freeze_backbone(backbone, "all")
        backbone.zero_grad(set_to_none=True)


def test_zero_and_all_are_trivial() -> None:
    bb = create_backbone("test_efficientnet", weights="random")
    prefix, suffix = bb.split(0)
    assert prefix is bb and isinstance(suffix, nn.Identity)
    prefix, suffix = bb.split("all")
    assert isinstance(prefix, nn.Identity) and suffix is bb
    with pytest.raises(ValueError):
        bb.split(len(bb.block_param_names()) + 1)
    with pytest.raises(ValueError):
        bb.split(-1)


def test_unknown_architecture_not_implemented() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    spec = BackboneSpec(name="odd", arch="odd", library="custom", input_size=8,
                        blocks=(("all", r""),))
    bb = Backbone(Odd(), spec, WeightsInfo("random", "", ""))
    with pytest.raises(NotImplementedError):
        bb.split(1)


def test_parts_keep_backbone_mode_and_export_to_onnx(tmp_path) -> None:
    """Exporting the prefix (mode saved and restored) must not put shared BN layers in training."""
    pytest.importorskip("onnxruntime")
    from graftwork.features import export_onnx, ort_session
    from graftwork.model.graft import bn_layers

    torch.manual_seed(0)
    bb = create_backbone("test_efficientnet", weights="random").eval()
    prefix, suffix = bb.split(2)
    assert not prefix.training and not suffix.training
    x = torch.randn(3, 3, SIZE, SIZE)
    export_onnx(prefix, x[:1], tmp_path / "prefix.onnx")
    assert not any(bn.training for _, bn in bn_layers(bb))
    maps = ort_session(tmp_path / "prefix.onnx").run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(maps), prefix(x), atol=1e-4)
        assert torch.allclose(suffix(torch.from_numpy(maps)), bb(x), atol=1e-4)
