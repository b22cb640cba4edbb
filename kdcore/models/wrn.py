"""Wide ResNets (Zagoruyko & Komodakis, 2016)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.models.base import KDModel, ModelSpec
from kdcore.models.checks import Dropout, Width, image_shape
from kdcore.validators import require


def _six_n_plus_four(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (value < 10 or (value - 4) % 6):
        raise ValueError(
            f"'{attribute.name}' must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {value!r}"
        )


Depth = Annotated[int, _six_n_plus_four]
"""A Wide ResNet's total depth: 6n + 4 with n >= 1."""


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


def wrn(
    spec: ModelSpec, *, depth: Depth = 16, widen: Width = 2, dropout: Dropout = 0.0
) -> KDModel:
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
    shape = image_shape(spec, "wrn")
    require(depth, "depth", Depth, where="wrn")
    require(widen, "widen", Width, where="wrn")
    require(dropout, "dropout", Dropout, where="wrn")
    return WideResNet(shape[0], spec.num_classes, depth, widen, dropout)
