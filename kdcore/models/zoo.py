"""Built-in architectures: MLPs and small CNNs for CPUs, CIFAR ResNets, Wide ResNets, and
torchvision's classifiers for GPUs.

Every architecture is a :class:`KDModel` whose ``forward`` returns ``(logits, features)`` with
``features`` the input of its ``classifier`` (an ``nn.Linear``), and every factory is
``fn(spec, *, params) -> KDModel`` with keyword-only, annotated parameters that a recipe sets.

Each family lives in its own module (:mod:`.mlp`, :mod:`.cnn`, :mod:`.resnet`, :mod:`.wrn`,
:mod:`.tv`); this one names them for recipes.
"""

from __future__ import annotations

from collections.abc import Callable

from kdcore.models.base import KDModel
from kdcore.models.cnn import SmallCNN, cnn
from kdcore.models.mlp import MLP, mlp
from kdcore.models.resnet import (
    BasicBlock,
    CifarResNet,
    ZeroPadShortcut,
    resnet8,
    resnet20,
    resnet32,
    resnet56,
)
from kdcore.models.tv import TorchvisionModel, torchvision_model
from kdcore.models.wrn import WideBlock, WideResNet, wrn

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

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "CifarResNet",
    "SmallCNN",
    "TorchvisionModel",
    "WideBlock",
    "WideResNet",
    "ZeroPadShortcut",
    "cnn",
    "mlp",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet56",
    "torchvision_model",
    "wrn",
]
