"""``kdcore.testing``'s recipe builders and dataset writers, by what they document: the tiny
recipe's defaults, and files in the IDX and CIFAR-10 layouts read back byte for byte (a third
party's loader tests rest on them as kdcore's do)."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest

from kdcore.testing import (
    MODELS,
    component,
    stage,
    teacher_stage,
    tiny_recipe,
    write_cifar10,
    write_fashion_mnist,
    write_idx,
)


def test_the_tiny_recipes_documented_defaults():
    assert tiny_recipe(teacher_stage()) == {
        "run": {"name": "tiny", "seed": 0, "device": "cpu", "checkpoint_interval_s": 0},
        "data": {"dataset": "digits", "train_subset": 300, "batch_size": 64,
                 "gold_per_class": 0,
                 "noise": {"model": "symmetric", "params": {"rate": 0.4}}},
        "models": MODELS,
        "stages": [{"name": "teacher", "epochs": 2, "train": ["teacher"],
                    "components": [{"use": "ce"}]}],
    }
    assert teacher_stage(5) == stage("teacher", 5, ["teacher"], component("ce"))


def test_a_tiny_recipes_models_are_its_own(tmp_path):
    recipe = tiny_recipe(teacher_stage())
    recipe["models"]["teacher"]["params"]["hidden"].append(8)
    recipe["models"]["student"]["optimizer"]["lr"] = 1.0
    assert MODELS["teacher"]["params"]["hidden"] == [32]
    assert MODELS["student"]["optimizer"]["lr"] == 0.1


def _idx(data: bytes) -> tuple[int, tuple[int, ...], np.ndarray]:
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return magic, shape, np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 3, 4)])
def test_write_idx_writes_the_header_for_the_arrays_rank(tmp_path, shape):
    array = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    write_idx(tmp_path / "a", array)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b", array, magic=0x1234)
    for data in ((tmp_path / "a").read_bytes(), gzip.decompress((tmp_path / "a.gz").read_bytes())):
        magic, read_shape, values = _idx(data)
        assert magic == 0x0800 | len(shape) and read_shape == shape
        np.testing.assert_array_equal(values, array)
    assert (tmp_path / "b").read_bytes()[:4] == b"\x00\x00\x12\x34"


def test_write_fashion_mnist_writes_what_it_returns_every_class_present(tmp_path):
    root = tmp_path / "deep" / "fmnist"  # parents made
    arrays = write_fashion_mnist(root, n_train=20, n_test=12)
    for name, array in arrays.items():
        assert array.dtype == np.uint8
        _, shape, values = _idx(gzip.decompress((root / f"{name}.gz").read_bytes()))
        assert shape == array.shape
        np.testing.assert_array_equal(values, array)
    for split, n in (("train", 20), ("t10k", 12)):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        assert images.shape == (n, 28, 28)
        assert images.min() == 0 and images.max() == 255  # the whole byte range
        assert sorted(labels.tolist()) == sorted(np.arange(n) % 10)
    plain = write_fashion_mnist(tmp_path / "plain", gz=False)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == sorted(plain)
    again = write_fashion_mnist(tmp_path / "again", gz=False, seed=0)
    other = write_fashion_mnist(tmp_path / "other", gz=False, seed=1)
    for name in plain:
        np.testing.assert_array_equal(plain[name], again[name])  # the default seed is 0
    assert not np.array_equal(plain["train-images-idx3-ubyte"], other["train-images-idx3-ubyte"])


def _unpickled(path):
    return pickle.loads(path.read_bytes())  # noqa: S301 - a file this test wrote


def test_write_cifar10_writes_the_python_layout(tmp_path):
    folder = write_cifar10(tmp_path, n_train=50, n_test=20)
    assert folder == tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    labels = []
    for i in range(1, 6):
        batch = _unpickled(folder / f"data_batch_{i}")
        assert set(batch) == {b"data", b"labels"}
        assert batch[b"data"].shape == (10, 3072) and batch[b"data"].dtype == np.uint8
        assert all(type(label) is int for label in batch[b"labels"])
        labels += batch[b"labels"]
    assert sorted(labels) == sorted(np.arange(50) % 10) and labels != sorted(labels)
    test = _unpickled(folder / "test_batch")
    assert test[b"data"].shape == (20, 3072) and sorted(test[b"labels"]) == sorted(
        np.arange(20) % 10)
    assert _unpickled(folder / "batches.meta") == {
        b"label_names": [f"c{i}".encode() for i in range(10)]}
    images = np.concatenate([_unpickled(folder / f"data_batch_{i}")[b"data"]
                             for i in range(1, 6)])
    assert images.min() == 0 and images.max() == 255


def test_write_cifar10_blank_training_images_and_its_seed(tmp_path):
    blank = write_cifar10(tmp_path / "blank", n_train=10, n_test=10, blank=True)
    for i in range(1, 6):
        data = _unpickled(blank / f"data_batch_{i}")[b"data"]
        assert data.shape == (2, 3072) and data.dtype == np.uint8 and not data.any()
    assert _unpickled(blank / "test_batch")[b"data"].any()  # the test images are not blank
    a = write_cifar10(tmp_path / "a", n_train=10, n_test=10)
    b = write_cifar10(tmp_path / "b", n_train=10, n_test=10, seed=0)
    c = write_cifar10(tmp_path / "c", n_train=10, n_test=10, seed=1)
    assert (a / "data_batch_1").read_bytes() == (b / "data_batch_1").read_bytes()
    assert (a / "data_batch_1").read_bytes() != (c / "data_batch_1").read_bytes()
    assert (a / "test_batch").read_bytes() == (b / "test_batch").read_bytes()


def test_write_cifar10_by_default_400_training_and_100_test_images(tmp_path):
    folder = write_cifar10(tmp_path)
    sizes = [len(_unpickled(folder / f"data_batch_{i}")[b"labels"]) for i in range(1, 6)]
    assert sizes == [80] * 5 and len(_unpickled(folder / "test_batch")[b"labels"]) == 100
    given = write_cifar10(tmp_path / "given", n_train=400, n_test=100)
    for name in ("data_batch_1", "test_batch"):  # the same draws: the defaults are those
        assert (folder / name).read_bytes() == (given / name).read_bytes()


def test_check_tiny_does_what_kdcore_check_does_with_recipe_data():
    from kdcore.errors import KdcoreError
    from kdcore.testing import check_tiny, component, stage, teacher_stage, tiny_recipe

    check_tiny(tiny_recipe(teacher_stage(1)))
    # a refusal of the plan (a role), of the set-up (a size that cannot fit), of the processes
    missing = tiny_recipe(stage("s", 1, ["student"], component("hinton_kd")))
    missing["models"].pop("teacher")
    with pytest.raises(KdcoreError, match="teacher"):
        check_tiny(missing)
    huge = tiny_recipe(stage("s", 1, ["student"], component("ce")))
    huge["models"]["student"]["params"]["hidden"] = [10**12]
    with pytest.raises(KdcoreError, match="needs .* are free on cpu"):
        check_tiny(huge)

    import kdcore
    from kdcore.plugins import PluginHost

    class PerProcess(kdcore.Component):
        distributed = "its sums are per process"

        def transfer(self, ctx, batch):
            return batch.out("student").logits.sum(dim=1)

    class Plugin:
        @kdcore.hookimpl
        def kdcore_add_components(self):
            return {"per_process": PerProcess}

    host = PluginHost(extra=[Plugin()])
    single = tiny_recipe(stage("s", 1, ["student"], component("per_process")))
    check_tiny(single, host=host)
    with pytest.raises(KdcoreError, match="cannot run in 2 processes: its sums are per process"):
        check_tiny(single, host=host, processes=2)
    with pytest.raises(KdcoreError, match="per_process"):  # the installed plugins alone
        check_tiny(single)
