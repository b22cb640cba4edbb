"""Multilayer perceptrons on the flattened input."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.models.base import KDModel, ModelSpec
from kdcore.models.checks import Dropout, Widths, flat_features
from kdcore.validators import require


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
    hidden: Widths = (256, 128),
    dropout: Dropout = 0.0,
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
    require(hidden, "hidden", Widths, where="mlp")
    require(dropout, "dropout", Dropout, where="mlp")
    return MLP(flat_features(spec, "mlp"), spec.num_classes, tuple(hidden), dropout, batch_norm)
