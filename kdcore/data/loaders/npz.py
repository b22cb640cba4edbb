"""Arrays of one's own in a numpy ``.npz`` file: features extracted by another network, tabular
data, images already decoded, with their labels; no plugin to write.

The file holds ``x_train`` and ``y_train``, optionally ``x_test`` with ``y_test`` and
``class_names``; it is read with ``allow_pickle=False``, so it cannot hold code (an object array
is refused).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits
from kdcore.data.images import channel_stats
from kdcore.data.loaders.lists import MAX_LABEL
from kdcore.errors import KdcoreError, missing_path, os_reason
from kdcore.validators import between, no_nul, require


def _names_a_file(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"'{attribute.name}' is empty; it must name an .npz file")


NpzFile = Annotated[str, no_nul, _names_a_file]
"""The ``.npz`` file's path as a recipe gives it (``~`` is expanded)."""

Classes = Annotated[int, between(0, MAX_LABEL + 1)]
"""The number of classes; 0: the class names' count, else the largest label plus one."""

KEYS = ("x_train", "y_train", "x_test", "y_test", "class_names")
"""The arrays an ``.npz`` dataset file may hold."""


def npz(*, path: NpzFile, num_classes: Classes = 0) -> DatasetSplits:
    """The arrays of a numpy ``.npz`` file (``np.savez``) as a dataset.

    ``x_train`` (N rows) and ``y_train`` (N integer labels) are the training split, ``x_test``
    and ``y_test`` the test split if present (else the engine carves one out), ``class_names``
    an optional 1-D array of strings. A ``uint8`` ``x`` of shape ``(N, C, H, W)`` (or
    ``(N, H, W)``, one channel; or ``(N, H, W, C)`` with 1, 3 or 4 channels where ``H`` is none
    of these counts, read as channels last) is images, normalised per channel with the
    training images' mean and standard deviation as every image loader's; any other numeric
    ``x`` is used as given, as ``float32`` (features, tabular data; standardise them beforehand
    if they need it).

    Args:
        path: the ``.npz`` file.
        num_classes: C; 0 takes the number of ``class_names``, else the largest label plus one
            (a class without samples in the file then needs ``num_classes``).

    Raises:
        KdcoreError: the file is missing or not an ``.npz`` file, holds an array not listed
            above or an object array, lacks ``x_train`` or ``y_train``, has ``x_test`` without
            ``y_test`` (or the reverse), arrays of mismatched lengths or shapes, a label that is
            not a whole number in ``0..C-1``, or a non-finite input.
    """
    require(path, "path", NpzFile, where="npz")
    require(num_classes, "num_classes", Classes, where="npz")
    file = Path(path).expanduser()
    arrays = _read(file)
    for needed in ("x_train", "y_train"):
        if needed not in arrays:
            raise KdcoreError(f"npz: {file} has no '{needed}' (it holds "
                              f"{', '.join(sorted(arrays)) or 'nothing'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise KdcoreError(f"npz: {file} has '{have}' but no '{lack}'; give both or neither")
    names = _class_names(arrays.get("class_names"), file)
    y_train = _labels(arrays["y_train"], "y_train", file)
    y_test = _labels(arrays["y_test"], "y_test", file) if "y_test" in arrays else None
    largest = max(int(y.max()) for y in (y_train, y_test) if y is not None and y.size)
    classes = num_classes or len(names) or largest + 1
    if names and len(names) != classes:
        raise KdcoreError(f"npz: {file} names {len(names)} classes, but num_classes is {classes}")
    if largest >= classes:
        raise KdcoreError(f"npz: {file} holds the label {largest}; with {classes} classes labels "
                          f"must lie in 0..{classes - 1}")
    x_train = _inputs(arrays["x_train"], "x_train", len(y_train), file)
    train = _split(x_train, y_train, classes, names, stats_from=None)
    test = None
    if y_test is not None:
        x_test = _inputs(arrays["x_test"], "x_test", len(y_test), file)
        if x_test.shape[1:] != x_train.shape[1:] or x_test.dtype != x_train.dtype:
            raise KdcoreError(f"npz: {file}'s x_test rows are {x_test.dtype} "
                              f"{tuple(x_test.shape[1:])}, x_train's {x_train.dtype} "
                              f"{tuple(x_train.shape[1:])}; they must match")
        test = _split(x_test, y_test, classes, names, stats_from=train)
    return DatasetSplits(train=train, test=test)


def _read(file: Path) -> dict[str, np.ndarray]:
    """Every array of ``file``, refusing names other than :data:`KEYS` and pickled objects."""
    if not file.is_file():
        if file.exists():
            raise KdcoreError(f"npz: {file} is not a regular file")
        raise KdcoreError(f"npz: {missing_path(file)} does not exist")
    try:
        archive = np.load(file, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise KdcoreError(f"npz: {file} is a single .npy array, not an .npz file of named "
                              f"arrays ({', '.join(KEYS)})")
        with archive:
            unknown = sorted(set(archive.files) - set(KEYS))
            if unknown:
                raise KdcoreError(f"npz: {file} holds '{unknown[0]}', which is none of "
                                  f"{', '.join(KEYS)}")
            return {name: archive[name] for name in archive.files}
    except KdcoreError:
        raise
    except OSError as exc:
        raise KdcoreError(f"npz: cannot read {file}: {os_reason(exc)}") from None
    except (ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        # an object array (a pickle), a damaged archive, a file that is no numpy file at all
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdcoreError(f"npz: {file} is not a readable .npz file of arrays ({reason})"
                          ) from None


def _labels(values: np.ndarray, name: str, file: Path) -> np.ndarray:
    if values.ndim != 1 or values.dtype.kind not in "iuf" or not values.size:
        raise KdcoreError(f"npz: {file}'s {name} is {values.dtype} of shape {values.shape}; "
                          "expected one integer label per sample (1-D, at least one)")
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            bad = int(np.flatnonzero(~whole)[0])
            raise KdcoreError(f"npz: {file}'s {name} gives sample {bad} the label "
                              f"{float(values[bad])!r}, not a whole number")
    if values.min() < 0:
        bad = int(np.flatnonzero(values < 0)[0])
        raise KdcoreError(f"npz: {file}'s {name} gives sample {bad} the label "
                          f"{values[bad].item()!r}; labels start at 0")
    if values.max() > MAX_LABEL:  # C classes make N x C tables: a label far off is a mistake
        bad = int(np.argmax(values))
        raise KdcoreError(f"npz: {file}'s {name} gives sample {bad} the label "
                          f"{values[bad].item()!r}, beyond any class range (at most "
                          f"{MAX_LABEL + 1:,} classes)")
    return values.astype(np.int64)


def _inputs(values: np.ndarray, name: str, rows: int, file: Path) -> torch.Tensor:
    if values.ndim < 2 or values.shape[0] != rows or values.dtype.kind not in "iuf":
        raise KdcoreError(f"npz: {file}'s {name} is {values.dtype} of shape {values.shape}; "
                          f"expected {rows} rows of numbers (one per label), at least 2-D")
    if values.dtype == np.uint8:
        if values.ndim == 3:  # (N, H, W): one channel
            values = values[:, None]
        if values.ndim != 4:
            raise KdcoreError(f"npz: {file}'s {name} is uint8 of shape {values.shape}: uint8 "
                              "inputs are images, (N, C, H, W) or (N, H, W); give features "
                              "as floats")
        if _channels_last(values.shape):
            values = values.transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(values))
    with np.errstate(over="ignore"):  # beyond float32 is inf, refused below
        x = values.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).reshape(rows, -1).all(axis=1))[0])
        raise KdcoreError(f"npz: {file}'s {name} has a value that is not finite in row {bad}"
                          f"{' (or beyond float32)' if np.isfinite(values).all() else ''}")
    return torch.from_numpy(np.ascontiguousarray(x))


