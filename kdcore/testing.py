"""Helpers for testing kdcore plugins: a component harness that runs one component's hooks in
milliseconds, tiny recipes on the built-in digits, and exact history comparison for resume tests.

A component's unit test builds it with :func:`harness` (a real context over data the test
gives, no recipe file, no history) and calls its hooks::

    h = harness(MySelector, {"rate": 0.2}, x=x, noisy_label=y, models={"student": net})
    h.setup()
    mask = h.component.select(h.ctx, h.batch(torch.arange(8)))

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

import copy
import random
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from loguru import logger

from kdcore.engine import run_recipe
from kdcore.history import History
from kdcore.hookspecs import hookimpl
from kdcore.plugins import PluginHost
from kdcore.recipe import load_recipe, recipe_from_dict
from kdcore.testing_harness import ColumnReader, ColumnReaderPlugin, Harness, TinyNet, harness

__all__ = ["ColumnReader", "ColumnReaderPlugin", "Harness", "InterruptAt", "Interrupted", "TinyNet",
           "accepted_compositions", "assert_close_history", "assert_same_history", "check_tiny",
           "component",
           "harness", "one_thread", "quiet_logs", "random_choices", "random_composition",
           "run_tiny", "stage", "teacher_stage", "tiny_recipe", "write_cifar10",
           "write_fashion_mnist", "write_idx", "write_recipe"]


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


MODELS: dict[str, dict[str, Any]] = {
    "teacher": {"arch": "mlp", "params": {"hidden": [32]}, "optimizer": {"lr": 0.1}},
    "student": {"arch": "mlp", "params": {"hidden": [16]}, "optimizer": {"lr": 0.1}},
}


def component(use: str, name: str | None = None, *, params: Mapping[str, Any] | None = None,
              **fields: Any) -> dict[str, Any]:
    """One ``[[stages.components]]`` entry (``models``, ``terms``, ``weight``, ``enabled`` as
    keywords)."""
    out: dict[str, Any] = {"use": use, **fields}
    if name is not None:
        out["name"] = name
    if params:
        out["params"] = dict(params)
    return out


def stage(name: str, epochs: int, train: Sequence[str], *components: Mapping[str, Any],
          **fields: Any) -> dict[str, Any]:
    """One ``[[stages]]`` entry (``keep``, ``eval`` as keywords)."""
    return {"name": name, "epochs": epochs, "train": list(train),
            "components": [dict(c) for c in components], **fields}


def teacher_stage(epochs: int = 2) -> dict[str, Any]:
    """The usual first stage: the teacher trained by CE on the noisy labels."""
    return stage("teacher", epochs, ["teacher"], component("ce"))


def tiny_recipe(*stages: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]] | None = None,
                name: str = "tiny", seed: int = 0, train_subset: int = 300,
                batch_size: int = 64, gold_per_class: int = 0, noise_rate: float = 0.4,
                run: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                ) -> dict[str, Any]:
    """Plain recipe data for a run of a few seconds on digits (see the module docstring).

    Args:
        stages: the stages, in order (:func:`stage`, :func:`teacher_stage`).
        models: the model roles (default :data:`MODELS`: ``teacher`` and ``student``).
        run, data: further ``[run]`` / ``[data]`` keys, over the defaults.
    """
    return {
        "run": {"name": name, "seed": seed, "device": "cpu", "checkpoint_interval_s": 0,
                **(run or {})},
        "data": {"dataset": "digits", "train_subset": train_subset, "batch_size": batch_size,
                 "gold_per_class": gold_per_class,
                 "noise": {"model": "symmetric", "params": {"rate": noise_rate}}, **(data or {})},
        "models": copy.deepcopy(dict(models or MODELS)),
        "stages": [dict(s) for s in stages],
    }


PEER: dict[str, Any] = {"arch": "mlp", "params": {"hidden": [24]}, "optimizer": {"lr": 0.1}}
"""The ``peer`` model of :func:`random_composition`'s recipes (a third feature size)."""


