"""Helpers for testing kdcore plugins: a component harness that runs one component's hooks in
milliseconds, tiny recipes on the built-in digits, and exact history comparison for resume tests.

A component's unit test builds it with :func:`harness` (a real context over data the test
gives, no recipe file, no history; ``beside`` places the components it works with after it)
and calls its hooks, or trains as a run does::

    h = harness(MySelector, {"rate": 0.2}, x=x, noisy_label=y, models={"student": net},
                beside=[component("ce")])
    h.setup()
    mask = h.component.select(h.ctx, h.batch(torch.arange(8)))
    metrics = h.fit()  # the stage's epochs: every batch's step, as a run takes it

kdcore's first-party plugins test themselves with these; a third-party plugin can do the same::

    from kdcore.testing import component, run_tiny, stage, teacher_stage, tiny_recipe

    recipe = tiny_recipe(teacher_stage(), stage("student", 2, ["student"], component("my_kd")))
    summary = run_tiny(recipe, tmp_path / "run", plugins=[MyPlugin()])

Two fixtures keep plugin test suites quiet and fast; import them into a ``conftest.py`` to
apply them to every test there (``from kdcore.testing import one_thread, quiet_logs``).

A tiny recipe trains in a second or two on 2 CPU cores: 300 digits, 40% symmetric noise, an
MLP [32] teacher and an MLP [16] student, checkpoints every epoch (resume tests stop runs
mid-stage).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from loguru import logger

from kdcore.engine import run_recipe
from kdcore.history import History
from kdcore.hookspecs import hookimpl
from kdcore.plugins import PluginHost
from kdcore.recipe import load_recipe
from kdcore.runstate import component_seed
from kdcore.testing_harness import Harness, harness
from kdcore.testing_recipes import (
    COUNTS,
    MODELS,
    NUMBERS,
    PEER,
    accepted_compositions,
    check_tiny,
    component,
    random_choices,
    random_composition,
    stage,
    teacher_stage,
    tiny_recipe,
    write_recipe,
)
from kdcore.testing_stubs import ColumnReader, ColumnReaderPlugin, TinyNet

__all__ = ["COUNTS", "MODELS", "NUMBERS", "PEER", "ColumnReader", "ColumnReaderPlugin",
           "Harness", "InterruptAt", "Interrupted", "TinyNet", "accepted_compositions",
           "assert_close_history", "assert_same_history", "check_tiny", "component",
           "component_seed", "harness",
           "one_thread", "quiet_logs", "random_choices", "random_composition", "run_tiny",
           "stage", "teacher_stage", "tiny_recipe", "write_cifar10", "write_fashion_mnist",
           "write_idx", "write_recipe"]


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Keep loguru's INFO lines out of test output."""
    logger.remove()
    yield


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny tensors run much faster so on a shared CPU (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_tiny(data: Mapping[str, Any], out: Path, *, plugins: Iterable[Any] = (),
             overrides: Sequence[str] = (), resume: bool = False) -> dict[str, Any]:
    """Write ``data`` beside ``out`` (``<out>.toml``), apply ``--set`` style ``overrides`` and
    run it into ``out`` with the installed plugins plus ``plugins``; returns the summary."""
    path = write_recipe(data, out.parent / f"{out.name}.toml")
    recipe = load_recipe(path, list(overrides))
    return run_recipe(recipe, out=str(out), host=PluginHost(extra=list(plugins)),
                      resume=resume, progress=False)


class Interrupted(BaseException):
    """Raised by :class:`InterruptAt`: a run stopped the way a crash would stop it (a
    ``BaseException``, as ``KeyboardInterrupt``: observer isolation does not catch it)."""


class InterruptAt:
    """An observer plugin that raises :class:`Interrupted` at the end of batch ``batch``
    (0-based) of epoch ``epoch`` of stage ``stage`` (the first stage to reach that epoch when
    ``stage`` is None): a crash in the middle of an epoch, for resume tests."""

    def __init__(self, epoch: int, batch: int, stage: str | None = None):
        self.epoch, self.batch, self.stage = epoch, batch, stage
        self._seen: dict[tuple[str, int], int] = {}

    @hookimpl
    def kdcore_batch_end(self, ctx: Any, batch: Any, losses: Any) -> None:
        if ctx.epoch != self.epoch or self.stage not in (None, ctx.stage.name):
            return
        key = (ctx.stage.name, ctx.epoch)
        seen = self._seen[key] = self._seen.get(key, -1) + 1
        if seen == self.batch:
            raise Interrupted(f"stopped at stage '{key[0]}' epoch {key[1]} batch {seen}")


def assert_same_history(a: str | Path, b: str | Path, *, columns: Iterable[str] | None = None
                        ) -> None:
    """Assert that two runs' histories are the same, bit for bit: their epochs, every metric
    but the ``time/`` ones, every ledger column (or just ``columns``) and every ``/data``
    array. A resumed run against an uninterrupted one is the usual pair."""
    with History(a) as ha, History(b) as hb:
        assert ha.epochs() == hb.epochs(), (ha.epochs(), hb.epochs())
        _same_names("metrics", ha.metric_names(), hb.metric_names())
        for name in hb.metric_names():
            if not name.startswith("time/"):
                np.testing.assert_array_equal(ha.metric(name), hb.metric(name), err_msg=name)
        names = hb.column_names() if columns is None else list(columns)
        if columns is None:
            _same_names("ledger columns", ha.column_names(), names)
        for name in names:
            np.testing.assert_array_equal(ha.column(name), hb.column(name), err_msg=name)
        _same_names("/data arrays", ha.data_names(), hb.data_names())
        for name in hb.data_names():
            np.testing.assert_array_equal(ha.data(name), hb.data(name), err_msg=name)


def assert_close_history(a: str | Path, b: str | Path, *, float_atol: float,
                         float_rtol: float, metric_atol: float) -> dict[str, float]:
    """Assert that two runs' histories agree: the same epochs and names, every discrete ledger
    column (labels, masks) equal, every float column within ``float_atol + float_rtol * |b|``
    and every metric but ``time/`` within ``metric_atol``. The usual pair: one run in several
    processes and one in a single process (the same numbers summed in another order; float
    columns are stored as float16, whose last bit is 2**-10 of the value).

    Returns:
        the largest absolute difference of each float column and metric that differs.
    """
    differ: dict[str, float] = {}
    with History(a) as ha, History(b) as hb:
        assert ha.epochs() == hb.epochs(), (ha.epochs(), hb.epochs())
        _same_names("ledger columns", ha.column_names(), hb.column_names())
        for name in ha.column_names():
            x, y = ha.column(name), hb.column(name)
            if x.dtype.kind in "biu":
                np.testing.assert_array_equal(x, y, err_msg=name)
            else:
                np.testing.assert_allclose(x, y, rtol=float_rtol, atol=float_atol,
                                           err_msg=name)
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                if diff.size and np.nanmax(diff, initial=0.0) > 0:
                    differ[name] = float(np.nanmax(diff, initial=0.0))
        _same_names("metrics", ha.metric_names(), hb.metric_names())
        for name in ha.metric_names():
            if name.startswith("time/"):
                continue
            x, y = ha.metric(name), hb.metric(name)
            np.testing.assert_allclose(x, y, rtol=0, atol=metric_atol, err_msg=name)
            diff = np.abs(x - y)
            if diff.size and np.nanmax(diff, initial=0.0) > 0:
                differ[name] = float(np.nanmax(diff, initial=0.0))
    return differ


def _same_names(what: str, a: list[str], b: list[str]) -> None:
    # the reader lists names sorted: two lists differ only by what one of them lacks
    assert a == b, (f"the histories' {what} differ: only in the first "
                    f"{sorted(set(a) - set(b))}, only in the second {sorted(set(b) - set(a))}")


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    import gzip
    import struct

    header = struct.pack(">I", magic if magic is not None else 0x0800 | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def write_fashion_mnist(root: Path, *, n_train: int = 6, n_test: int = 3, gz: bool = True,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """A small random dataset in Fashion-MNIST's IDX layout under ``root`` (what the
    ``fashion_mnist`` loader reads from ``data.params.root`` or ``$KDCORE_FASHION_MNIST``);
    labels cycle through the 10 classes so every class is present. Returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / (f"{name}.gz" if gz else name), array)
    return arrays


def write_cifar10(root: Path, *, n_train: int = 400, n_test: int = 100, blank: bool = False,
                  seed: int = 0) -> Path:
    """Random images in CIFAR-10's "python version" layout under ``root`` (five data batches,
    a test batch and the meta, in ``root/cifar-10-batches-py``), what the ``cifar10`` loader
    reads; every class is present, labels shuffled; ``blank`` training images are all zero.
    Returns the folder."""
    import pickle

    rng = np.random.default_rng(seed)

    def images_and_labels(n: int, blank_images: bool) -> tuple[np.ndarray, list[int]]:
        images = (np.zeros((n, 3072), dtype=np.uint8) if blank_images
                  else rng.integers(0, 256, (n, 3072), dtype=np.uint8))
        return images, rng.permutation(np.arange(n) % 10).tolist()

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = images_and_labels(n_train, blank)
    per_batch = n_train // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        (folder / f"data_batch_{i + 1}").write_bytes(
            pickle.dumps({b"data": images[part], b"labels": labels[part]}))
    test_images, test_labels = images_and_labels(n_test, False)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": test_images, b"labels": test_labels}))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return folder
