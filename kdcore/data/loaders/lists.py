"""Images named by list files: a generic ``path label`` list, and Clothing1M's layout.

Both stream by default (``stream = true``): only the file names and labels are kept, and each
batch's images are decoded when it is needed, in ``data.workers`` DataLoader processes. Paths in
the lists are relative to ``root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from kdcore.data.base import DatasetSplits
from kdcore.data.loaders.folder import image_split
from kdcore.data.loaders.paths import Directory, given_dir
from kdcore.errors import KdcoreError, missing_path
from kdcore.validators import no_nul, positive, require

Size = Annotated[int, positive]
"""The side length images are resized to, at least 1."""

ListFile = Annotated[str, no_nul]
"""A list file's path, relative to ``root`` unless absolute."""

CLOTHING1M_FILES = {
    "noisy_labels": "noisy_label_kv.txt",
    "noisy_train": "noisy_train_key_list.txt",
    "clean_labels": "clean_label_kv.txt",
    "clean_test": "clean_test_key_list.txt",
    "names": "category_names_eng.txt",
}
"""The files of Clothing1M's release that :func:`clothing1m` reads, under its root."""


# A class index beyond this is a mistake in the file, not a label space (ImageNet-21k has
# 21,841 classes); the loader builds C class names before the run's own memory checks.
MAX_LABEL = 2**20 - 1


