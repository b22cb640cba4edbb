"""Batch augmentations of float image batches ``(N, C, H, W)``, driven by an explicit generator.

They act on whole batches already on the run's device (whole splits live in memory as tensors,
see :mod:`kdcore.data.base`), so each is vectorised over the batch instead of looping over
images. The random draws are made on the generator's device and then moved, so a CPU generator
serves a GPU batch and the augmentations of a seeded run are the same on every device.

Parameter ranges are ``Annotated`` metadata, checked by :func:`kdcore.config.bind_params` when a
recipe is checked and again by each function when it is called directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F

from kdcore.errors import KdcoreError
from kdcore.validators import between, require

MAX_PADDING = 64
"""16 times CIFAR's usual 4 pixels; the padded batch costs memory as ``(H + 2 * padding)^2``."""

MAX_CUTOUT = 1024
"""Larger than any image side kdcore trains on: a square this big already erases every image."""

Padding = Annotated[int, between(0, MAX_PADDING)]
CutoutSize = Annotated[int, between(0, MAX_CUTOUT)]


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator, *, padding: Padding = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip (the standard CIFAR recipe).

    Like torchvision's ``RandomCrop(size, padding)`` followed by ``RandomHorizontalFlip()``:
    each image is zero-padded by ``padding`` pixels on every side, a window of its original size
    is cut at a uniformly random offset, and the result is mirrored with probability 1/2.

    Args:
        x: a float image batch ``(N, C, H, W)``.
        generator: the source of randomness.
        padding: pixels of zero padding on each side (0: no crop), at most
            :data:`MAX_PADDING`, and below the images' smaller side, so that every crop holds
            some of its image.
        flip: whether to mirror half of the images.

    Returns:
        A new batch of the same shape.

    Raises:
        KdcoreError: ``x`` is not a float image batch, or ``padding`` is out of its range.
    """
    _check_batch(x, "crop_flip")
    require(padding, "padding", Padding, where="crop_flip")
    n, _, height, width = x.shape
    if padding >= min(height, width):  # a window at the padded edge misses the image
        raise KdcoreError(
            f"crop_flip: padding {padding} is not below the images' smaller side "
            f"({height}x{width}): some crops would hold no pixel of the image (on 1x1 images a "
            f"ResNet's loss diverged); use a padding of at most {min(height, width) - 1}")
    dev = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    rows = top[:, None] + torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device).expand(n, width)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=dev).to(x.device) < 0.5
        # Reading the window's columns right to left is the same as flipping the crop.
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    cols = left[:, None] + cols
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Index (N, H, W) pixel positions, keeping every channel: result is (N, H, W, C).
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, generator: torch.Generator, *, size: CutoutSize) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): zero one ``size`` x ``size`` square per image.

    The square's centre is uniform over the image, and the square is clipped at the border, so
    near an edge less than ``size * size`` pixels are zeroed. All channels are zeroed (on
    normalised inputs, 0 is the dataset mean).

    Args:
        x: a float image batch ``(N, C, H, W)``.
        generator: the source of randomness.
        size: the side of the square (0: no change, which an ablation may want), at most
            :data:`MAX_CUTOUT`.

    Returns:
        A new batch of the same shape.
    """
    _check_batch(x, "cutout")
    require(size, "size", CutoutSize, where="cutout")
    n, _, height, width = x.shape
    dev = generator.device
    cy = torch.randint(0, height, (n,), generator=generator, device=dev).to(x.device)
    cx = torch.randint(0, width, (n,), generator=generator, device=dev).to(x.device)
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(height, device=x.device)
    xs = torch.arange(width, device=x.device)
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise KdcoreError(
            f"{name} augments float image batches (N, C, H, W); got {x.dtype} "
            f"{tuple(x.shape)} (flat inputs cannot be cropped; drop data.augment or use images)"
        )


AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "crop_flip": random_crop_flip,
    "cutout": cutout,
}
"""The built-in batch augmentations by recipe name."""
