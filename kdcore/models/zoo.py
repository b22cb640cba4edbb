"""Built-in architectures: MLPs and small CNNs for CPUs, CIFAR ResNets, Wide ResNets, and
torchvision's classifiers for GPUs.

Every architecture is a :class:`KDModel` whose ``forward`` returns ``(logits, features)`` with
``features`` the input of its ``classifier`` (an ``nn.Linear``), and every factory is
``fn(spec, *, params) -> KDModel`` with keyword-only, annotated parameters that a recipe sets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import KdcoreError, did_you_mean
from kdcore.models.base import KDModel, ModelSpec

# -- multilayer perceptron ----------------------------------------------------------------------


class MLP(KDModel):
    """Fully connected layers on the flattened input; the last hidden layer is the feature."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...],
        dropout: float,
        batch_norm: bool,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for units in hidden:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        self.trunk = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def mlp(
    spec: ModelSpec,
    *,
    hidden: tuple[int, ...] = (256, 128),
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> KDModel:
    """A multilayer perceptron: ``Linear -> [BatchNorm] -> ReLU -> [Dropout]`` per hidden layer.

    Args:
        spec: the input shape (flattened here) and the number of classes.
        hidden: the width of each hidden layer; empty gives a linear model on the raw input.
        dropout: dropout probability after each hidden layer (0: none).
        batch_norm: add batch normalisation before each ReLU.

    Returns:
        The model; its feature is the output of the last hidden layer.
    """
    if any(units < 1 for units in hidden):
        raise KdcoreError(f"mlp: every hidden width must be at least 1, got {list(hidden)}")
    if not 0.0 <= dropout < 1.0:
        raise KdcoreError(f"mlp: dropout must be in [0, 1), not {dropout}")
    in_features = 1
    for dim in spec.input_shape:
        in_features *= dim
    return MLP(in_features, spec.num_classes, tuple(hidden), dropout, batch_norm)


# -- small CNN ----------------------------------------------------------------------------------


class SmallCNN(KDModel):
    """``conv3x3 -> BN -> ReLU -> maxpool`` blocks, then a fully connected feature layer."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, ...],
        hidden: int,
    ):
        super().__init__()
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
            height, width = height // 2, width // 2
        # Flattening (rather than global pooling) keeps where a stroke is, which matters on
        # the small greyscale images this network is meant for.
        self.trunk = nn.Sequential(
            *blocks,
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


def cnn(spec: ModelSpec, *, channels: tuple[int, ...] = (32, 64), hidden: int = 128) -> KDModel:
    """A small CNN for image inputs, sized for CPU training on digits or Fashion-MNIST.

    Args:
        spec: an image input shape ``(C, H, W)`` and the number of classes.
        channels: output channels of each conv block; each block halves the resolution.
        hidden: the width of the feature layer.

    Returns:
        The model; its feature is the ReLU output of the fully connected layer.
    """
    shape = _image_shape(spec, "cnn")
    if not channels or any(c < 1 for c in channels) or hidden < 1:
        raise KdcoreError(
            f"cnn: channels must be a non-empty list of positive widths and hidden positive; "
            f"got channels={list(channels)}, hidden={hidden}"
        )
    smallest = min(shape[1:])
    if smallest >> len(channels) < 1:
        raise KdcoreError(
            f"cnn: {len(channels)} blocks halve the {shape[1]}x{shape[2]} input below 1 pixel; "
            f"use at most {smallest.bit_length() - 1} entries in channels"
        )
    return SmallCNN(shape, spec.num_classes, tuple(channels), hidden)


# -- CIFAR ResNets (He et al., 2016) -------------------------------------------------------------


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by striding and pad the new channels with zeros.

    It adds no parameter, which is how the CIFAR ResNets of He et al. keep their published
    sizes (0.27M parameters for ResNet-20).
    """

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        before = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or zero-padded) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ZeroPadShortcut(stride, out_channels - in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(KDModel):
    """The 6n+2-layer CIFAR ResNet: a 3x3 stem, three stages of ``n`` basic blocks with widths
    ``w, 2w, 4w`` (the last two halving the resolution), global average pooling, a linear layer.

    Attributes:
        stages: the three stages, each an ``nn.Sequential`` of :class:`BasicBlock`.
    """

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = width
        for i, stage_width in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, stage_width, stride if j == 0 else 1))
                channels = stage_width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)
        # Kaiming-normal weights, as in the reference CIFAR ResNet implementations.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


