"""Fashion-MNIST from IDX files (the MNIST format), as the Debian package
``dataset-fashion-mnist`` installs them."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits
from kdcore.data.loaders.paths import Directory
from kdcore.errors import KdcoreError
from kdcore.validators import require

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
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find_idx_file(directory, f"{prefix}-images-idx3-ubyte"), ndim=3)
        labels = _read_idx(_find_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), ndim=1)
        if images.shape[0] == 0:
            raise KdcoreError(f"Fashion-MNIST in {directory}: the {prefix} files hold no "
                              "images; the files are truncated or not the release's")
        if images.shape[0] != labels.shape[0]:
            raise KdcoreError(
                f"Fashion-MNIST in {directory}: {prefix} has {images.shape[0]} images but "
                f"{labels.shape[0]} labels; the files are from different releases or truncated"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise KdcoreError(
                f"Fashion-MNIST in {directory}: {prefix} labels go up to {int(labels.max())}, "
                f"but there are only {len(FASHION_MNIST_CLASSES)} classes; the file is corrupt"
            )
        splits.append(_fashion_mnist_split(images, labels, flatten=flatten))
    train, test = splits
    if train.x.shape[1:] != test.x.shape[1:]:
        raise KdcoreError(
            f"Fashion-MNIST in {directory}: train images are {tuple(train.x.shape[1:])} but test "
            f"images are {tuple(test.x.shape[1:])}; the files are from different datasets"
        )
    return DatasetSplits(train=train, test=test)


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
        raise KdcoreError(
            f"Fashion-MNIST directory {path} (from {source}) {problem}; it should hold "
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


def _find_idx_file(directory: Path, name: str) -> Path:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
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


def _fashion_mnist_split(images: np.ndarray, labels: np.ndarray, *, flatten: bool) -> ArrayDataset:
    y = torch.from_numpy(labels.astype(np.int64))
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    common = {
        "y": y,
        "num_classes": len(FASHION_MNIST_CLASSES),
        "class_names": FASHION_MNIST_CLASSES,
    }
    if not flatten:
        return ArrayDataset(x=x, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, **common)
    flat = x.reshape(x.shape[0], -1).to(torch.float32) / 255.0
    flat = (flat - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    return ArrayDataset(x=flat, **common)
