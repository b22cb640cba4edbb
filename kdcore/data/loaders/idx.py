"""Datasets in IDX files (the MNIST format): Fashion-MNIST, as the Debian package
``dataset-fashion-mnist`` installs it, and any other in the MNIST release's layout (MNIST,
KMNIST, EMNIST's splits)."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits
from kdcore.data.images import channel_stats
from kdcore.data.loaders.paths import Directory
from kdcore.errors import KdcoreError, missing_path
from kdcore.validators import each, no_nul, require

FASHION_MNIST_ENV = "KDCORE_FASHION_MNIST"
"""Environment variable naming the Fashion-MNIST directory when the recipe gives no ``root``."""

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

_IDX_UBYTE = 0x08
_RELEASE_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")

ClassNames = Annotated[tuple[str, ...], each(no_nul)]
"""A name per class, in label order."""


def fashion_mnist(*, root: Directory | None = None, flatten: bool = False) -> DatasetSplits:
    """Fashion-MNIST (60,000 training and 10,000 test 28x28 greyscale images) from IDX files.

    The directory is ``root`` if given, else the environment variable ``KDCORE_FASHION_MNIST``,
    else ``/usr/share/datasets/fashion-mnist`` (where the Debian package
    ``dataset-fashion-mnist`` puts it); torchvision's download folder (its ``root``, which
    holds ``FashionMNIST/raw/``) is read from there. Each of ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` may
    be gzip-compressed (``.gz``) or not.

    Args:
        root: the directory holding the four IDX files.
        flatten: return ``float32`` vectors ``(N, 784)`` for MLPs instead of ``uint8`` images.
            The vectors are already normalised: pixels are scaled to [0, 1] and then
            standardised with the same mean 0.2860 and std 0.3530 that the engine applies to
            the images, so ``mean``/``std`` of the returned datasets are ``None``.

    Returns:
        Train and test splits: ``uint8`` ``(N, 1, 28, 28)`` with ``mean=(0.2860,)``,
        ``std=(0.3530,)``, or the flattened ``float32`` form.

    Raises:
        KdcoreError: the directory or a file is missing, or a file is not a valid IDX file.
    """
    directory = _fashion_mnist_dir(root)
    read = _read_release(directory, "Fashion-MNIST", "fashion_mnist")
    for prefix, (_, labels) in zip(("train", "t10k"), read):
        if int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise KdcoreError(
                f"Fashion-MNIST in {directory}: {prefix} labels go up to {int(labels.max())}, "
                f"but there are only {len(FASHION_MNIST_CLASSES)} classes; the file is corrupt"
            )
    train, test = (_idx_split(images, labels, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN,
                              FASHION_MNIST_STD, flatten) for images, labels in read)
    return DatasetSplits(train=train, test=test)


def mnist(*, root: Directory, flatten: bool = False, class_names: ClassNames = ()
          ) -> DatasetSplits:
    """A dataset in the MNIST release's layout of IDX files: MNIST, KMNIST, EMNIST's splits
    (Fashion-MNIST has its own loader, with its class names and statistics).

    ``root`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzip-compressed
    (``.gz``) or not; the images are greyscale, of any one size.

    Args:
        root: the directory holding the four IDX files.
        flatten: return ``float32`` vectors ``(N, H * W)`` for MLPs instead of ``uint8``
            images, standardised with the training images' mean and standard deviation.
        class_names: a name per class, in label order (their count is C); empty: C is the
            largest label plus one, and each class is named by its label.

    Returns:
        Train and test splits: ``uint8`` ``(N, 1, H, W)`` with the training images' mean and
        std, or the flattened ``float32`` form.

    Raises:
        KdcoreError: a file is missing or not a valid IDX file, a split holds no images or
            more labels than images (or fewer), the splits' image sizes differ, or a label has
            no name in ``class_names``.
    """
    require(root, "root", Directory, where="mnist")
    require(class_names, "class_names", ClassNames, where="mnist")
    directory = Path(root).expanduser()
    read = _read_release(directory, "mnist", "mnist")
    (train_x, train_y), (_, test_y) = read
    top = int(max(train_y.max(), test_y.max()))
    names = tuple(class_names) or tuple(str(c) for c in range(top + 1))
    if top >= len(names):
        raise KdcoreError(f"mnist in {directory}: labels go up to {top}, but class_names names "
                          f"{len(names)} classes; name every class")
    x = torch.from_numpy(train_x.copy()).unsqueeze(1)
    mean, std = channel_stats(x)
    splits = [_idx_split(images, labels, names, mean, std, flatten) for images, labels in read]
    return DatasetSplits(train=splits[0], test=splits[1])


def _read_release(directory: Path, what: str, dataset: str
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The release's ``(images, labels)`` of the train and the t10k split, each split's
    counts checked and the two splits' image sizes compared; ``what`` names the dataset in the
    errors, ``dataset`` in a missing file's."""
    read = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find_idx_file(directory, f"{prefix}-images-idx3-ubyte", dataset),
                           ndim=3)
        labels = _read_idx(_find_idx_file(directory, f"{prefix}-labels-idx1-ubyte", dataset),
                           ndim=1)
        if images.shape[0] == 0:
            raise KdcoreError(f"{what} in {directory}: the {prefix} files hold no images; the "
                              "files are truncated or not the release's")
        if images.shape[0] != labels.shape[0]:
            raise KdcoreError(
                f"{what} in {directory}: {prefix} has {images.shape[0]} images but "
                f"{labels.shape[0]} labels; the files are from different releases or truncated")
        read.append((images, labels))
    (train, _), (test, _) = read
    if train.shape[1:] != test.shape[1:]:
        raise KdcoreError(
            f"{what} in {directory}: train images are {(1, *train.shape[1:])} but test images "
            f"are {(1, *test.shape[1:])}; the files are from different datasets")
    return read


