"""What an architecture's parameters and data must satisfy, shared by the factories.

Parameter ranges are ``Annotated`` metadata, so that :func:`kdcore.config.bind_params` refuses
a recipe's impossible value (``kdcore check``) before any data is loaded; each factory checks
them again with :func:`kdcore.validators.require` when called directly. What depends on the data
(the input shape, the number of classes) is checked when the model is built.
"""

from __future__ import annotations

from typing import Annotated, Any

from kdcore.errors import KdcoreError
from kdcore.models.base import ModelSpec
from kdcore.validators import below_one, each, positive


def non_empty(instance: Any, attribute: Any, value: Any) -> None:
    """A list with at least one item."""
    if value is not None and len(value) == 0:
        raise ValueError(f"'{attribute.name}' must not be empty")


Width = Annotated[int, positive]
"""A layer width or a channel count, at least 1."""

Widths = Annotated[tuple[int, ...], each(positive)]
"""Layer widths, each at least 1; none at all is allowed."""

Stages = Annotated[tuple[int, ...], non_empty, each(positive)]
"""Channel counts of one or more stages, each at least 1."""

Dropout = Annotated[float, below_one]
"""A dropout probability in [0, 1)."""


def flat_features(spec: ModelSpec, arch: str) -> int:
    """The number of input features once flattened.

    Raises:
        KdcoreError: an input dimension or the number of classes is below 1, which would
            build layers without weights.
    """
    _check_sizes(spec, arch)
    features = 1
    for dim in spec.input_shape:
        features *= dim
    return features


def image_shape(spec: ModelSpec, arch: str) -> tuple[int, int, int]:
    """``(channels, height, width)`` of image inputs.

    Raises:
        KdcoreError: the inputs are not images, or a size or the number of classes is below 1.
    """
    if len(spec.input_shape) != 3:
        raise KdcoreError(
            f"{arch} needs image inputs (channels, height, width), but the data are "
            f"{tuple(spec.input_shape)}; load the images unflattened (data.params.flatten = "
            "false) or use the mlp architecture"
        )
    _check_sizes(spec, arch)
    channels, height, width = (int(v) for v in spec.input_shape)
    return channels, height, width


def _check_sizes(spec: ModelSpec, arch: str) -> None:
    if any(int(dim) < 1 for dim in spec.input_shape):
        raise KdcoreError(f"{arch}: the inputs have shape {tuple(spec.input_shape)}; every "
                          "dimension must be at least 1")
    if spec.num_classes < 1:
        raise KdcoreError(f"{arch}: the data have {spec.num_classes} classes; at least 1 "
                          "is needed")