def _cifar_resnet(spec: ModelSpec, depth: int, width: int) -> KDModel:
    shape = _image_shape(spec, f"resnet{depth}")
    if width < 1:
        raise KdcoreError(f"resnet{depth}: width must be at least 1, not {width}")
    return CifarResNet(shape[0], spec.num_classes, (depth - 2) // 6, width)


_RESNET_DOC = """The CIFAR ResNet-{depth} of He et al. (2016), {n} basic block(s) per stage.

    Option-A (zero-padding, parameter-free) shortcuts and Kaiming-normal initialisation, as in
    the paper and the MLC / RepDistiller code.

    Args:
        spec: an image input shape ``(C, H, W)`` and the number of classes.
        width: channels of the first stage (16 in the paper; 64 gives the "x4" variants).

    Returns:
        The model; its feature is the globally average-pooled output of the last stage
        (``4 * width`` values).
    """


def resnet8(spec: ModelSpec, *, width: int = 16) -> KDModel:
    return _cifar_resnet(spec, 8, width)


def resnet20(spec: ModelSpec, *, width: int = 16) -> KDModel:
    return _cifar_resnet(spec, 20, width)


def resnet32(spec: ModelSpec, *, width: int = 16) -> KDModel:
    return _cifar_resnet(spec, 32, width)


def resnet56(spec: ModelSpec, *, width: int = 16) -> KDModel:
    return _cifar_resnet(spec, 56, width)


# The four factories differ only in depth; one docstring template keeps them in step.
for _depth, _factory in ((8, resnet8), (20, resnet20), (32, resnet32), (56, resnet56)):
    _factory.__doc__ = _RESNET_DOC.format(depth=_depth, n=(_depth - 2) // 6)


# -- Wide ResNet (Zagoruyko & Komodakis, 2016) ----------------------------------------------------


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3, plus the shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.projection: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.projection = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        # A projection shortcut takes the pre-activated input, as in the reference code.
        return out + (self.projection(pre) if self.projection is not None else x)


class WideResNet(KDModel):
    """WRN-depth-widen: a 3x3 stem with 16 channels, three stages of ``(depth - 4) / 6`` wide
    blocks with ``16k, 32k, 64k`` channels, then BN, ReLU and global average pooling.

    Attributes:
        stages: the three stages, each an ``nn.Sequential`` of :class:`WideBlock`.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, widen: int, dropout: float):
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages = []
        channels = 16
        for i, stage_width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(WideBlock(channels, stage_width, stride if j == 0 else 1, dropout))
                channels = stage_width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def wrn(spec: ModelSpec, *, depth: int = 16, widen: int = 2, dropout: float = 0.0) -> KDModel:
    """A Wide ResNet (Zagoruyko & Komodakis, 2016), WRN-``depth``-``widen``.

    Args:
        spec: an image input shape ``(C, H, W)`` and the number of classes.
        depth: total depth, ``6n + 4`` (16, 22, 28, 40, ...).
        widen: the widening factor k.
        dropout: dropout probability between the two convolutions of each block.

    Returns:
        The model; its feature is the output of the final BN, ReLU and global average pooling
        (``64 * widen`` values).
    """
    shape = _image_shape(spec, "wrn")
    if depth < 10 or (depth - 4) % 6:
        raise KdcoreError(
            f"wrn: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), not {depth}"
        )
    if widen < 1:
        raise KdcoreError(f"wrn: widen must be at least 1, not {widen}")
    if not 0.0 <= dropout < 1.0:
        raise KdcoreError(f"wrn: dropout must be in [0, 1), not {dropout}")
    return WideResNet(shape[0], spec.num_classes, depth, widen, dropout)


# -- torchvision classifiers --------------------------------------------------------------------


class TorchvisionModel(KDModel):
    """A torchvision classifier whose final linear layer became ``classifier``.

    torchvision's networks expect three channels; single-channel inputs are repeated to three.
    """

    def __init__(self, trunk: nn.Module, classifier: nn.Linear, in_channels: int):
        super().__init__()
        self.trunk = trunk
        self.classifier = classifier
        self.in_channels = in_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.trunk(x)
        # GoogLeNet and Inception v3 return (logits, aux...) tuples in training mode.
        return out[0] if isinstance(out, tuple) else out


def torchvision_model(spec: ModelSpec, *, name: str, pretrained: bool = False) -> KDModel:
    """A torchvision classification network (``resnet18``, ``mobilenet_v3_small``, ...).

    The network's final linear layer is replaced by ``nn.Identity`` and a new ``classifier``
    with ``spec.num_classes`` outputs takes its input, which is the feature.

    Args:
        spec: an image input shape ``(C, H, W)`` with 1 or 3 channels, and the number of classes.
        name: a torchvision classification model name.
        pretrained: must stay false: pretrained weights would have to be downloaded, and
            kdcore's machines have no network access.

    Returns:
        The randomly initialised model.
    """
    import torchvision.models as tv_models

    shape = _image_shape(spec, "torchvision")
    if pretrained:
        raise KdcoreError(
            f"torchvision: pretrained weights for {name!r} cannot be downloaded here (no network "
            "access); set pretrained = false, or load weights into the model yourself"
        )
    if shape[0] not in (1, 3):
        raise KdcoreError(
            f"torchvision: the models take 1- or 3-channel images, not {shape[0]} channels"
        )
    known = tv_models.list_models(module=tv_models)
    if name not in known:
        raise KdcoreError(
            f"torchvision: unknown classification model {name!r}{did_you_mean(name, known)}; "
            f"known: {', '.join(known)}"
        )
    kwargs = {"aux_logits": False, "init_weights": True} if name in _AUX_HEAD_MODELS else {}
    trunk = tv_models.get_model(name, weights=None, **kwargs)
    # The classification head is the last linear layer the network registers.
    head_name, head = None, None
    for module_name, module in trunk.named_modules():
        if isinstance(module, nn.Linear):
            head_name, head = module_name, module
    if head is None or head_name is None:
        raise KdcoreError(f"torchvision: model {name!r} has no final linear layer to replace")
    parent_name, _, attr = head_name.rpartition(".")
    setattr(trunk.get_submodule(parent_name), attr, nn.Identity())
    classifier = nn.Linear(head.in_features, spec.num_classes)
    return TorchvisionModel(trunk, classifier, shape[0])


_AUX_HEAD_MODELS = frozenset({"googlenet", "inception_v3"})


# -- helpers ------------------------------------------------------------------------------------


def _image_shape(spec: ModelSpec, arch: str) -> tuple[int, int, int]:
    if len(spec.input_shape) != 3:
        raise KdcoreError(
            f"{arch} needs image inputs (channels, height, width), but the data are "
            f"{tuple(spec.input_shape)}; load the images unflattened (data.params.flatten = "
            "false) or use the mlp architecture"
        )
    channels, height, width = (int(v) for v in spec.input_shape)
    return channels, height, width


MODELS: dict[str, Callable[..., KDModel]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet8": resnet8,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "wrn": wrn,
    "torchvision": torchvision_model,
}
"""The built-in architectures by recipe name."""
