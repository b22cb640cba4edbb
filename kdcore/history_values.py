"""How the history stores a ledger column's values: the dtype of each column kind, the fill
value of the rows a column skips, the filters, and the conversion itself (numpy's cast, done
on torch's side for a tensor).

A ``mask`` column is stored as bool while every value is 0 or 1 (a hard selection), and as
float16 once a selector returns soft scores: stored as bool, a score of 0.3 read back as
True, so the history showed a sample as fully selected where the loss had weighted it by 0.3.
A column stored as bool that receives soft scores later is widened to float16 in place
(:func:`widened`), its earlier rows kept as 0 and 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from kdcore.tensor_version import version

STORE_DTYPE = {"target": np.float16, "weight": np.float16, "value": np.float16,
               "exact": np.float32, "mask": np.bool_, "label": np.int32}
FILL = {np.float16: np.nan, np.float32: np.nan, np.bool_: False, np.int32: -1}
SOFT_MASK = np.float16
F16_MAX = float(np.finfo(np.float16).max)
"""The largest finite float16 (65504): the history's logits past it are stored as ±inf."""


NO_LABEL = -1


def target_labels(targets: np.ndarray) -> np.ndarray:
    """The label of each target row (over the last axis): the class that holds its largest
    value alone, or :data:`NO_LABEL` where several tie for it (a uniform row, label smoothing
    with epsilon 1, names no label; argmax had named the first class)."""
    labels = targets.argmax(-1)
    tied = (targets == targets.max(-1, keepdims=True)).sum(-1) > 1
    return np.where(tied, NO_LABEL, labels)


#: every chunk carries a Fletcher-32 checksum that HDF5 checks when it reads the chunk back, so
#: a flipped bit or a zeroed block on disk is a read error ("the history is damaged"), never
#: another value: Zstd's frames carry no checksum of their own (a damaged ledger chunk could
#: decode to other numbers), and the metrics are stored as they are
CHECKSUMMED: Mapping[str, Any] = {"fletcher32": True}


def compression() -> Mapping[str, Any]:
    # level 1: as small as level 3 on these columns (float16 rows), and faster
    return hdf5plugin.Zstd(clevel=1)


def store_dtype(kind: str, values: Any) -> Any:
    """The numpy dtype column ``values`` of ``kind`` is stored as (a key of :data:`FILL`)."""
    if kind == "mask" and not _binary(values):
        return SOFT_MASK
    return STORE_DTYPE[kind]


def _binary(values: Any) -> bool:
    """Whether every value is 0 or 1 (NaN is not: stored as bool it read back as True)."""
    return bool(((values == 0) | (values == 1)).all())


def as_numpy(values: Any, dtype: Any) -> np.ndarray:
    """A column's values as ``dtype``; numpy arrays pass, tensors convert on torch's side
    (vectorised, on the GPU when the ledger is there) before the copy to the host."""
    if isinstance(values, np.ndarray):
        with np.errstate(over="ignore"):  # out of float16's range is inf, as torch's cast
            return values.astype(dtype, copy=False)
    import torch

    as_torch = {np.float16: torch.float16, np.float32: torch.float32, np.bool_: torch.bool,
                np.int32: torch.int32}[dtype]
    return values.detach().to(as_torch).cpu().numpy()


F16_EXACT_INTEGERS = 2048
"""The largest integer below which float16 holds every integer: 2049 is stored as 2048."""


def storage_loss(values: Any, stored: np.ndarray) -> str | None:
    """What ``stored``, the copy of a column's ``values`` (a tensor or numpy array) the history
    keeps, lost that its reader would not know, or None. As float16: integers past
    :data:`F16_EXACT_INTEGERS` that it rounded (float16 steps by 2 up to 4096, by 4 to 8192,
    ...), or finite values past :data:`F16_MAX` (stored as ±inf). As int32 (a ``label``
    column): fractions or NaN, cut to whole numbers. Cheap where nothing was lost: one pass
    over the values or the stored bits."""
    if not stored.size:
        return None
    numpy = isinstance(values, np.ndarray)
    if stored.dtype == np.int32:
        if (values.dtype.kind != "f") if numpy else not values.is_floating_point():
            return None
        cut = int(np.count_nonzero(stored != host(values)))
        return (f"{cut:,} of its values are not whole numbers, cut to int32 (a column of "
                "fractions is declared kind 'value', float16, or 'exact', float32)"
                if cut else None)
    if stored.dtype != np.float16:
        return None
    integers = (values.dtype.kind in "iu" if numpy
                else not values.is_floating_point() and not values.is_complex()
                and values.dtype != _torch_bool())
    if integers:
        largest = int(abs(values).max())
        if largest <= F16_EXACT_INTEGERS:
            return None
        rounded = int(np.count_nonzero(stored.astype(np.float64) != host(values)))
        if not rounded:
            return None
        return (f"{rounded:,} of its whole numbers past {F16_EXACT_INTEGERS} are rounded (up to "
                f"{largest:,}; a column of whole numbers is declared kind 'label', int32)")
    # an exponent of all ones is inf or NaN: only then is the source compared
    if (stored.view(np.uint16) & 0x7FFF).max() < 0x7C00:
        return None
    overflowed = int(np.isinf(stored).sum()) - (int(np.isinf(values).sum()) if numpy else
                                                int(values.isinf().sum()))
    if overflowed <= 0:
        return None
    return (f"finite values past ±{F16_MAX:g} are stored as ±inf ({overflowed:,} of them; a "
            "column that needs them is declared kind 'exact', float32)")


def _torch_bool() -> Any:
    import torch

    return torch.bool


def host(values: Any) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else values.detach().cpu().numpy()


def widened(group: h5py.Group, name: str, dtype: Any) -> h5py.Dataset:
    """Dataset ``name`` of ``group`` (a ledger column stored as bool) rewritten as ``dtype``,
    with its rows, chunking, filters and attributes; its rows so far become 0 and 1."""
    old = group[name]
    rows, attrs, maxshape, chunks = old[:].astype(dtype), dict(old.attrs), old.maxshape, old.chunks
    del group[name]
    new = group.create_dataset(name, data=rows, maxshape=maxshape, chunks=chunks,
                               fillvalue=FILL[dtype], shuffle=True, **compression(),
                               **CHECKSUMMED)
    new.attrs.update(attrs)
    return new


__all__ = ["CHECKSUMMED", "F16_EXACT_INTEGERS", "F16_MAX", "FILL", "NO_LABEL", "STORE_DTYPE",
           "as_numpy", "compression", "host", "storage_loss", "store_dtype", "target_labels",
           "version", "widened"]
