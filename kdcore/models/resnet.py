"""The CIFAR ResNets of He et al. (2016): ResNet-8/20/32/56."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.models.base import KDModel, ModelSpec
from kdcore.models.checks import Width, image_shape
from kdcore.validators import require


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
    shape = image_shape(spec, f"resnet{depth}")
    require(width, "width", Width, where=f"resnet{depth}")
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


def resnet8(spec: ModelSpec, *, width: Width = 16) -> KDModel:
    return _cifar_resnet(spec, 8, width)


def resnet20(spec: ModelSpec, *, width: Width = 16) -> KDModel:
    return _cifar_resnet(spec, 20, width)


def resnet32(spec: ModelSpec, *, width: Width = 16) -> KDModel:
    return _cifar_resnet(spec, 32, width)


def resnet56(spec: ModelSpec, *, width: Width = 16) -> KDModel:
    return _cifar_resnet(spec, 56, width)


# The four factories differ only in depth; one docstring template keeps them in step.
for _depth, _factory in ((8, resnet8), (20, resnet20), (32, resnet32), (56, resnet56)):
    _factory.__doc__ = _RESNET_DOC.format(depth=_depth, n=(_depth - 2) // 6)
