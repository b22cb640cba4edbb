"""Small CNNs for CPU training on small greyscale images."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.errors import KdcoreError
from kdcore.models.base import KDModel, ModelSpec
from kdcore.models.checks import Stages, Width, image_shape
from kdcore.validators import require


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


def cnn(spec: ModelSpec, *, channels: Stages = (32, 64), hidden: Width = 128) -> KDModel:
    """A small CNN for image inputs, sized for CPU training on digits or Fashion-MNIST.

    Args:
        spec: an image input shape ``(C, H, W)`` and the number of classes.
        channels: output channels of each conv block; each block halves the resolution.
        hidden: the width of the feature layer.

    Returns:
        The model; its feature is the ReLU output of the fully connected layer.
    """
    shape = image_shape(spec, "cnn")
    require(channels, "channels", Stages, where="cnn")
    require(hidden, "hidden", Width, where="cnn")
    smallest = min(shape[1:])
    if smallest >> len(channels) < 1:
        fits = smallest.bit_length() - 1  # the halvings the smaller side takes
        blocks = "block halves" if len(channels) == 1 else "blocks halve"
        fix = (f"use at most {fits} {'entry' if fits == 1 else 'entries'} in channels" if fits
               else "no block fits an input 1 pixel wide or high: use the mlp or a resnet "
                    "architecture, or larger inputs")
        raise KdcoreError(f"cnn: {len(channels)} {blocks} the {shape[1]}x{shape[2]} input below "
                          f"1 pixel; {fix}")
    return SmallCNN(shape, spec.num_classes, tuple(channels), hidden)
