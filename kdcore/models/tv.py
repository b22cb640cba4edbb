"""torchvision's classification networks, for GPUs."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.errors import KdcoreError, did_you_mean
from kdcore.models.base import KDModel, ModelSpec
from kdcore.models.checks import image_shape


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
        # the factory builds GoogLeNet and Inception v3 without their auxiliary heads; a trunk
        # given directly with them returns (logits, aux...) in training mode
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

    shape = image_shape(spec, "torchvision")
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
    linears = [(n, m) for n, m in trunk.named_modules() if isinstance(m, nn.Linear)]
    if not linears:  # SqueezeNet's head is a convolution
        raise KdcoreError(f"torchvision: model {name!r} has no final linear layer to replace")
    head_name, head = linears[-1]
    parent_name, _, attr = head_name.rpartition(".")
    setattr(trunk.get_submodule(parent_name), attr, nn.Identity())
    classifier = nn.Linear(head.in_features, spec.num_classes)
    return TorchvisionModel(trunk, classifier, shape[0])


_AUX_HEAD_MODELS = frozenset({"googlenet", "inception_v3"})
