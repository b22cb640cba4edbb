"""Images in torchvision's ``ImageFolder`` layout: one subfolder per class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import attrs
import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits
from kdcore.data.loaders.paths import Directory, given_dir
from kdcore.errors import KdcoreError
from kdcore.validators import positive, require

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""The file suffixes :func:`image_folder` reads (torchvision's ``IMG_EXTENSIONS``)."""

Size = Annotated[int, positive]
"""The side length images are resized to, at least 1."""


def image_folder(
    *, root: Directory, size: Size = 32, test_root: Directory | None = None
) -> DatasetSplits:
    """Images in torchvision's ``ImageFolder`` layout: one subfolder per class.

    Class labels follow the sorted subfolder names. Every image is converted to RGB and resized
    to ``size`` x ``size`` (bilinear), so the whole split fits in one ``uint8`` tensor.

    Args:
        root: the training folder, ``root/<class>/<image>``.
        size: the side length every image is resized to.
        test_root: an optional test folder with the same layout; its class folders must be
            among the training classes (a class may be absent from it).

    Returns:
        ``uint8`` ``(N, 3, size, size)`` splits; mean and std are computed per channel from the
        training images.

    Raises:
        KdcoreError: ``size`` is below 1, a folder is empty, missing or holds no images, or
            an image cannot be read.
    """
    require(size, "size", Size, where="image_folder")
    holds = "a folder with one subfolder of images per class"
    train_dir = given_dir(root, "root", loader="image_folder", holds=holds)
    test_dir = None
    if test_root is not None:
        test_dir = given_dir(test_root, "test_root", loader="image_folder", holds=holds)
    classes = _class_folders(train_dir)
    for name in classes:
        if not _image_files(train_dir / name):
            raise KdcoreError(
                f"image_folder: class folder {train_dir / name} holds no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
    x, y = _read_image_folder(train_dir, classes, size)
    scaled = x.to(torch.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(dim=(0, 2, 3)))
    # A constant channel would make normalisation divide by zero; keep it finite.
    std = tuple(max(float(v), 1e-6) for v in scaled.std(dim=(0, 2, 3), unbiased=False))
    train = ArrayDataset(
        x=x, y=y, num_classes=len(classes), class_names=classes, mean=mean, std=std
    )
    test = None
    if test_dir is not None:
        unknown = sorted(set(_class_folders(test_dir)) - set(classes))
        if unknown:
            raise KdcoreError(
                f"image_folder: test folder {test_dir} has classes {', '.join(unknown)} that the "
                f"training folder {root} does not have"
            )
        test_x, test_y = _read_image_folder(test_dir, classes, size)
        if test_y.numel() == 0:
            raise KdcoreError(f"image_folder: test folder {test_dir} holds no images")
        # The test split is normalised with the training statistics, as usual.
        test = attrs.evolve(train, x=test_x, y=test_y)
    return DatasetSplits(train=train, test=test)


def _class_folders(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        raise KdcoreError(
            f"image_folder: {directory} is not a directory; it should hold one subfolder of "
            "images per class"
        )
    classes = tuple(sorted(p.name for p in directory.iterdir() if p.is_dir()))
    if not classes:
        raise KdcoreError(
            f"image_folder: {directory} has no class subfolders; put each class's images in "
            f"{directory}/<class name>/"
        )
    return classes


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_image_folder(
    directory: Path, classes: Sequence[str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = directory / name
        if not folder.is_dir():
            continue
        for path in _image_files(folder):
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise KdcoreError(f"image_folder: cannot read image {path}: {exc}") from None
            labels.append(label)
    if not images:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    x = torch.from_numpy(np.stack(images))
    return x, torch.tensor(labels, dtype=torch.int64)
