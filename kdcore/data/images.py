"""Reading image files the one way every image loader does, in memory or streaming."""

from __future__ import annotations

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
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        # a bomb: more pixels than PIL will decode (Image.MAX_IMAGE_PIXELS)
        raise KdcoreError(f"cannot read image {path}: {exc}") from None


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``uint8`` images ``(N, C, H, W)`` scaled to
    [0, 1]; a constant channel's std is kept at 1e-6 so normalising never divides by zero."""
    scaled = x.to(torch.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-6) for v in scaled.std(dim=(0, 2, 3), unbiased=False))
    return mean, std


def sample_rows(n: int, at_most: int = STATS_IMAGES) -> torch.Tensor:
    """``at_most`` evenly spaced rows of ``n`` (all of them when ``n <= at_most``)."""
    if n <= at_most:
        return torch.arange(n)
    return torch.linspace(0, n - 1, at_most).round().long().unique()
