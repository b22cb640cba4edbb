"""The contract every kdcore architecture keeps.

A model maps a batch to ``(logits, features)``: the penultimate feature is what label
propagation, prototypes, feature mimicking and last-layer meta-gradients all need, so every
architecture exposes it, and exposes its final layer as ``classifier`` (an ``nn.Linear``).
"""

from __future__ import annotations

import attrs
import torch
from torch import nn


@attrs.frozen
class ModelSpec:
    """What an architecture factory is told about the data.

    Attributes:
        input_shape: the shape of one input, e.g. ``(64,)`` for flat digits, ``(1, 28, 28)``.
        num_classes: C.
    """

    input_shape: tuple[int, ...]
    num_classes: int


class KDModel(nn.Module):
    """Base class: subclasses implement :meth:`forward_features` and set ``classifier``.

    ``forward`` returns ``(logits, features)`` where ``features`` is the input of
    ``classifier``.
    """

    classifier: nn.Linear

    @property
    def feature_dim(self) -> int:
        return int(self.classifier.in_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # abstract: every architecture defines its trunk

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.forward_features(x)
        return self.classifier(features), features