def random_composition(rng: random.Random, names: Sequence[str], *, must: Sequence[str] = (),
                       trains: Sequence[Sequence[str]] = (("student",), ("student", "peer")),
                       first: bool = False, epochs: int = 3, again: float = 0.4,
                       host: PluginHost | None = None, **recipe: Any) -> dict[str, Any]:
    """Recipe data composing components at random, to test how they work together.

    Stage ``s`` trains one of ``trains`` (the models are :data:`MODELS` and :data:`PEER`) for
    ``epochs`` with 1 to 4 of ``names`` (registered component names: ``PluginHost().
    components.names()``), then ``must``, then, seven times in ten, ``ce``; each entry serves
    the stage's models or, one time in four, some of them. Stage ``s`` follows a one-epoch
    teacher stage, or comes first with ``first`` (so that a run's first batch calls its
    components); with probability ``again``, a stage ``t`` of 2 epochs repeats the entries
    (each starts from its state in ``s``). With ``host``, each entry also sets each of its
    component's ``Literal`` and ``bool`` parameters, half of them, to a value drawn from its
    type (:func:`random_choices`). ``recipe`` goes to :func:`tiny_recipe`.

    Many draws are recipes that ``kdcore check`` refuses (a peer method with one model, a
    selector of two models): :func:`accepted_compositions` keeps the ones it accepts.
    """
    uses = [*rng.sample(list(names), rng.randint(1, min(4, len(names)))), *must]
    if rng.random() < 0.7:
        uses.append("ce")
    train = list(rng.choice(trains))
    comps = []
    for i, use in enumerate(uses):
        fields = {}
        if rng.random() < 0.25:
            fields["models"] = rng.sample(train, rng.randint(1, len(train)))
        params = random_choices(rng, host.components.get(use).Params) if host else None
        comps.append(component(use, f"{use}{i}", params=params, **fields))
    stages = [stage("s", epochs, train, *comps)]
    stages.insert(len(stages) if first else 0, teacher_stage(1))
    if rng.random() < again:
        stages.append(stage("t", 2, train, *comps))
    return tiny_recipe(*stages, models={**MODELS, "peer": PEER}, **recipe)


def accepted_compositions(rng: random.Random, count: int, *, host: PluginHost | None = None,
                          choices: bool = False, processes: int = 1, **draw: Any
                          ) -> list[dict[str, Any]]:
    """The first ``count`` draws of :func:`random_composition` (over every component ``host``
    registers; ``draw`` are its keywords, with ``choices`` its random parameter choices) that
    ``kdcore check`` accepts, in ``processes`` processes: the set-up a run does before its
    first batch, nothing trained (:func:`kdcore.engine.dry_setup`).

    Raises:
        ValueError: not one draw in a hundred was accepted.
    """
    from kdcore.errors import KdcoreError

    host = host or PluginHost()
    names = host.components.names()
    out: list[dict[str, Any]] = []
    for _ in range(100 * count):
        if len(out) == count:
            break
        recipe = random_composition(rng, names, host=host if choices else None, **draw)
        try:
            check_tiny(recipe, host=host, processes=processes)
        except KdcoreError:
            continue
        out.append(recipe)
    if len(out) < count:
        raise ValueError(f"{len(out)} of {100 * count} draws were accepted, not {count}")
    return out


def check_tiny(data: Mapping[str, Any], *, host: PluginHost | None = None,
               processes: int = 1) -> None:
    """What ``kdcore check`` does with recipe ``data`` (for ``processes`` processes): the plan
    and the run's set-up up to its first batch, nothing trained.

    Raises:
        KdcoreError: ``check``'s refusal (its message is the line ``check`` prints).
    """
    from kdcore.engine import dry_setup
    from kdcore.plan import check_distributed

    check_distributed(dry_setup(recipe_from_dict(data), host or PluginHost()), processes)


def random_choices(rng: random.Random, params: type) -> dict[str, Any]:
    """Recipe parameters for the attrs class ``params`` (a component's ``Params``): each field
    typed ``Literal[...]`` (or an optional one) or ``bool``, with probability one half, set to
    a value drawn from its type; the others left to their defaults."""
    if not attrs.has(params):
        return {}
    hints = typing.get_type_hints(params)
    out: dict[str, Any] = {}
    for field in attrs.fields(params):
        kind = hints.get(field.name)
        options: list[Any] = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
            kind = options[0]  # Literal[...] | None
        if kind is bool:
            options = [True, False]
        elif typing.get_origin(kind) is typing.Literal:
            options = list(typing.get_args(kind))
        else:
            continue
        if rng.random() < 0.5:
            out[field.alias or field.name] = rng.choice(options)
    return out


def write_recipe(data: Mapping[str, Any], path: Path) -> Path:
    """Validate recipe data and write it as a TOML file (for tests of files and the CLI)."""
    path.write_text(recipe_from_dict(data).to_toml())
    return path


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
