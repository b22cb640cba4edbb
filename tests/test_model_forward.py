"""Each built-in architecture against a transcription of its published forward pass.

The transcriptions are written from the papers' descriptions with ``torch.nn.functional`` and
read only the models' weights: a bias, a padding, a stride, a missing normalisation or a
shortcut that differs from the description changes the output. Batch normalisation runs in
evaluation mode with random statistics, so that it is not the identity.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import KdcoreError
from kdcore.models.base import ModelSpec
from kdcore.models.zoo import (
    BasicBlock,
    WideBlock,
    cnn,
    mlp,
    resnet8,
    resnet20,
    resnet32,
    resnet56,
    torchvision_model,
    wrn,
)


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random normalisation statistics and affine parameters; evaluation mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def _bn(x: torch.Tensor, m: nn.Module) -> torch.Tensor:
    """Evaluation-mode batch normalisation over dimension 1."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = (m.weight / torch.sqrt(m.running_var + m.eps)).reshape(shape)
    return (x - m.running_mean.reshape(shape)) * scale + m.bias.reshape(shape)


def _linear(x: torch.Tensor, m: nn.Linear) -> torch.Tensor:
    return x @ m.weight.T + m.bias


def _conv(x: torch.Tensor, m: nn.Conv2d, stride: int = 1, padding: int = 1) -> torch.Tensor:
    """A convolution without bias, as every convolution of these papers is: 3x3 padded by one
    pixel, or a 1x1 projection."""
    assert m.weight.shape[-2:] == ((3, 3) if padding else (1, 1))
    return F.conv2d(x, m.weight, None, stride=stride, padding=padding)


def _check(model: nn.Module, x: torch.Tensor, features: torch.Tensor) -> None:
    with torch.no_grad():
        logits, got = model(x)
        torch.testing.assert_close(got, features, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits, _linear(features, model.classifier), rtol=1e-4,
                                   atol=1e-5)


def test_mlp_is_linear_batchnorm_relu_per_hidden_layer():
    model = _randomised(mlp(ModelSpec((2, 3), 4), hidden=(5, 6), dropout=0.5, batch_norm=True))
    x = torch.randn(7, 2, 3)
    linears = [m for m in model.trunk if isinstance(m, nn.Linear)]
    norms = [m for m in model.trunk if isinstance(m, nn.BatchNorm1d)]
    h = x.reshape(7, 6)
    with torch.no_grad():
        for lin, bn in zip(linears, norms, strict=True):
            h = F.relu(_bn(_linear(h, lin), bn))
    _check(model, x, h)
    plain = mlp(ModelSpec((4,), 2), hidden=(3,))
    assert [type(m) for m in plain.trunk] == [nn.Flatten, nn.Linear, nn.ReLU]  # no dropout of 0


def test_small_cnns_defaults_are_two_blocks_of_32_and_64_channels_and_128_features():
    model = cnn(ModelSpec((1, 8, 8), 10))
    assert [m.out_channels for m in model.trunk if isinstance(m, nn.Conv2d)] == [32, 64]
    assert [m.out_features for m in model.trunk if isinstance(m, nn.Linear)] == [128]


def test_small_cnn_blocks_then_a_feature_layer_on_a_non_square_image():
    model = _randomised(cnn(ModelSpec((2, 8, 12), 3), channels=(4, 5), hidden=6))
    x = torch.randn(3, 2, 8, 12)
    convs = [m for m in model.trunk if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.trunk if isinstance(m, nn.BatchNorm2d)]
    fc = [m for m in model.trunk if isinstance(m, nn.Linear)]
    h = x
    with torch.no_grad():
        for conv, bn in zip(convs, norms, strict=True):
            h = F.max_pool2d(F.relu(_bn(_conv(h, conv), bn)), 2)
        assert h.shape == (3, 5, 2, 3)
        h = F.relu(_linear(h.flatten(1), fc[0]))
    _check(model, x, h)


@pytest.mark.parametrize("rows, cols, blocks, built", [
    (2, 2, 1, True),  # halved once to 1x1
    (2, 9, 2, False),
    (9, 2, 2, False),  # the smaller side decides, whichever it is
    (4, 16, 2, True),
])
def test_cnn_refuses_blocks_that_halve_the_smaller_side_below_one_pixel(rows, cols, blocks, built):
    spec = ModelSpec((1, rows, cols), 2)
    if built:
        model = cnn(spec, channels=(3,) * blocks, hidden=4)
        assert model(torch.randn(2, 1, rows, cols))[0].shape == (2, 2)
        return
    with pytest.raises(KdcoreError) as info:
        cnn(spec, channels=(3,) * blocks)
    assert str(info.value) == (f"cnn: {blocks} blocks halve the {rows}x{cols} input below 1 "
                               f"pixel; use at most 1 entry in channels")