_CHANNELS = (1, 3, 4)


def _channels_last(shape: tuple[int, ...]) -> bool:
    """Whether ``(N, A, B, D)`` images are ``(N, H, W, C)``, as PIL, Keras and OpenCV lay them
    out: ``D`` is a channel count (1, 3 or 4) and ``A`` is not. Where both are, channels
    first is read, as documented."""
    return shape[3] in _CHANNELS and shape[1] not in _CHANNELS


def _class_names(values: np.ndarray | None, file: Path) -> tuple[str, ...]:
    if values is None:
        return ()
    if values.ndim != 1 or values.dtype.kind != "U":
        raise KdcoreError(f"npz: {file}'s class_names is {values.dtype} of shape "
                          f"{values.shape}; expected a 1-D array of strings")
    return tuple(str(v) for v in values)


def _split(x: torch.Tensor, y: np.ndarray, classes: int, names: tuple[str, ...],
           stats_from: ArrayDataset | None) -> ArrayDataset:
    mean = std = None
    if x.dtype == torch.uint8:  # images: normalised as every image loader's
        mean, std = (channel_stats(x) if stats_from is None
                     else (stats_from.mean, stats_from.std))
    return ArrayDataset(x=x, y=torch.from_numpy(y), num_classes=classes, class_names=names,
                        mean=mean, std=std)


__all__ = ["KEYS", "npz"]