def _lines(path: Path, loader: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Notepad writes one): dropped
    except FileNotFoundError:
        raise KdcoreError(f"{loader}: {missing_path(path)} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KdcoreError(f"{loader}: cannot read {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_label_list(path: Path, loader: str) -> dict[str, int]:
    """A ``relative/path label`` list as a dict (label a non-negative integer).

    A path listed again with the same label counts once.

    Raises:
        KdcoreError: the file is missing, a line is not a path and an integer label, or a
            path is listed with two different labels.
    """
    labels: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(_lines(path, loader), 1):
        parts = line.rsplit(None, 1)
        # isdecimal, not isdigit: int() refuses "²", which isdigit takes
        if len(parts) != 2 or not parts[1].isdecimal():
            raise KdcoreError(f"{loader}: {path} line {number} is '{line[:80]}'; every line "
                              "must be an image path and an integer label")
        # int() of thousands of digits is refused (and slow): a label that long is too large
        label = int(parts[1]) if len(parts[1].lstrip("0")) < 19 else MAX_LABEL + 1
        if label > MAX_LABEL:  # the class names and per-class tables would not fit
            raise KdcoreError(f"{loader}: {path} line {number} has label {parts[1][:40]}; "
                              f"labels are class indices 0 .. C-1, at most {MAX_LABEL}")
        # a path listed twice with two labels: which one is true is not ours to pick
        if labels.setdefault(parts[0], label) != label:
            raise KdcoreError(
                f"{loader}: {path} lists {parts[0]} with label {labels[parts[0]]} on line "
                f"{first_line[parts[0]]} and with label {label} on line {number}")
        first_line.setdefault(parts[0], number)
    return labels


def _labelled(root: Path, keys: list[str], labels: dict[str, int], where: Path, loader: str
              ) -> tuple[list[str], torch.Tensor]:
    missing = [k for k in keys if k not in labels]
    if missing:
        raise KdcoreError(f"{loader}: {len(missing)} images of {where} have no label (first: "
                          f"{missing[0]})")
    return [str(root / k) for k in keys], torch.tensor([labels[k] for k in keys],
                                                        dtype=torch.int64)


def _classes(count: int, names: list[str] | None, loader: str) -> tuple[str, ...]:
    if names is None:
        return tuple(str(c) for c in range(count))
    if len(names) < count:
        raise KdcoreError(f"{loader}: {len(names)} class names for labels up to {count - 1}")
    return tuple(names)


def image_list(*, root: Directory, train_list: ListFile, size: Size = 224,
               test_list: ListFile | None = None, class_names: ListFile | None = None,
               stream: bool = True) -> DatasetSplits:
    """Images named in list files of ``relative/path label`` lines (labels 0 .. C-1).

    Args:
        root: the directory the listed paths are relative to.
        train_list: the training list (relative to ``root``, or absolute).
        size: the side length every image is resized to (RGB, bilinear).
        test_list: an optional test list in the same format.
        class_names: an optional file of class names, one per line, in label order.
        stream: decode images batch by batch (default), or read them all into memory.

    Raises:
        KdcoreError: a missing file, a malformed line, or an unreadable image.
    """
    require(size, "size", Size, where="image_list")
    base = given_dir(root, "root", loader="image_list", holds="the listed images")
    train_file = base / train_list
    labels = read_label_list(train_file, "image_list")
    if not labels:
        raise KdcoreError(f"image_list: {train_file} lists no images")
    test_labels = read_label_list(base / test_list, "image_list") if test_list else {}
    count = max([*labels.values(), *test_labels.values()]) + 1
    names = _lines(base / class_names, "image_list") if class_names else None
    classes = _classes(count, names, "image_list")
    paths, y = _labelled(base, list(labels), labels, train_file, "image_list")
    train = image_split(paths, y, classes, size, stream, loader="image_list")
    test = None
    if test_list:
        test_paths, test_y = _labelled(base, list(test_labels), test_labels, base / test_list,
                                       "image_list")
        test = image_split(test_paths, test_y, classes, size, stream, stats_from=train,
                           loader="image_list")
    return DatasetSplits(train=train, test=test)


def clothing1m(*, root: Directory, size: Size = 224, stream: bool = True) -> DatasetSplits:
    """Clothing1M's layout (Xiao et al. 2015): web images of 14 clothing classes whose labels
    come from the surrounding text.

    Under ``root``: the images at the paths the lists name (``images/<a>/<b>/<id>.jpg``),
    ``noisy_label_kv.txt`` and ``clean_label_kv.txt`` (``path label`` lines),
    ``noisy_train_key_list.txt`` and ``clean_test_key_list.txt`` (one path per line), and
    optionally ``category_names_eng.txt`` (one class name per line).

    The training split is the noisy training list with its **given (noisy) labels**: the true
    labels of those images are unknown, so recipes use ``data.noise.model = "none"`` and the
    history's label metrics (``label/acc``, selection precision) measure agreement with the
    given labels, not correctness. The test split is the clean test list with its clean labels;
    the validation split is carved from the training list (``data.val_fraction``), noisy like it.

    Raises:
        KdcoreError: a missing file, a listed image without a label, or an unreadable image.
    """
    require(size, "size", Size, where="clothing1m")
    base = given_dir(root, "root", loader="clothing1m", holds="Clothing1M's images and lists")
    files = {k: base / v for k, v in CLOTHING1M_FILES.items()}
    noisy = read_label_list(files["noisy_labels"], "clothing1m")
    clean = read_label_list(files["clean_labels"], "clothing1m")
    train_keys = _lines(files["noisy_train"], "clothing1m")
    test_keys = _lines(files["clean_test"], "clothing1m")
    if not train_keys:
        raise KdcoreError(f"clothing1m: {files['noisy_train']} lists no images")
    names = _lines(files["names"], "clothing1m") if files["names"].exists() else None
    count = max([noisy[k] for k in train_keys if k in noisy] + [clean[k] for k in test_keys
                                                                  if k in clean] + [13]) + 1
    classes = _classes(count, names, "clothing1m")
    paths, y = _labelled(base, train_keys, noisy, files["noisy_train"], "clothing1m")
    train = image_split(paths, y, classes, size, stream, loader="clothing1m")
    test = None
    if test_keys:
        test_paths, test_y = _labelled(base, test_keys, clean, files["clean_test"], "clothing1m")
        test = image_split(test_paths, test_y, classes, size, stream, stats_from=train,
                           loader="clothing1m")
    return DatasetSplits(train=train, test=test)


__all__ = ["CLOTHING1M_FILES", "clothing1m", "image_list", "read_label_list"]
