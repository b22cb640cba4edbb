"""Architectures: the (logits, features) contract, gradients, and published structure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import KdcoreError
from kdcore.models.base import KDModel, ModelSpec
from kdcore.models.zoo import (
    MODELS,
    BasicBlock,
    CifarResNet,
    WideBlock,
    WideResNet,
    ZeroPadShortcut,
    cnn,
    mlp,
    resnet20,
    resnet32,
    resnet56,
    torchvision_model,
    wrn,
)

CASES = [
    ("mlp", (64,), {}),
    ("mlp", (1, 8, 8), {"hidden": (32,), "dropout": 0.1, "batch_norm": True}),
    ("cnn", (1, 8, 8), {}),
    ("resnet8", (3, 16, 16), {}),
    ("resnet20", (1, 8, 8), {"width": 4}),
    ("resnet32", (3, 8, 8), {"width": 4}),
    ("resnet56", (3, 8, 8), {"width": 4}),
    ("wrn", (3, 16, 16), {"depth": 10, "widen": 1, "dropout": 0.2}),
    ("torchvision", (3, 32, 32), {"name": "resnet18"}),
    ("torchvision", (1, 32, 32), {"name": "mobilenet_v3_small"}),
]


def test_registry_names() -> None:
    expected = {"mlp", "cnn", "resnet8", "resnet20", "resnet32", "resnet56", "wrn"}
    assert set(MODELS) == expected | {"torchvision"}


@pytest.mark.parametrize(("name", "shape", "params"), CASES)
def test_logits_features_and_gradients(name: str, shape: tuple[int, ...], params: dict) -> None:
    torch.manual_seed(0)
    model = MODELS[name](ModelSpec(shape, 7), **params)
    assert isinstance(model, KDModel) and isinstance(model.classifier, nn.Linear)
    x = torch.randn(4, *shape)
    logits, features = model(x)
    assert logits.shape == (4, 7)
    assert features.shape == (4, model.feature_dim)
    assert model.feature_dim == model.classifier.in_features
    # The features are exactly what the classifier sees.
    assert torch.allclose(model.classifier(features), logits)
    F.cross_entropy(logits, torch.arange(4) % 7).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters())


def _weighted_layers(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


@pytest.mark.parametrize("depth", [8, 20, 32, 56])
def test_cifar_resnet_structure(depth: int) -> None:
    model = MODELS[f"resnet{depth}"](ModelSpec((3, 32, 32), 10))
    assert isinstance(model, CifarResNet)
    stages = list(model.stages)
    assert len(stages) == 3
    assert all(len(stage) == (depth - 2) // 6 for stage in stages)
    assert [stage[-1].conv2.out_channels for stage in stages] == [16, 32, 64]
    assert model.feature_dim == 64
    # Option-A shortcuts add no layer: the depth counts convolutions plus the classifier.
    assert _weighted_layers(model) == depth
    shortcuts = [b.shortcut for stage in stages for b in stage if isinstance(b, BasicBlock)]
    assert sum(isinstance(s, ZeroPadShortcut) for s in shortcuts) == 2
    assert all(not list(s.parameters()) for s in shortcuts)


@pytest.mark.parametrize(
    ("factory", "published_millions"), [(resnet20, 0.27), (resnet32, 0.46), (resnet56, 0.85)]
)
def test_cifar_resnet_sizes_match_he_et_al(factory, published_millions: float) -> None:
    # Table 6 of "Deep Residual Learning for Image Recognition" (CIFAR-10).
    params = sum(p.numel() for p in factory(ModelSpec((3, 32, 32), 10)).parameters())
    assert round(params / 1e6, 2) == published_millions


def test_zero_pad_shortcut_subsamples_and_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ZeroPadShortcut(stride=2, extra_channels=16)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_wide_resnet_structure_and_size() -> None:
    model = wrn(ModelSpec((3, 32, 32), 10), depth=16, widen=4)
    assert isinstance(model, WideResNet)
    assert all(len(stage) == (16 - 4) // 6 for stage in model.stages)
    widths = [stage[-1].conv2.out_channels for stage in model.stages]
    assert widths == [64, 128, 256] and model.feature_dim == 256
    assert all(isinstance(block, WideBlock) for stage in model.stages for block in stage)
    # WRN-16-4 has 2.7M parameters (Zagoruyko & Komodakis, 2016, Table 4).
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 2.7


def test_mlp_layers() -> None:
    model = mlp(ModelSpec((2, 3), 4), hidden=(5, 6), dropout=0.5, batch_norm=True)
    kinds = [type(m) for m in model.trunk]
    assert kinds.count(nn.Linear) == 2 and kinds.count(nn.BatchNorm1d) == 2
    assert kinds.count(nn.Dropout) == 2 and model.feature_dim == 6
    linear = mlp(ModelSpec((2, 3), 4), hidden=())
    x = torch.randn(3, 2, 3)
    assert torch.equal(linear(x)[1], x.reshape(3, 6))  # no hidden layer: the raw input


def test_image_models_refuse_flat_inputs() -> None:
    for name in ("cnn", "resnet20", "wrn"):
        with pytest.raises(KdcoreError, match="needs image inputs"):
            MODELS[name](ModelSpec((64,), 10))


def test_bad_parameters() -> None:
    with pytest.raises(KdcoreError, match="halve the 8x8 input below 1 pixel"):
        cnn(ModelSpec((1, 8, 8), 10), channels=(8, 8, 8, 8))
    # what fits is said in words that can be done: no block at all was "at most 0 entries"
    for (h, w), channels, said in (
            ((8, 8), (8, 8, 8, 8), "4 blocks halve the 8x8 input below 1 pixel; use at most 3 "
                                   "entries in channels"),
            ((16, 3), (8, 8), "2 blocks halve the 16x3 input below 1 pixel; use at most 1 entry "
                              "in channels"),
            ((1, 1), (8,), "1 block halves the 1x1 input below 1 pixel; no block fits an input "
                           "1 pixel wide or high: use the mlp or a resnet architecture, or "
                           "larger inputs")):
        with pytest.raises(KdcoreError) as info:
            cnn(ModelSpec((1, h, w), 10), channels=channels)
        assert str(info.value) == f"cnn: {said}"
    for h, w, most in ((2, 2, 1), (3, 9, 1), (4, 5, 2), (7, 7, 2), (8, 8, 3), (32, 32, 5)):
        logits, _ = cnn(ModelSpec((1, h, w), 10), channels=(4,) * most)(torch.zeros(2, 1, h, w))
        assert logits.shape == (2, 10)  # as many blocks as said fit, and run
        with pytest.raises(KdcoreError, match=f"at most {most} entr"):
            cnn(ModelSpec((1, h, w), 10), channels=(4,) * (most + 1))
    with pytest.raises(KdcoreError, match="6n \\+ 4"):
        wrn(ModelSpec((3, 8, 8), 10), depth=18)
    with pytest.raises(KdcoreError, match="dropout"):
        mlp(ModelSpec((4,), 2), dropout=1.0)


def test_torchvision_errors() -> None:
    spec = ModelSpec((3, 32, 32), 10)
    with pytest.raises(KdcoreError, match="cannot be downloaded"):
        torchvision_model(spec, name="resnet18", pretrained=True)
    with pytest.raises(KdcoreError, match="did you mean 'resnet18'"):
        torchvision_model(spec, name="resnet-18")
    with pytest.raises(KdcoreError, match="1- or 3-channel"):
        torchvision_model(ModelSpec((4, 32, 32), 10), name="resnet18")


@pytest.mark.slow
def test_a_torchvision_mnasnet_trains_keeps_its_best_weights_and_starts_from_them(tmp_path) -> None:
    """Its weights carry format versions, which kept weights lost: the run stopped at its
    best-validation restore ("version should be set to 1 or 2 instead of None")."""
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import component, stage, tiny_recipe, write_recipe

    data = tiny_recipe(stage("s", 2, ["student"], component("ce"), keep="best_val"),
                       models={"student": {"arch": "torchvision",
                                           "params": {"name": "mnasnet0_5"}}},
                       train_subset=64, data={"params": {"flatten": False}})
    path = write_recipe(data, tmp_path / "mnasnet.toml")
    out = tmp_path / "run"
    first = CliRunner().invoke(main, ["run", str(path), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "restored to its best-validation epoch" in first.output
    # its saved weights start another run (a weights file had lost the versions too)
    again = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "again"),
                                      "--set", f"models.student.checkpoint='{out}/models/"
                                               "student.pt'"])
    assert again.exit_code == 0, again.output
