"""Reading image files the one way every image loader does, in memory or streaming."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from kdcore.errors import KdcoreError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file suffixes the image loaders read (torchvision's ``IMG_EXTENSIONS``)."""

STATS_IMAGES = 2000
"""At most this many training images (evenly spaced) give a streaming split's mean and std."""


def read_image(path: str | Path, size: int) -> np.ndarray:
    """One image as RGB, resized to ``size`` x ``size`` (bilinear): ``uint8`` ``(3, S, S)``.

    Raises:
        KdcoreError: the file is missing or is not an image PIL can read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # a photo over PIL's pixel limit but under twice it is decoded and resized like
            # any other; its warning would only add lines to the run's output
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            rgb = _as_rgb(image, path).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        # a bomb: more pixels than PIL will decode (Image.MAX_IMAGE_PIXELS)
        raise KdcoreError(f"cannot read image {path}: {exc}") from None


def _as_rgb(image: object, path: str | Path) -> object:
    """``image`` (a PIL image) as 8-bit RGB. PIL's own ``convert("RGB")`` clips a 16-bit
    image's values to 255 (a 16-bit PNG came out white) and takes floats as they are (an image
    in [0, 1] came out black); a 16-bit image is scaled to 8 bits instead (``v / 257``,
    rounded), and one of floats, which has no one scale, is refused."""
    from PIL import Image

    mode = image.mode  # type: ignore[attr-defined]
    if mode == "F":
        raise KdcoreError(f"cannot read image {path}: its pixels are floating point (mode F), "
                          "which have no one scale to 8 bits; save 8- or 16-bit images, or give "
                          "the arrays through the npz dataset")
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:  # 32-bit integers: no 16-bit image
            raise KdcoreError(f"cannot read image {path}: its pixels run from {low} to {high} "
                              "(32-bit integers, mode I); save 8- or 16-bit images")
        eight = (values * 255 + 32767) // 65535  # 65535 -> 255, rounded
        return Image.fromarray(eight.astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")  # type: ignore[attr-defined]


STATS_CHUNK = 512
"""Images converted at a time by :func:`channel_stats`."""


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images ``(N, C, H, W)`` scaled to
    [0, 1]; a constant channel's std is kept at 1e-6 so normalising never divides by zero.

    The sums of the pixels and of their squares are integers, summed exactly
    :data:`STATS_CHUNK` images at a time (a float64 copy of a whole split, as before, took 16
    times its memory: 2.4 GB for a split of CIFAR-10's 50,000 images), and each result is
    rounded once from them.
    """
    n = x.shape[0] * x.shape[2] * x.shape[3]
    total = [0] * x.shape[1]
    squares = [0] * x.shape[1]
    for start in range(0, x.shape[0], STATS_CHUNK):
        part = x[start:start + STATS_CHUNK].to(torch.int64)
        for c, (s1, s2) in enumerate(zip(part.sum(dim=(0, 2, 3)).tolist(),
                                         (part * part).sum(dim=(0, 2, 3)).tolist())):
            total[c] += s1
            squares[c] += s2
    if n == 0:
        return (math.nan,) * len(total), (math.nan,) * len(total)
    mean = tuple(s1 / (n * 255) for s1 in total)
    # n^2 var = n S2 - S1^2, an exact integer; the square root's argument rounded once
    std = tuple(max(math.sqrt((n * s2 - s1 * s1) / (n * n * 255 * 255)), 1e-6)
                for s1, s2 in zip(total, squares))
    return mean, std


def sample_rows(n: int, at_most: int = STATS_IMAGES) -> torch.Tensor:
    """``at_most`` evenly spaced rows of ``n`` (all of them when ``n <= at_most``)."""
    if n <= at_most:
        return torch.arange(n)
    return torch.linspace(0, n - 1, at_most).round().long().unique()
