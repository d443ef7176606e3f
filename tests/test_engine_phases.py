"""The frozen part of the network on an inference engine, the trainable part in torch: the same
results as the all-torch path within float tolerance."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from graftwork import ImageClassifier
from graftwork.backbones.catalog import create_backbone
from graftwork.features import FeatureCache, Normalize, bind_backbone
from graftwork.model.heads import build_head
from graftwork.model.graft import GraftModel, bn_layers, freeze_backbone
from graftwork.phases._engine import OnEngine, bind_prefix
from tests.conftest import TINY


@pytest.fixture()
def graft() -> GraftModel:
    torch.manual_seed(0)
    backbone = create_backbone(TINY["backbone"], "random")
    return GraftModel(backbone, build_head("mlp", backbone.feature_dim, 3, 16, 0.0))


def _pixels(n: int = 6) -> torch.Tensor:
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1))


def _step(module: nn.Module, x: torch.Tensor, params: list[nn.Parameter]) -> tuple[float, list]:
    module.train()
    for p in params:
        p.grad = None
    loss = nn.functional.cross_entropy(module(x), torch.tensor([0, 1, 2, 0, 1, 2]))
    loss.backward()
    return float(loss), [p.grad.clone() for p in params]


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_frozen_on_an_engine_equals_all_torch(graft: GraftModel, engine: str,
                                              tmp_path: Path) -> None:
    if engine == "onnx":
        pytest.importorskip("onnxruntime")
    freeze_backbone(graft.backbone, 0)
    pre = graft.backbone.spec.preprocessing(32)
    cache = FeatureCache(tmp_path, graft.backbone, pre)
    on_engine = OnEngine(bind_backbone(graft.backbone, pre, cache, engine, 1000), graft.head,
                         graft)
    x = _pixels()
    reference = nn.Sequential(Normalize(pre), graft)
    params = list(graft.head.parameters())
    loss_a, grads_a = _step(reference, x, params)
    loss_b, grads_b = _step(on_engine, x, params)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("unfreeze", [1, 3])
def test_finetune_split_on_an_engine_equals_all_torch(graft: GraftModel, unfreeze: int,
                                                      tmp_path: Path) -> None:
    freeze_backbone(graft.backbone, unfreeze)
    pre = graft.backbone.spec.preprocessing(32)
    prefix, suffix = graft.backbone.split(unfreeze)
    runner = bind_prefix(prefix, graft, pre, FeatureCache(tmp_path, graft.backbone, pre),
                         "torch", 10)
    on_engine = OnEngine(runner, nn.Sequential(suffix, graft.head), graft)
    reference = nn.Sequential(Normalize(pre), graft)
    params = [p for p in graft.parameters() if p.requires_grad]
    assert len(params) > len(list(graft.head.parameters()))
    bn_before = {n: m.running_mean.clone() for n, m in bn_layers(graft)}
    x = _pixels()
    graft.train()
    loss_a, grads_a = _step(reference, x, params)
    loss_b, grads_b = _step(on_engine, x, params)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-5)
    for name, m in bn_layers(graft):  # inference-mode BN: statistics never move
        assert torch.equal(m.running_mean, bn_before[name])


def test_frozen_phase_onnx_and_torch_engines_agree(tiny_data: Path, cache_dir: str) -> None:
    pytest.importorskip("onnxruntime")
    runs = [ImageClassifier(**TINY, strategy="frozen", epochs=2, engine=e, precision="fp32",
                            cache_dir=cache_dir).fit(tiny_data) for e in ("torch", "onnx")]
    for a, b in zip(runs[0].history_, runs[1].history_):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    sa, sb = (r.model_.head.state_dict() for r in runs)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-4) for k in sa)


def test_predict_on_onnx_runtime_matches_torch(tiny_data: Path, cache_dir: str,
                                               tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    clf = ImageClassifier(**TINY, strategy="finetune", epochs=1, precision="fp32",
                          cache_dir=cache_dir).fit(tiny_data)
    run = clf.save(tmp_path / "run")
    folder = tiny_data / "test"
    probs = {}
    for engine in ("torch", "onnx"):
        loaded = ImageClassifier.load(run).set_params(engine=engine, cache_dir=cache_dir)
        probs[engine] = loaded.predict_proba(folder)
    assert probs["torch"].shape == (12, 3)
    assert abs(probs["torch"] - probs["onnx"]).max() < 1e-4
    assert list((Path(cache_dir) / "models").glob("model-*.onnx"))  # kept for the next call
    # the same model evaluated on the torch reference path (normalised float batches)
    from graftwork.data.discover import Sample, list_images
    from graftwork.data.transforms import eval_transform

    samples = [Sample(str(p), 0) for c in sorted(folder.iterdir()) for p in list_images(c)]
    x = torch.stack([eval_transform(clf.preprocessing_)(__import__("PIL.Image").Image.open(
        s.path).convert("RGB")) for s in samples])
    with torch.inference_mode():
        ref = clf.model_.eval()(x).softmax(1).numpy()
    assert abs(ref - probs["onnx"]).max() < 0.02  # PIL vs uint8 resampling: a grey level or two


def test_decode_workers_wait_for_the_whole_training_step(graft: GraftModel, tmp_path: Path) -> None:
    """Gated decode workers never share the cores with a training step: the gate is closed
    through forward, backward and the optimizer step (every block unfrozen: the runner is only
    normalisation, the tail the whole network) and open while the next batch is fetched."""
    from graftwork.features.pipeline import Gate
    from graftwork.training.loop import TrainConfig, fit

    freeze_backbone(graft.backbone, "all")
    pre = graft.backbone.spec.preprocessing(32)
    prefix, suffix = graft.backbone.split("all")
    runner = bind_prefix(prefix, graft, pre, FeatureCache(tmp_path, graft.backbone, pre),
                         "torch", 10)
    gate = Gate()
    open_when: dict[str, list[bool]] = {"fetch": [], "forward": [], "backward": []}

    def record(stage: str) -> None:
        open_when[stage].append(gate.event.is_set())

    tail = nn.Sequential(suffix, graft.head)
    tail.register_forward_pre_hook(lambda *_: record("forward"))
    tail.register_full_backward_pre_hook(lambda *_: record("backward"))
    on_engine = OnEngine(runner, tail, graft, gate)

    def batches(generator: torch.Generator):  # type: ignore[no-untyped-def]
        for _ in range(3):
            record("fetch")
            yield _pixels(), torch.tensor([0, 1, 2, 0, 1, 2])

    fit(on_engine, batches, None, TrainConfig(epochs=1, lr=1e-3), steps_per_epoch=3,
        progress=False)
    assert open_when == {"fetch": [True] * 3, "forward": [False] * 3, "backward": [False] * 3}
    assert gate.event.is_set()  # open again after training
    with gate.closed():  # nested closing (the step around the runner) reopens only at the end
        with gate.closed():
            pass
        assert not gate.event.is_set()
    assert gate.event.is_set()
