"""Unpickling numpy arrays without running code.

CIFAR's python release and the CIFAR-N label files are pickles, and unpickling may call any
function the file names: a crafted file given as a dataset root or label file would run code
during ``kdcore run``. Both formats hold only dicts, lists, bytes, numbers and numpy arrays, so
the only globals they may name are numpy's array reconstruction helpers; everything else is
refused before it is looked up.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from kdcore.errors import KdcoreError, one_line

try:
    from numpy._core import multiarray as _multiarray  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

# numpy 1.x (which wrote the real release files) names "numpy.core.multiarray", numpy 2
# "numpy._core.multiarray"; both resolve to the objects imported here, so the module the file
# names is never imported.
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")

ARRAY_GLOBALS: dict[tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _multiarray._reconstruct for module in _MULTIARRAY},
    **{(module, "scalar"): _multiarray.scalar for module in _MULTIARRAY},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""Every global a pickle of numpy arrays may name, by ``(module, name)`` as the file spells it."""

# Booleans, integers and floats: what images and labels are stored as. Object arrays are left
# out on purpose: their elements would be arbitrary pickled objects.
_DTYPE_CODES = "?" + np.typecodes["AllInteger"] + np.typecodes["Float"]


def torch_array_globals() -> list[Any]:
    """:data:`ARRAY_GLOBALS` in the form ``torch.serialization.safe_globals`` takes.

    Each global is given under the name the file uses, and numpy's dtype classes are added:
    torch's ``weights_only`` unpickler also checks the type of every object whose state it
    sets, and an unpickled ``np.dtype("int64")`` is an instance of ``numpy.dtypes.Int64DType``.
    """
    named: list[Any] = [(obj, f"{module}.{name}") for (module, name), obj in ARRAY_GLOBALS.items()]
    dtype_classes = dict.fromkeys(type(np.dtype(code)) for code in _DTYPE_CODES)
    return named + list(dtype_classes)


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside :data:`ARRAY_GLOBALS`; the message is its name."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def load_array_pickle(path: Path, what: str) -> Any:
    """Unpickle ``path``, admitting only the globals numpy arrays need.

    Args:
        path: the pickle file.
        what: the kind of file, for messages (``"CIFAR file"``).

    Raises:
        KdcoreError: the file cannot be read, is not a pickle, or names any other global.
    """
    try:
        with open(path, "rb") as handle:
            # The CIFAR release was pickled by Python 2; encoding="bytes" keeps its str keys
            # and array buffers as bytes instead of guessing a text encoding.
            return _ArrayUnpickler(handle, encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise KdcoreError(
            f"{what} {path} is not loaded: it names the Python global {exc}, but the format holds "
            "only numpy arrays, lists, bytes and numbers, and unpickling it could run code"
        ) from None
    except Exception as exc:  # a malformed pickle fails in many ways; each means a bad file
        raise KdcoreError(f"cannot read {what} {path}: {one_line(exc)}") from None
