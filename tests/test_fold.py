"""Inference-mode BatchNorm folded into convolutions while training (graftwork.fold): the same
outputs, gradients and state_dict, and the original layers back afterwards."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from graftwork import ImageClassifier
from graftwork.backbones.catalog import create_backbone
from graftwork.model.fold import foldable_pairs, folded_batchnorm
from graftwork.model.heads import build_head
from graftwork.model.graft import GraftModel, bn_layers, freeze_backbone
from tests.conftest import TINY


def _graft(train_bn: bool = False) -> GraftModel:
    torch.manual_seed(0)
    backbone = create_backbone(TINY["backbone"], "random")
    for _, bn in bn_layers(backbone):  # statistics far from 0/1, so a wrong fold shows
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return GraftModel(backbone, build_head("mlp", backbone.feature_dim, 3, 16, 0.0), train_bn)


def _loss_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def test_folded_training_step_equals_the_original() -> None:
    model = _graft()
    freeze_backbone(model.backbone, "all")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss_a, grads_a = _loss_and_grads(model, x)
    keys = list(model.state_dict())
    types = [type(m) for m in model.modules()]
    with folded_batchnorm(model, x[:2]) as folded:
        assert folded == len(bn_layers(_graft()))  # every BN of this net follows a conv
        assert bn_layers(model) == []
        assert list(model.state_dict()) == keys  # checkpoints and best-epoch copies still fit
        loss_b, grads_b = _loss_and_grads(model, x)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert any(".bn" in n for n in grads_a)  # gamma/beta train through the folded weights
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5), name
    assert [type(m) for m in model.modules()] == types  # restored


def test_parameters_trained_while_folded_are_the_models() -> None:
    model = _graft()
    freeze_backbone(model.backbone, "all")
    x = torch.randn(4, 3, 32, 32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with folded_batchnorm(model, x[:2]):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        _loss_and_grads(model, x)
        opt.step()
    bn_weight = next(n for n in before if ".bn" in n and n.endswith("weight"))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert bn_weight in changed and len(changed) == len(before)


def test_train_mode_batchnorm_is_not_folded() -> None:
    model = _graft(train_bn=True)
    freeze_backbone(model.backbone, "all")  # unfrozen BN with train_bn: batch statistics
    assert foldable_pairs(model, torch.randn(2, 3, 32, 32)) == []
    freeze_backbone(model.backbone, 0)  # frozen BN always stays in inference mode
    assert len(foldable_pairs(model, torch.randn(2, 3, 32, 32))) == len(bn_layers(model))


def test_looking_for_pairs_leaves_running_statistics_alone() -> None:
    """BN layers in training mode (train_bn) see the example batch: their running statistics
    and batch counts must not move (bench/fold_probe.py once showed a plain module drift)."""
    model = _graft(train_bn=True)
    freeze_backbone(model.backbone, "all")
    before = {n: b.clone() for n, b in model.named_buffers()}
    with folded_batchnorm(model, torch.randn(2, 3, 32, 32) * 5 + 3) as folded:
        assert folded == 0
    after = dict(model.named_buffers())
    assert before.keys() == after.keys()
    for name, buffer in before.items():
        assert torch.equal(buffer, after[name]), name


class _Shared(nn.Module):
    """A convolution whose output feeds its BN and also the sum: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4).eval()
        self.bn.running_mean.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y

    def train(self, mode: bool = True) -> _Shared:
        super().train(mode)
        self.bn.eval()
        return self


def test_a_fold_that_changes_the_output_is_undone(caplog: pytest.LogCaptureFixture) -> None:
    model = _Shared()
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    with caplog.at_level(logging.INFO, logger="graftwork.model.fold"), \
            folded_batchnorm(model, x) as folded:
        assert folded == 0 and isinstance(model.bn, nn.BatchNorm2d)
        assert torch.allclose(model(x), want)
    assert "differs" in caplog.text


def test_finetune_trains_folded_and_keeps_its_batchnorm(tiny_data: Path, cache_dir: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="graftwork.model.fold"):
        clf = ImageClassifier(**TINY, strategy="finetune", unfreeze="all", epochs=1,
                              cache_dir=cache_dir).fit(tiny_data)
    assert "BatchNorm folded into" in caplog.text
    assert bn_layers(clf.model_)  # the fitted model has its BN layers back
    assert clf.score(tiny_data / "test") >= 0


class _ConvBN(nn.Module):
    """A convolution then its inference-mode BN (+ activation): foldable."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def train(self, mode: bool = True) -> _ConvBN:
        super().train(mode)
        self.bn.eval()
        return self


def test_timm_same_padding_convolutions_fold() -> None:
    from timm.layers import BatchNormAct2d
    from timm.layers.conv2d_same import Conv2dSame

    model = _ConvBN(Conv2dSame(3, 4, 3, stride=2), BatchNormAct2d(4, act_layer=nn.ReLU6))
    x = torch.randn(2, 3, 9, 10)  # odd and even sizes: asymmetric "same" padding
    want = model.train()(x)
    with folded_batchnorm(model, x) as folded:
        assert folded == 1 and not bn_layers(model)
        assert torch.allclose(model(x), want, atol=1e-5)