def _resnet_features(model: nn.Module, x: torch.Tensor, width: int) -> torch.Tensor:
    """He et al. (2016), section 4.2: a 3x3 stem; stages of 2n 3x3 layers of widths w, 2w, 4w,
    the first layer of the second and third stages striding by 2; identity shortcuts, option A
    (subsampled, new channels zero) where the width changes; global average pooling."""
    stem_conv, stem_bn = model.stem[0], model.stem[1]
    h = F.relu(_bn(_conv(x, stem_conv), stem_bn))
    channels = width
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            stride = 2 if i > 0 and j == 0 else 1
            out = F.relu(_bn(_conv(h, block.conv1, stride), block.bn1))
            out = _bn(_conv(out, block.conv2), block.bn2)
            shortcut = h[:, :, ::stride, ::stride]
            extra = out.shape[1] - channels
            shortcut = F.pad(shortcut, (0, 0, 0, 0, extra // 2, extra - extra // 2))
            h = F.relu(out + shortcut)
            channels = out.shape[1]
    return h.mean(dim=(2, 3))


@pytest.mark.parametrize("factory, width", [(resnet8, 4), (resnet20, 3)])
def test_cifar_resnet_forward_is_he_et_al_option_a(factory, width):
    torch.manual_seed(0)
    model = _randomised(factory(ModelSpec((2, 8, 8), 5), width=width))
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        _check(model, x, _resnet_features(model, x, width))


def test_a_basic_block_pads_new_channels_even_without_a_stride():
    block = _randomised(BasicBlock(3, 8, 1))
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        out = _bn(_conv(F.relu(_bn(_conv(x, block.conv1), block.bn1)), block.conv2), block.bn2)
        expected = F.relu(out + F.pad(x, (0, 0, 0, 0, 2, 3)))
        torch.testing.assert_close(block(x), expected)


def _wrn_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis (2016): a 3x3 stem of 16 channels; pre-activation blocks
    (BN-ReLU-conv3x3, BN-ReLU-conv3x3), the first of the second and third stages striding by 2;
    a 1x1 projection of the pre-activated input where the shape changes; BN, ReLU, pooling."""
    h = _conv(x, model.stem)
    channels = 16
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            stride = 2 if i > 0 and j == 0 else 1
            pre = F.relu(_bn(h, block.bn1))
            out = _conv(pre, block.conv1, stride)
            out = _conv(F.relu(_bn(out, block.bn2)), block.conv2)
            width = out.shape[1]
            if stride != 1 or width != channels:
                h = out + _conv(pre, block.projection, stride, padding=0)
            else:
                h = out + h
            channels = width
    return F.relu(_bn(h, model.head[0])).mean(dim=(2, 3))


@pytest.mark.parametrize("depth, widen", [(10, 1), (16, 2)])
def test_wide_resnet_forward_is_zagoruyko_and_komodakis(depth, widen):
    torch.manual_seed(0)
    model = _randomised(wrn(ModelSpec((3, 8, 8), 4), depth=depth, widen=widen, dropout=0.3))
    x = torch.randn(2, 3, 8, 8)
    _check(model, x, _wrn_features(model, x))


def test_a_wide_block_projects_where_only_the_stride_changes():
    block = _randomised(WideBlock(4, 4, 2, 0.0))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        pre = F.relu(_bn(x, block.bn1))
        out = _conv(F.relu(_bn(_conv(pre, block.conv1, 2), block.bn2)), block.conv2)
        torch.testing.assert_close(block(x), out + _conv(pre, block.projection, 2, padding=0))


def test_wide_resnet_dropout_acts_in_training_only_when_asked():
    x = torch.randn(4, 3, 8, 8)
    for dropout, differ in ((0.5, True), (0.0, False)):
        torch.manual_seed(0)
        model = wrn(ModelSpec((3, 8, 8), 4), depth=10, widen=1, dropout=dropout).train()
        with torch.no_grad():
            assert (not torch.equal(model(x)[0], model(x)[0])) is differ


def test_wrn_defaults_to_wrn_16_2():
    model = wrn(ModelSpec((3, 8, 8), 4))
    assert [len(s) for s in model.stages] == [2, 2, 2]
    assert [s[-1].conv2.out_channels for s in model.stages] == [32, 64, 128]


def _std_of(weight: torch.Tensor) -> float:
    return float(weight.detach().std())


def test_initialisations_follow_each_reference():
    """CIFAR ResNets: Kaiming normal over fan-in (He et al.'s); Wide ResNets: over fan-out
    (the reference code's), each convolution's; chosen where fan-in and fan-out differ."""
    torch.manual_seed(0)
    resnet = resnet56(ModelSpec((3, 32, 32), 10))
    conv = resnet.stages[2][0].conv1  # 32 -> 64 channels
    assert _std_of(conv.weight) == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.03)
    wide = wrn(ModelSpec((3, 32, 32), 10), depth=10, widen=8)
    conv = wide.stages[2][0].conv1  # 256 -> 512 channels
    assert _std_of(conv.weight) == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.03)


# -- torchvision's networks -------------------------------------------------------------------


def test_googlenet_is_built_without_auxiliary_heads_and_with_its_own_initialisation():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torchvision warns when init_weights is left unset
        model = torchvision_model(ModelSpec((3, 48, 48), 5), name="googlenet")
    assert model.trunk.aux1 is None and model.trunk.aux2 is None
    # GoogLeNet's initialisation: normal with std 0.01 (truncated at +-2, far outside)
    assert _std_of(model.trunk.conv3.conv.weight) == pytest.approx(0.01, rel=0.05)
    logits, features = model.train()(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 5) and features.shape == (2, 1024)


def test_a_trunk_given_with_auxiliary_heads_gives_its_main_output():
    from kdcore.models.zoo import TorchvisionModel

    class Aux(nn.Module):
        def forward(self, x):
            main = x.flatten(1)[:, :4]
            return (main, -main) if self.training else main

    model = TorchvisionModel(Aux(), nn.Linear(4, 2), in_channels=1)
    x = torch.randn(2, 1, 2, 2)
    features = x.expand(-1, 3, -1, -1).flatten(1)[:, :4]
    for training in (True, False):
        torch.testing.assert_close(model.train(training)(x)[1], features)


def test_torchvision_refusals_are_whole_lines():
    spec = ModelSpec((3, 32, 32), 10)
    with pytest.raises(KdcoreError) as info:
        torchvision_model(spec, name="resnet18", pretrained=True)
    assert str(info.value) == ("torchvision: pretrained weights for 'resnet18' cannot be "
                               "downloaded here (no network access); set pretrained = false, or "
                               "load weights into the model yourself")
    with pytest.raises(KdcoreError) as info:
        torchvision_model(ModelSpec((4, 32, 32), 10), name="resnet18")
    assert str(info.value) == ("torchvision: the models take 1- or 3-channel images, not 4 "
                               "channels")
    with pytest.raises(KdcoreError) as info:
        torchvision_model(spec, name="fasterrcnn_resnet50_fpn")  # a detector, not a classifier
    assert str(info.value).startswith("torchvision: unknown classification model "
                                      "'fasterrcnn_resnet50_fpn'")
    assert "; known: alexnet, convnext_base, " in str(info.value)
    with pytest.raises(KdcoreError) as info:
        torchvision_model(spec, name="squeezenet1_1")
    assert str(info.value) == ("torchvision: model 'squeezenet1_1' has no final linear layer "
                               "to replace")
    with pytest.raises(KdcoreError) as info:
        torchvision_model(ModelSpec((64,), 10), name="resnet18")
    assert str(info.value).startswith("torchvision needs image inputs (channels, height, width)")


# -- the checks every factory shares ----------------------------------------------------------


@pytest.mark.parametrize("build, message", [
    (lambda: mlp(ModelSpec((4,), 2), hidden=(0,)), "mlp: 'hidden[0]' must be positive, got 0"),
    (lambda: mlp(ModelSpec((4,), 2), dropout=1.0), "mlp: 'dropout' must be in [0, 1), got 1.0"),
    (lambda: mlp(ModelSpec((0, 4), 2)), "mlp: the inputs have shape (0, 4); every dimension "
                                        "must be at least 1"),
    (lambda: mlp(ModelSpec((4,), 0)), "mlp: the data have 0 classes; at least 1 is needed"),
    (lambda: cnn(ModelSpec((1, 8, 8), 2), channels=(0,)),
     "cnn: 'channels[0]' must be positive, got 0"),
    (lambda: cnn(ModelSpec((1, 8, 8), 2), hidden=0), "cnn: 'hidden' must be positive, got 0"),
    (lambda: cnn(ModelSpec((64,), 2)), "cnn needs image inputs (channels, height, width), but "
                                       "the data are (64,); load the images unflattened "
                                       "(data.params.flatten = false) or use the mlp "
                                       "architecture"),
    (lambda: wrn(ModelSpec((3, 8, 8), 2), depth=18),
     "wrn: 'depth' must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got 18"),
    (lambda: wrn(ModelSpec((3, 8, 8), 2), widen=0), "wrn: 'widen' must be positive, got 0"),
    (lambda: wrn(ModelSpec((3, 8, 8), 2), dropout=-0.5),
     "wrn: 'dropout' must be in [0, 1), got -0.5"),
    (lambda: wrn(ModelSpec((3, 0, 8), 2)), "wrn: the inputs have shape (3, 0, 8); every "
                                           "dimension must be at least 1"),
])
def test_a_factory_refuses_in_one_line_naming_itself(build, message):
    with pytest.raises(KdcoreError) as info:
        build()
    assert str(info.value) == message


@pytest.mark.parametrize("factory, depth", [(resnet8, 8), (resnet20, 20), (resnet32, 32),
                                            (resnet56, 56)])
def test_a_cifar_resnet_refuses_naming_its_depth(factory, depth):
    with pytest.raises(KdcoreError, match=rf"^resnet{depth} needs image inputs"):
        factory(ModelSpec((64,), 2))
    with pytest.raises(KdcoreError) as info:
        factory(ModelSpec((3, 8, 8), 2), width=0)
    assert str(info.value) == f"resnet{depth}: 'width' must be positive, got 0"


def test_one_class_is_enough():
    assert mlp(ModelSpec((4,), 1))(torch.randn(2, 4))[0].shape == (2, 1)
