"""The label-correction network (LCN) of MLC: ``g_alpha(stopgrad(h), noisy label) -> soft label``.

As in microsoft/MLC ``meta_models.py`` (``MetaNet``): the noisy label is embedded (``cls_dim``,
Xavier-uniform), concatenated to the main model's **detached** penultimate feature, and passed
through ``Linear -> tanh -> Linear -> tanh -> Linear`` (hidden width 128, Xavier-normal weights,
zero biases). The output is a softmax over the C classes, or, with the skip link, C + 1 outputs
whose last one gives ``a = sigmoid(.)`` per sample and the label
``y = (1 - a) softmax(first C) + a onehot(noisy label)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.losses import one_hot


def corrected_label(raw: torch.Tensor, noisy_label: torch.Tensor, num_classes: int,
                    skip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The soft label from the LCN's last layer, and the skip weight ``a`` (None without skip).

    Args:
        raw: the last layer's output ``(B, C)``, or ``(B, C + 1)`` with the skip link.
        noisy_label: the observed labels ``(B,)``.
        num_classes: C.
        skip: whether ``raw`` carries the skip-link column.

    Returns:
        ``softmax(raw)``, or ``(1 - a) softmax(raw[:, :C]) + a onehot(noisy)`` with
        ``a = sigmoid(raw[:, C])`` of shape ``(B, 1)``.
    """
    if not skip:
        return F.softmax(raw, dim=1), None
    a = torch.sigmoid(raw[:, num_classes:num_classes + 1])
    soft = F.softmax(raw[:, :num_classes], dim=1)
    return (1.0 - a) * soft + a * one_hot(noisy_label, num_classes, soft.dtype), a


class LabelCorrectionNet(nn.Module):
    """MLC's meta network ``g_alpha``.

    Args:
        feature_dim: d, the main model's penultimate feature size.
        num_classes: C.
        cls_dim: e, the label-embedding size (MLC's README runs use 128).
        hidden: the MLP's hidden width (128, hard-coded in MLC).
        skip: the skip-link variant (C + 1 outputs).
    """

    def __init__(self, feature_dim: int, num_classes: int, cls_dim: int = 128,
                 hidden: int = 128, skip: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.skip = skip
        self.embedding = nn.Embedding(num_classes, cls_dim)
        self.net = nn.Sequential(
            nn.Linear(feature_dim + cls_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, num_classes + int(skip)),
        )
        self.reset_parameters()

    @staticmethod
    def parameter_count(feature_dim: int, num_classes: int, cls_dim: int = 128,
                        hidden: int = 128, skip: bool = False) -> int:
        """The number of parameters the network of these arguments has, counted without
        building it (a size from a recipe may be far too large to build even without memory)."""
        outputs = num_classes + int(skip)
        return (num_classes * cls_dim + (feature_dim + cls_dim + 1) * hidden
                + (hidden + 1) * hidden + (hidden + 1) * outputs)

    def reset_parameters(self) -> None:
        """MLC's ``init_weights``: Xavier-uniform embedding, Xavier-normal weights, zero biases."""
        nn.init.xavier_uniform_(self.embedding.weight)
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def correct(self, features: torch.Tensor, noisy_label: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The corrected soft labels ``(B, C)`` and the skip weights ``(B, 1)`` (or None).

        ``features`` should already be detached from the main model (MLC feeds
        ``stopgrad(h)``); the result carries a graph to this network's parameters.
        """
        label = noisy_label.long()
        raw = self.net(torch.cat([features, self.embedding(label).to(features.dtype)], dim=1))
        return corrected_label(raw, label, self.num_classes, self.skip)

    def forward(self, features: torch.Tensor, noisy_label: torch.Tensor) -> torch.Tensor:
        return self.correct(features, noisy_label)[0]