def _idx_split(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
               mean: tuple[float, ...], std: tuple[float, ...], flatten: bool) -> ArrayDataset:
    y = torch.from_numpy(labels.astype(np.int64))
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    common = {"y": y, "num_classes": len(names), "class_names": names}
    if not flatten:
        return ArrayDataset(x=x, mean=mean, std=std, **common)
    flat = x.reshape(x.shape[0], -1) / 255.0  # float32
    return ArrayDataset(x=(flat - mean[0]) / std[0], **common)


def _fashion_mnist_dir(root: str | None) -> Path:
    if root is not None:
        require(root, "root", Directory, where="fashion_mnist")
        source, directory = "data.params.root", root
    elif os.environ.get(FASHION_MNIST_ENV):
        source, directory = f"${FASHION_MNIST_ENV}", os.environ[FASHION_MNIST_ENV]
    else:
        source, directory = "the default location", FASHION_MNIST_DEFAULT_DIR
    path = Path(directory).expanduser()
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        shown = path if path.exists() else missing_path(path)
        raise KdcoreError(
            f"Fashion-MNIST directory {shown} (from {source}) {problem}; it should hold "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
            "and t10k-labels-idx1-ubyte.gz. Install them with 'apt-get install "
            f"dataset-fashion-mnist' (into {FASHION_MNIST_DEFAULT_DIR}), or set data.params.root "
            f"or ${FASHION_MNIST_ENV} to a directory holding them"
        )
    # torchvision.datasets.FashionMNIST(root, download=True) keeps them in root/FashionMNIST/raw
    downloaded = path / "FashionMNIST" / "raw"
    if not _holds_idx(path) and _holds_idx(downloaded):
        return downloaded
    return path


def _holds_idx(directory: Path) -> bool:
    name = "train-images-idx3-ubyte"
    return (directory / name).is_file() or (directory / f"{name}.gz").is_file()


def _find_idx_file(directory: Path, name: str, dataset: str = "fashion_mnist") -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    if dataset != "fashion_mnist":
        raise KdcoreError(f"{dataset}: {name}[.gz] not found in {directory}, which should hold "
                          f"{', '.join(_RELEASE_FILES)} (each may end in .gz)")
    raise KdcoreError(
        f"Fashion-MNIST file {name}[.gz] not found in {directory}; reinstall the files with "
        "'apt-get install --reinstall dataset-fashion-mnist', or point data.params.root or "
        f"${FASHION_MNIST_ENV} at a directory holding all four IDX files"
    )


def _read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (the MNIST format) with ``ndim`` dimensions.

    The header is two zero bytes, a type code (0x08: unsigned byte), the number of dimensions,
    then each dimension as a big-endian uint32; the data follow in C order.
    """
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise KdcoreError(f"cannot read IDX file {path}: {exc}") from None
    expected_magic = (_IDX_UBYTE << 8) | ndim
    header_size = 4 + 4 * ndim
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != expected_magic:
        found = f"0x{struct.unpack('>I', raw[:4])[0]:08x}" if len(raw) >= 4 else "nothing"
        raise KdcoreError(
            f"{path} is not a {ndim}-dimensional unsigned-byte IDX file: magic number is {found}, "
            f"expected 0x{expected_magic:08x}; the file is corrupt or of another kind"
        )
    if len(raw) < header_size:
        raise KdcoreError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    payload = memoryview(raw)[header_size:]
    expected = int(np.prod(dims, dtype=np.int64))
    if len(payload) != expected:
        raise KdcoreError(
            f"IDX file {path} declares shape {dims} ({expected} bytes of data) but holds "
            f"{len(payload)} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)
