"""CIFAR-10 and CIFAR-100 from the "python version" release: pickled dicts of numpy arrays,
read through :func:`~kdcore.data.loaders.arrays.load_array_pickle` so that a crafted file runs
no code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits
from kdcore.data.loaders.arrays import load_array_pickle
from kdcore.data.loaders.paths import Directory, given_dir
from kdcore.errors import KdcoreError, missing_path

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar10(*, root: Directory) -> DatasetSplits:
    """CIFAR-10 from the "python version" release (``cifar-10-python.tar.gz``, extracted).

    Args:
        root: the extracted ``cifar-10-batches-py`` folder or the folder that contains it. It
            holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and ``batches.meta``.

    Returns:
        50,000 training and 10,000 test images, ``uint8`` ``(N, 3, 32, 32)``, with the usual
        CIFAR-10 per-channel mean and std.

    Raises:
        KdcoreError: ``root`` is empty or missing, a file is missing or not a CIFAR batch,
            or a file names a Python global beyond numpy's array helpers.
    """
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    directory = _cifar_dir(root, "cifar-10-batches-py", files, "CIFAR-10", "cifar10")
    meta = load_array_pickle(directory / "batches.meta", "CIFAR file")
    names = _decode_names(meta, b"label_names", directory, 10)
    batches = [_cifar_batch(directory / f"data_batch_{i}", b"labels", 10) for i in range(1, 6)]
    train_x = np.concatenate([x for x, _ in batches])
    train_y = np.concatenate([y for _, y in batches])
    test_x, test_y = _cifar_batch(directory / "test_batch", b"labels", 10)
    return DatasetSplits(
        train=_cifar_dataset(train_x, train_y, 10, names, CIFAR10_MEAN, CIFAR10_STD),
        test=_cifar_dataset(test_x, test_y, 10, names, CIFAR10_MEAN, CIFAR10_STD),
    )


def cifar100(*, root: Directory, label: Literal["fine", "coarse"] = "fine") -> DatasetSplits:
    """CIFAR-100 from the "python version" release (``cifar-100-python.tar.gz``, extracted).

    Args:
        root: the extracted ``cifar-100-python`` folder or the folder that contains it. It holds
            ``train``, ``test`` and ``meta``.
        label: ``"fine"`` for the 100 classes or ``"coarse"`` for the 20 superclasses.

    Returns:
        50,000 training and 10,000 test images, ``uint8`` ``(N, 3, 32, 32)``, with the usual
        CIFAR-100 per-channel mean and std.

    Raises:
        KdcoreError: ``root`` is empty or missing, a file is missing or not a CIFAR batch
            or names a Python global beyond numpy's array helpers, or ``label`` is unknown.
    """
    if label not in ("fine", "coarse"):
        raise KdcoreError(f"cifar100: label must be 'fine' or 'coarse', not {label!r}")
    num_classes = 100 if label == "fine" else 20
    directory = _cifar_dir(
        root, "cifar-100-python", ["train", "test", "meta"], "CIFAR-100", "cifar100"
    )
    meta = load_array_pickle(directory / "meta", "CIFAR file")
    names = _decode_names(meta, f"{label}_label_names".encode(), directory, num_classes)
    key = f"{label}_labels".encode()
    train_x, train_y = _cifar_batch(directory / "train", key, num_classes)
    test_x, test_y = _cifar_batch(directory / "test", key, num_classes)
    return DatasetSplits(
        train=_cifar_dataset(train_x, train_y, num_classes, names, CIFAR100_MEAN, CIFAR100_STD),
        test=_cifar_dataset(test_x, test_y, num_classes, names, CIFAR100_MEAN, CIFAR100_STD),
    )


def _cifar_dir(
    root: str, folder: str, files: Sequence[str], dataset: str, loader: str
) -> Path:
    holds = f"the extracted '{folder}' folder of the {dataset} python-version release"
    holds += " (or its parent)"
    base = given_dir(root, "root", loader=loader, holds=holds)
    for candidate in (base / folder, base):
        if all((candidate / name).is_file() for name in files):
            return candidate
    directory = base / folder if (base / folder).is_dir() else base
    missing = [name for name in files if not (directory / name).is_file()]
    if directory.is_dir():
        where = f"{directory} lacks {', '.join(missing)}"
    else:
        where = (f"{directory} is not a directory" if directory.exists()
                 else f"{missing_path(directory)} does not exist")
    raise KdcoreError(
        f"{dataset} not found: {where}. data.params.root must be the extracted '{folder}' folder "
        f"of the python-version release (or its parent), holding {', '.join(files)}"
    )


def _cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_array_pickle(path, "CIFAR file")
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise KdcoreError(
            f"{path} is not a CIFAR batch: expected a dict with keys b'data' and {label_key!r}"
        )
    data = np.asarray(batch[b"data"])
    labels = _labels(batch[label_key], path, label_key)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise KdcoreError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072) CIFAR images"
        )
    if data.shape[0] == 0:
        raise KdcoreError(f"{path}: the batch holds no images")
    if labels.shape != (data.shape[0],):
        raise KdcoreError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise KdcoreError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _labels(value: Any, path: Path, key: bytes) -> np.ndarray:
    """A batch's labels as ``int64``: a list or array of integers, nothing else (a float label
    would be truncated to another class without a word)."""
    labels = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if labels is None or labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        kind = type(value).__name__ if labels is None else f"{labels.dtype} {labels.shape}"
        raise KdcoreError(f"{path}: {key!r} is {kind}; expected a list of integer labels")
    return labels.astype(np.int64)


def _decode_names(meta: Any, key: bytes, directory: Path, num_classes: int) -> tuple[str, ...]:
    if not isinstance(meta, dict) or key not in meta:
        raise KdcoreError(f"the meta file in {directory} has no {key!r} entry")
    names = meta[key]
    if not isinstance(names, (list, tuple)) or len(names) != num_classes or not all(
            isinstance(n, (bytes, str)) for n in names):
        raise KdcoreError(f"the meta file in {directory}: {key!r} must list {num_classes} "
                          "class names")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def _cifar_dataset(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    names: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> ArrayDataset:
    return ArrayDataset(
        x=torch.from_numpy(np.ascontiguousarray(x)),
        y=torch.from_numpy(y),
        num_classes=num_classes,
        class_names=names,
        mean=mean,
        std=std,
    )
