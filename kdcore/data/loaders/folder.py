"""Images in torchvision's ``ImageFolder`` layout: one subfolder per class, its images at any
depth below it.

Names that begin with a dot are passed over, folders and files alike: a notebook's
``.ipynb_checkpoints`` beside the class folders became a class of its own (torchvision's
reading, pytorch/vision#2831), and macOS's ``._<name>.png`` copies are not images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import attrs
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits, FileDataset
from kdcore.data.images import IMAGE_EXTENSIONS, channel_stats, sample_rows
from kdcore.data.loaders.paths import Directory, given_dir
from kdcore.data.split_checks import check_listed_files
from kdcore.device import check_fits
from kdcore.errors import KdcoreError, missing_path
from kdcore.validators import positive, require

Size = Annotated[int, positive]
"""The side length images are resized to, at least 1."""


def image_folder(
    *, root: Directory, size: Size = 32, test_root: Directory | None = None,
    stream: bool = False,
) -> DatasetSplits:
    """Images in torchvision's ``ImageFolder`` layout: one subfolder per class.

    Class labels follow the sorted subfolder names. Every image is converted to RGB and resized
    to ``size`` x ``size`` (bilinear), so the whole split fits in one ``uint8`` tensor.

    Args:
        root: the training folder, ``root/<class>/<image>``.
        size: the side length every image is resized to.
        test_root: an optional test folder with the same layout; its class folders must be
            among the training classes (a class may be absent from it).
        stream: keep only the file names and decode each batch's images when it is needed,
            in ``data.workers`` processes (:class:`~kdcore.data.base.FileDataset`), for folders
            too large for memory; the same images and labels as the in-memory split.

    Returns:
        ``uint8`` ``(N, 3, size, size)`` splits (or file-backed ones); mean and std are
        computed per channel from the training images (streaming: from at most 2,000 of them,
        evenly spaced).

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
    paths, y = _listing(train_dir, classes)
    train = image_split(paths, y, classes, size, stream)
    test = None
    if test_dir is not None:
        unknown = sorted(set(_class_folders(test_dir)) - set(classes))
        if unknown:
            raise KdcoreError(
                f"image_folder: test folder {test_dir} has classes {', '.join(unknown)} that the "
                f"training folder {root} does not have"
            )
        test_paths, test_y = _listing(test_dir, classes)
        if not test_paths:
            raise KdcoreError(f"image_folder: test folder {test_dir} holds no images")
        # The test split is normalised with the training statistics, as usual.
        test = image_split(test_paths, test_y, classes, size, stream, stats_from=train)
    return DatasetSplits(train=train, test=test)


def image_split(paths: Sequence[str], y: torch.Tensor, classes: Sequence[str], size: int,
                stream: bool, stats_from: ArrayDataset | FileDataset | None = None, *,
                loader: str = "image_folder") -> ArrayDataset | FileDataset:
    """The images ``paths`` with labels ``y`` as one split: read into memory, or file-backed
    (``stream``); normalised with ``stats_from``'s mean and std (a test split takes its
    training split's), else with its own (from at most
    :data:`~kdcore.data.images.STATS_IMAGES` images when streaming, so that a million files
    are not all read for it).

    Raises:
        RecipeError: the images it would hold at once do not fit in memory (before any is
            read: a ``size`` of 100,000 is 30 GB an image).
    """
    held = len(paths) if not stream else 1 if stats_from is not None else len(
        sample_rows(len(paths)))
    # the decoded images and the tensor stacked from them, both held for a moment
    check_fits(f"{loader}: {held:,} image{'s' * (held != 1)} of 3 x {size} x {size} pixels "
               "held at once",
               2 * held * 3 * size * size, torch.device("cpu"),
               "lower size" + ("" if stream else ", or set stream = true"))
    files = FileDataset(paths=tuple(paths), y=y, num_classes=len(classes), size=size,
                        class_names=tuple(classes))
    if stream:
        check_listed_files(paths)
        if stats_from is None:
            mean, std = channel_stats(files.read(sample_rows(len(files))))
        else:
            mean, std = stats_from.mean, stats_from.std
        return attrs.evolve(files, mean=mean, std=std)
    x = files.read(slice(None))
    mean, std = channel_stats(x) if stats_from is None else (stats_from.mean, stats_from.std)
    return ArrayDataset(x=x, y=y, num_classes=len(classes), class_names=tuple(classes),
                        mean=mean, std=std)


def _class_folders(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        shown = directory if directory.exists() else missing_path(directory)
        raise KdcoreError(
            f"image_folder: {shown} is not a directory; it should hold one subfolder of "
            "images per class"
        )
    classes = tuple(sorted(p.name for p in directory.iterdir()
                           if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise KdcoreError(
            f"image_folder: {directory} has no class subfolders; put each class's images in "
            f"{directory}/<class name>/"
        )
    return classes


def _image_files(directory: Path) -> list[Path]:
    """The images under ``directory`` at any depth, by folder path and then by name (as
    torchvision orders them; a flat folder's are its sorted names), hidden names left out. A
    folder reached twice through links is read once (a link to a parent would never end)."""
    found: list[tuple[str, list[str]]] = []
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, files in os.walk(directory, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        # in sorted order: of two links to one folder, the same one is read on every machine
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.append((folder, sorted(f for f in files if not f.startswith(".")
                                     and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)))
    return [Path(folder) / name for folder, names in sorted(found) for name in names
            if (Path(folder) / name).is_file()]


def _listing(directory: Path, classes: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Every image file under ``directory/<class>/`` and its label, class by class."""
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = directory / name
        if not folder.is_dir():
            continue
        files = _image_files(folder)
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return paths, torch.tensor(labels, dtype=torch.int64)
