"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so ``torch.load`` never
unpickles code; a user may resume runs and load teachers received from others safely.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
import threading
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from kdcore.errors import KdcoreError, missing_path, os_reason, weights_only_reason

CHECKPOINT = "checkpoint.pt"
#: the run's checkpoint before its last, kept until the run finishes: a resume whose last
#: checkpoint was damaged on disk goes on from it rather than start again
PREVIOUS = "checkpoint.previous.pt"


def save(state: dict[str, Any], path: Path, previous: Path | None = None) -> None:
    """Write ``state`` to ``path`` through a temporary file, so a kill never leaves half a file;
    with ``previous``, the file ``path`` held until now becomes ``previous``.

    Raises:
        KdcoreError: the file system refused the write (full, read-only, gone); the temporary
            file is removed and ``path`` is as it was.
    """
    _replace(path, lambda tmp: torch.save(state, tmp), previous)


def save_text(text: str, path: Path) -> None:
    """:func:`save` for a text file of the run (``recipe.toml``, ``summary.json``): a kill
    never leaves half of one, which a reader would take for the whole."""
    _replace(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _replace(path: Path, write: Callable[[Path], object], previous: Path | None = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if previous is not None and path.is_file():
            _keep_as(path, previous)
        os.replace(tmp, path)
    except BaseException as exc:  # a bug, the disk, or Ctrl-C: no half file left behind
        with contextlib.suppress(OSError):  # its folder may be what failed
            tmp.unlink(missing_ok=True)
        # torch's zip writer reports a failed write as a RuntimeError ("enforce fail at
        # inline_container.cc", "iostream error"); any other RuntimeError is not the disk's
        if isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and _write_failure(exc)):
            raise KdcoreError(f"cannot write {path}: {_disk_reason(exc, path.parent)}; the "
                              "files written before it are as they were") from None
        raise


def _keep_as(path: Path, previous: Path) -> None:
    """``previous`` becomes a hard link to ``path`` (no copy), renamed into place so that a
    kill leaves either file whole. Where the file system has no hard links, ``previous`` stays
    the older checkpoint it was (a resume from it is as exact, from further back)."""
    link = previous.with_suffix(previous.suffix + ".tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
    except OSError:
        return
    os.replace(link, previous)


def _write_failure(exc: RuntimeError) -> bool:
    return any(s in str(exc) for s in ("inline_container", "iostream", "file write failed"))


def _disk_reason(exc: BaseException, folder: Path) -> str:
    import shutil

    reason = os_reason(exc) if isinstance(exc, OSError) else "the write failed"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return reason
    return f"{reason} ({free} bytes free on its file system)"


def with_metadata(copy: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """``copy`` of a module's ``state_dict`` with the state dict's ``_metadata`` (each
    submodule's format version), which ``load_state_dict`` hands to every module: without it
    torchvision's MNASNet refuses its own weights ("version should be set to 1 or 2 instead of
    None") and BatchNorm reads them as its oldest format."""
    metadata = getattr(state, "_metadata", None)
    if metadata is None:
        return copy
    kept: OrderedDict[str, Any] = OrderedDict(copy)
    kept._metadata = metadata  # type: ignore[attr-defined]
    return kept


def snapshot(obj: Any) -> Any:
    """A copy of a state tree whose tensors no longer share memory with the live ones."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return with_metadata({k: snapshot(v) for k, v in obj.items()}, obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple takes its fields
        return type(obj)(*(snapshot(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundSaver:
    """Writes checkpoints on a background thread, one at a time, or in line.

    With ``background`` the GPU trains on while the CPU serialises the file; on a CPU-only run
    the thread would take cores from training, so the write happens in line. ``save`` first
    waits for the previous write, and the write is atomic (:func:`save`), so a kill at any
    moment leaves the last complete checkpoint.
    """

    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any], path: Path, previous: Path | None = None) -> None:
        self.wait()
        if not self.background:
            save(state, path, previous)
            return
        frozen = snapshot(state)  # the live tensors change as soon as training resumes

        def write() -> None:
            try:
                save(frozen, path, previous)
            except BaseException as exc:  # re-raised on the main thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name="kdcore-checkpoint", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        """Block until the last write is on disk; raise what it raised."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise KdcoreError(f"could not write checkpoint: {error}") from error


#: what every torch since 2.2 reads back with ``weights_only=True``, besides tensors; the
#: rest (a dtype, a device, a set, a complex number: admitted by some torch releases only)
#: is asked of the torch installed
_PLAIN = (bool, int, float, str, bytes, type(None))
_SEQUENCES = (list, tuple)
_MAPPINGS = (dict, OrderedDict)


def unloadable(state: Any) -> tuple[str, str] | None:
    """Where ``state`` holds a value that a checkpoint read with ``weights_only=True`` refuses
    (a NumPy scalar or array, a class of a plugin's own, a function), and that value's type:
    ``("['best'][0]", "numpy.float64")``; None when all of it reads back.

    Checked before a checkpoint is written: torch writes such a value without complaint, and
    only the resume, maybe days later, finds the file unreadable. Values outside the plain
    types (a set, a tensor subclass) are asked of torch itself, by a round trip in memory.
    """
    stack: list[tuple[str, Any]] = [("", state)]
    seen: set[int] = set()  # a list that holds itself is pickled once, and walked once
    while stack:
        at, value = stack.pop()
        kind = type(value)
        if kind in _PLAIN or kind is torch.Tensor or kind is nn.Parameter:
            continue
        if kind in _SEQUENCES or kind in _MAPPINGS:
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = value.items() if kind in _MAPPINGS else enumerate(value)
            for key, item in items:
                if kind in _MAPPINGS and type(key) not in _PLAIN and not _reads_back(key):
                    return f"{at}[{key!r}] (the key)", _type_name(key)
                stack.append((f"{at}[{key!r}]", item))
        elif not _reads_back(value):
            return at, _type_name(value)
    return None


def unloadable_message(owner: str, state: Any) -> str | None:
    """``"<owner> holds a numpy.float64 at ['best'], which ..."`` when :func:`unloadable` finds
    something in ``state``; else None."""
    found = unloadable(state)
    if found is None:
        return None
    at, kind = found
    where = f"holds a value of type {kind} at {at}" if at else f"is a value of type {kind}"
    return (f"{owner} {where}, which a checkpoint cannot hold: checkpoints are read back with "
            "weights_only=True, which admits tensors, numbers, strings, lists, tuples and "
            "dicts (float(x), x.tolist() or torch.as_tensor(x) converts a NumPy value)")


def _reads_back(value: Any) -> bool:
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        load_weights_only(buffer)
    except Exception:  # noqa: BLE001 - unpicklable, or refused on the way back: the answer
        return False
    return True


def _type_name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    top = sys.modules.get(module.split(".")[0])  # numpy.float64, not numpy._core....float64
    public = top is not None and getattr(top, kind.__qualname__, None) is kind
    return f"{top.__name__ if public else module}.{kind.__qualname__}"


def load_weights_only(source: str | os.PathLike[str] | BinaryIO) -> Any:
    """``torch.load(source, weights_only=True)`` onto the CPU, without the warning torch gives
    for a pickle protocol other than its own: it would only precede the caller's one-line
    refusal of a file that holds more than tensors and plain data."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(source, map_location="cpu", weights_only=True)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` (or a weights file); a damaged one is refused
    (:func:`_check_archive`)."""
    try:
        _check_archive(path)
        return load_weights_only(path)
    except FileNotFoundError:
        raise KdcoreError(f"checkpoint not found: {missing_path(path)}") from None
    except Exception as exc:  # unpickling errors of a damaged or foreign file
        raise KdcoreError(f"cannot read checkpoint {path}: {weights_only_reason(exc)}") from None


def _check_archive(path: Path) -> None:
    """Check the CRC-32 that a torch file's zip archive keeps of each of its records.

    ``torch.load`` does not: a damaged byte in a tensor, or in the run's state, loaded as
    another value, and a resume went on from it, diverging silently from the run it continued.
    A file that is not a zip archive (torch's legacy format) is left to ``torch.load``.

    Raises:
        ValueError: a record's bytes do not match its CRC-32.
        zipfile.BadZipFile: the archive's own structure is damaged.
    """
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise ValueError(f"the file is damaged (its record {damaged} fails its CRC-32 check)")


def save_weights(model: nn.Module, path: Path) -> None:
    """A model's weights file (:func:`weights_of`), written atomically."""
    save(weights_of(model), path)


def weights_of(model: nn.Module) -> dict[str, Any]:
    """A model's ``state_dict`` for a weights file, loadable as a recipe's
    ``models.<role>.checkpoint``: its tensors detached, on the CPU, and its extra state (what
    its ``get_extra_state`` returns, which need not be a tensor) as it is."""
    state = model.state_dict()
    return with_metadata({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                          for k, v in state.items()}, state)


def load_weights(path: str | Path, role: str) -> dict[str, torch.Tensor]:
    """Weights for ``role`` from a kdcore weights file, a kdcore checkpoint or a state dict."""
    path = Path(path)
    if not path.is_file():  # a directory, FIFO or device is refused before it is opened
        what, shown = (("is not a regular file", path) if path.exists()
                       else ("not found", missing_path(path)))
        raise KdcoreError(f"checkpoint for model '{role}' {what}: {shown}")
    state = load(path)
    if not isinstance(state, dict):  # a bare tensor, a list: not a state dict
        raise KdcoreError(f"{path} holds a {type(state).__name__}, not the weights of a model "
                          "(a state dict, a kdcore weights file or a kdcore checkpoint)")
    if "models" in state and isinstance(state["models"], dict):  # a full run checkpoint
        if role not in state["models"]:
            raise KdcoreError(f"{path} holds no model '{role}'; it has "
                              f"{', '.join(state['models'])}")
        state = state["models"][role]
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    return state


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Every random state the run draws from: torch (CPU and CUDA), Python, its generators."""
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(_flatten_python_state(random.getstate())),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten_python_state(state: tuple[Any, ...]) -> tuple[Any, ...]:
    version, internal, gauss = state
    return version, list(internal), gauss
