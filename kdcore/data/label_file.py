"""Noise read from a file of noisy labels, so that runs and codebases share one corruption
(:func:`label_file`), and the writer of such files (:func:`labels_file_bytes`, behind
``kdcore noise``).

DivideMix and its successors write the noisy labels of CIFAR's training set to a JSON list and
read them back in every run of a comparison; a file is also how a corruption made elsewhere
(a human relabelling, another tool's noise) reaches kdcore. Nothing in the file is executed:
``.npy`` is read without pickle, ``.json`` as data, text as integers.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from kdcore.data.base import NoiseContext
from kdcore.errors import LONG_INTEGER, KdcoreError, long_integer, missing_path, os_reason

FORMATS = (".npy", ".json", ".txt", ".csv")
"""The suffixes :func:`label_file` reads."""


def label_file(ctx: NoiseContext, *, path: str) -> torch.Tensor:
    """Each sample's noisy label read from ``path``, one per row of the loader's training split.

    Row ``i`` of the file is the label of sample id ``i`` (the row of the dataset loader's
    training split, which the history keeps as ``/data/sample_id``), so the file covers the
    whole split in the loader's order and each run reads the rows it uses, whatever its seed,
    validation split or ``train_subset``. No randomness is drawn. Formats, by suffix:

    * ``.npy``: a 1-D array of integers (or of floats that are whole numbers); no pickle.
    * ``.json``: a list of integers (DivideMix's noise files).
    * ``.txt``, ``.csv``: one integer per line (blank lines skipped).

    Args:
        ctx: the clean labels and their rows in the loader's training split
            (``source_index``, ``source_size``; without them the file's rows are the labels'
            own, in order).
        path: the file.

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.

    Raises:
        KdcoreError: the file is missing, unreadable or of another format, holds something
            other than whole numbers, has another number of rows than the split, or a label
            outside ``0..C-1``.
    """
    labels = read_labels(path)
    rows = (ctx.source_index.reshape(-1).cpu() if ctx.source_index is not None
            else torch.arange(ctx.labels.numel()))
    size = ctx.source_size if ctx.source_index is not None else ctx.labels.numel()
    if size is None:  # rows without the split's size: the file must reach every row
        if len(rows) and int(rows.max()) >= len(labels):
            raise KdcoreError(f"label_file: {path} holds {len(labels):,} labels, but the "
                              f"samples' rows reach {int(rows.max()):,}")
        size = len(labels)
    if len(labels) != size:
        raise KdcoreError(f"label_file: {path} holds {len(labels):,} labels, but the dataset's "
                          f"training split has {size:,} samples (one label per sample, in the "
                          "loader's order)")
    if len(labels) and (labels.min() < 0 or labels.max() >= ctx.num_classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= ctx.num_classes))[0])
        raise KdcoreError(f"label_file: {path} gives sample {bad} the label {int(labels[bad])}; "
                          f"labels must lie in 0..{ctx.num_classes - 1}")
    noisy = torch.from_numpy(labels)
    return noisy[rows].reshape(ctx.labels.shape).to(ctx.labels.device)


def read_labels(path: str) -> np.ndarray:
    """The integer labels in ``path`` (one of :data:`FORMATS`) as ``int64``.

    Raises:
        KdcoreError: as :func:`label_file`, for the file itself.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in FORMATS:
        raise KdcoreError(f"label_file: {path} is not a {', '.join(FORMATS)} file")
    try:
        if suffix == ".npy":
            raw = _load_npy(file, path)
        elif suffix == ".json":
            raw = json.loads(file.read_text(encoding="utf-8-sig"))  # a BOM: dropped
        else:
            raw = [_integer(line, path, n) for n, line in
                   enumerate(file.read_text(encoding="utf-8-sig").splitlines(), 1) if line.strip()]
    except FileNotFoundError:
        raise KdcoreError(f"label_file: {missing_path(path)} does not exist") from None
    except OSError as exc:
        raise KdcoreError(f"label_file: cannot read {path}: {os_reason(exc)}") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # JSON that is not JSON, bytes that are not text, a number past what int() reads
        why = (LONG_INTEGER if long_integer(exc) else
               str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise KdcoreError(f"label_file: {path} is not a readable {suffix} file of labels "
                          f"({why})") from None
    return _whole_numbers(raw, path)


def _load_npy(file: Path, path: str) -> np.ndarray:
    """The array in a ``.npy`` file, memory-mapped: a header claiming more rows than the file
    holds is refused rather than allocated, and an object array (a pickle) cannot be mapped."""
    try:
        with warnings.catch_warnings():  # numpy's note on a damaged header's Python 2 syntax
            warnings.simplefilter("ignore")
            return np.array(np.load(file, mmap_mode="r", allow_pickle=False))
    except OSError:
        raise
    except Exception as exc:
        # numpy parses the header as a Python literal: a damaged one fails with whatever the
        # parser meets (TypeError, SyntaxError, tokenize's TokenError, ...), never runs code
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KdcoreError(f"label_file: {path} is not a readable .npy file of labels "
                          f"({reason})") from None


def _integer(line: str, path: str, number: int) -> int:
    try:
        return int(line.strip())
    except ValueError:
        raise KdcoreError(f"label_file: line {number} of {path} is {line.strip()[:40]!r}, not "
                          "a label (one integer per line)") from None


def _whole_numbers(raw: object, path: str) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        if raw.ndim != 1 or raw.dtype.kind not in "iuf":
            raise KdcoreError(f"label_file: {path} holds an array of shape {raw.shape} and dtype "
                              f"{raw.dtype}; expected one integer label per sample (1-D)")
        values = raw
    else:
        if not isinstance(raw, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
            raise KdcoreError(f"label_file: {path} must hold a list of integer labels")
        if any(isinstance(v, float) and not math.isfinite(v) for v in raw):
            raise KdcoreError(f"label_file: {path} holds a label that is not a finite number")
        if any(isinstance(v, int) and abs(v) >= 2 ** 62 for v in raw):
            raise KdcoreError(f"label_file: {path} holds a label far outside any class range")
        values = np.asarray(raw, dtype=np.float64 if any(isinstance(v, float) for v in raw)
                            else np.int64)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2 ** 62)
        if not whole.all():
            bad = int(np.flatnonzero(~whole)[0])
            raise KdcoreError(f"label_file: {path} gives sample {bad} the label "
                              f"{float(values[bad])!r}, not a whole number")
    return values.astype(np.int64)


def labels_file_bytes(labels: torch.Tensor | np.ndarray, suffix: str) -> bytes:
    """``labels`` (1-D integers) as the contents of a :func:`label_file` file of ``suffix``.

    Raises:
        KdcoreError: ``suffix`` is not one of :data:`FORMATS`.
    """
    values = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels,
                        dtype=np.int64).reshape(-1)
    suffix = suffix.lower()
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, values, allow_pickle=False)
        return buffer.getvalue()
    if suffix == ".json":
        return (json.dumps(values.tolist()) + "\n").encode()
    if suffix in FORMATS:
        return "".join(f"{v}\n" for v in values.tolist()).encode()
    raise KdcoreError(f"a label file ends in {', '.join(FORMATS)}, not {suffix or 'nothing'!r}")
