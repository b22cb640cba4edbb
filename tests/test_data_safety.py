"""Data files are read without running code: crafted CIFAR batches and CIFAR-N label files are
refused, directly and through ``kdcore run``, while genuine ones (as the releases wrote them)
still load."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.data.loaders import cifar10, cifar_n_labels
from kdcore.errors import KdcoreError
from kdcore.testing import teacher_stage, tiny_recipe, write_recipe
from tests.test_data_loaders import _release, _write_cifar10


class _MakesMarker:
    """Unpickles as ``os.mkdir(path)``: the directory appearing proves that loading ran code.
    (``os.mkdir`` takes the path as bytes too, which is how a Python 2 pickle's strings load.)"""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


CALLED = f"{os.mkdir.__module__}.mkdir"
"""How a pickle names the function: ``posix.mkdir`` on Linux."""


def _assert_is_an_exploit(load: Callable[[], Any], marker: Path) -> None:
    # Shows the crafted file does run code when loaded the trusting way the loaders used to,
    # so a refusal below is the loader's doing, not a dud payload's.
    load()
    assert marker.is_dir()
    marker.rmdir()


def _one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message


# -- CIFAR batches ------------------------------------------------------------------------------


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes every ``str`` and ``bytes`` as a Python 2 ``str``, as the CIFAR release was
    pickled (``pickle`` in Python 3 writes bytes through ``_codecs.encode`` instead)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def _as_numpy1(pickled: bytes) -> bytes:
    # numpy 1.x, which wrote both releases, names its helpers under numpy.core.
    return pickled.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _python2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return _as_numpy1(buffer.getvalue())


def _crafted_batch(marker: Path, python2: bool) -> bytes:
    batch = {b"data": _MakesMarker(marker), b"labels": [0, 1]}
    return _python2_pickle(batch) if python2 else pickle.dumps(batch, protocol=4)


# A Python 2 pickle names globals with GLOBAL, a Python 3 one with STACK_GLOBAL.
@pytest.mark.parametrize("python2", [True, False])
@pytest.mark.parametrize("name", ["data_batch_2", "batches.meta"])
def test_crafted_cifar_file_is_refused_without_running(tmp_path: Path, python2: bool,
                                                       name: str) -> None:
    _write_cifar10(tmp_path)
    marker = tmp_path / "MARKER"
    payload = _crafted_batch(marker, python2)
    _assert_is_an_exploit(lambda: pickle.loads(payload, encoding="bytes"), marker)
    crafted = tmp_path / "cifar-10-batches-py" / name
    crafted.write_bytes(payload)
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert not marker.exists()
    message = str(err.value)
    _one_line(message)
    assert str(crafted) in message and CALLED in message


def test_cifar_file_with_any_other_global_is_refused(tmp_path: Path) -> None:
    # Not a code-running payload, just a global outside numpy's array helpers: the allowlist,
    # not a blocklist of dangerous names, decides.
    _write_cifar10(tmp_path)
    crafted = tmp_path / "cifar-10-batches-py" / "test_batch"
    crafted.write_bytes(pickle.dumps({b"data": OrderedDict(), b"labels": [0]}))
    with pytest.raises(KdcoreError, match="collections.OrderedDict"):
        cifar10(root=str(tmp_path))


def test_cifar_batch_as_the_release_wrote_it_loads(tmp_path: Path) -> None:
    images, labels, test_images = _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(5):
        batch = {b"batch_label": f"training batch {i + 1} of 5", b"filenames": [b"a.png"] * 2,
                 b"data": images[2 * i: 2 * i + 2].reshape(2, 3072),
                 b"labels": labels[2 * i: 2 * i + 2].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(_python2_pickle(batch))
    assert b"numpy.core.multiarray\n_reconstruct" in (folder / "data_batch_1").read_bytes()
    splits = cifar10(root=str(tmp_path))
    assert np.array_equal(splits.train.x.numpy(), images)
    assert np.array_equal(splits.train.y.numpy(), labels)
    assert splits.test is not None and np.array_equal(splits.test.x.numpy(), test_images)


# -- CIFAR-N label files ------------------------------------------------------------------------


def _crafted_cifar_n(path: Path, marker: Path, protocol: int = 2) -> Path:
    torch.save({**_release(), "worse_label": _MakesMarker(marker)}, path, pickle_protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("as_buffer", [False, True])  # a path, or bytes from the optional zip
def test_crafted_cifar_n_file_is_refused_without_running(tmp_path: Path, protocol: int,
                                                         as_buffer: bool) -> None:
    marker = tmp_path / "MARKER"
    path = _crafted_cifar_n(tmp_path / "CIFAR-10_human.pt", marker, protocol)
    _assert_is_an_exploit(lambda: torch.load(path, weights_only=False), marker)
    source: Any = io.BytesIO(path.read_bytes()) if as_buffer else str(path)
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(source)
    assert not marker.exists()
    message = str(err.value)
    _one_line(message)
    assert "CIFAR-N label file" in message
    if protocol == 2:  # what torch.save writes: the scan names the global
        assert CALLED in message
    assert "weights_only" not in message  # torch's advice to load it unsafely is not passed on


def test_cifar_n_file_as_the_release_wrote_it_loads(tmp_path: Path) -> None:
    saved = tmp_path / "saved.pt"
    torch.save(_release(), saved)
    path = tmp_path / "CIFAR-10_human.pt"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, _as_numpy1(data) if info.filename.endswith("data.pkl") else data)
    named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    assert "numpy.core.multiarray._reconstruct" in named
    columns = cifar_n_labels(str(path))
    assert columns["worse_label"].tolist() == _release()["worse_label"].tolist()
    assert all(column.dtype == torch.int64 for column in columns.values())


# -- through the command line -------------------------------------------------------------------


def _run(tmp_path: Path, data: dict[str, Any], models: dict[str, Any] | None = None) -> Any:
    """``kdcore run`` in process on a tiny recipe with these ``[data]`` keys (and models)."""
    recipe = tiny_recipe(teacher_stage(1), data=data, models=models)
    path = write_recipe(recipe, tmp_path / "recipe.toml")
    return CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "run")],
                              catch_exceptions=False)


def _assert_one_error_line(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdcore: error:"), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


def test_cli_refuses_a_crafted_cifar_root(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    _write_cifar10(root)
    marker = tmp_path / "MARKER"
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(_crafted_batch(marker, True))
    result = _run(tmp_path, {"dataset": "cifar10", "params": {"root": str(root)}})
    _assert_one_error_line(result, "data_batch_1", CALLED)
    assert not marker.exists()


def test_cli_refuses_a_crafted_cifar_n_file(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = _crafted_cifar_n(tmp_path / "CIFAR-10_human.pt", marker)
    result = _run(tmp_path, {"noise": {"model": "cifar_n", "params": {"path": str(path)}}})
    _assert_one_error_line(result, str(path), CALLED)
    assert not marker.exists()
