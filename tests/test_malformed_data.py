"""Data files that hold the wrong things (found by a red-team pass): each is one KdcoreError that
names the file and what it should hold, where it used to be a TypeError, a RuntimeError from a
reshape, or a silent truncation of float labels to other classes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import checkpoint as ckpt
from kdcore.data.images import read_image
from kdcore.data.loaders import cifar10, fashion_mnist
from kdcore.errors import KdcoreError
from kdcore.testing import write_cifar10, write_fashion_mnist


def _one_line(call) -> str:
    with pytest.raises(KdcoreError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


def _cifar(tmp_path: Path, name: str, batch) -> Path:
    folder = write_cifar10(tmp_path, n_train=50, n_test=10)
    (folder / name).write_bytes(pickle.dumps(batch))
    return folder


IMAGES = np.zeros((10, 3072), dtype=np.uint8)


@pytest.mark.parametrize("labels, kind", [
    ({"a": 1}, "dict"),
    (None, "NoneType"),
    ([0.5] * 10, "float64 (10,)"),
    ([[0] * 10], "int64 (1, 10)"),
    (["a"] * 10, "<U1 (10,)"),
    (np.float32(3), "float32"),
])
def test_cifar_labels_that_are_not_a_list_of_integers(tmp_path, labels, kind):
    folder = _cifar(tmp_path, "test_batch", {b"data": IMAGES, b"labels": labels})
    assert _one_line(lambda: cifar10(root=str(tmp_path))) == (
        f"{folder / 'test_batch'}: b'labels' is {kind}; expected a list of integer labels")


def test_cifar_integer_labels_of_any_width_are_read(tmp_path):
    _cifar(tmp_path, "test_batch", {b"data": IMAGES, b"labels": np.arange(10, dtype=np.uint8)})
    assert cifar10(root=str(tmp_path)).test.y.tolist() == list(range(10))


def test_a_cifar_batch_without_images(tmp_path):
    folder = _cifar(tmp_path, "test_batch", {b"data": np.zeros((0, 3072), np.uint8),
                                             b"labels": []})
    assert _one_line(lambda: cifar10(root=str(tmp_path))) == (
        f"{folder / 'test_batch'}: the batch holds no images")


@pytest.mark.parametrize("names", [7, [b"a"] * 3, [b"a"] * 20, [1] * 10])
def test_cifar_class_names_that_do_not_name_the_classes(tmp_path, names):
    folder = _cifar(tmp_path, "batches.meta", {b"label_names": names})
    assert _one_line(lambda: cifar10(root=str(tmp_path))) == (
        f"the meta file in {folder}: b'label_names' must list 10 class names")


def test_cifar_class_names_that_are_not_utf8_are_read_with_replacements(tmp_path):
    _cifar(tmp_path, "batches.meta", {b"label_names": [b"\xff"] + [b"c"] * 9})
    assert cifar10(root=str(tmp_path)).train.class_names[0] == "\ufffd"


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_fashion_mnist_files_without_images(tmp_path, split):
    write_fashion_mnist(tmp_path, n_train=0 if split == "train" else 6,
                        n_test=0 if split == "t10k" else 3)
    assert _one_line(lambda: fashion_mnist(root=str(tmp_path), flatten=True)) == (
        f"Fashion-MNIST in {tmp_path}: the {split} files hold no images; the files are "
        "truncated or not the release's")


def test_an_image_with_more_pixels_than_pil_decodes(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1,600 pixels: over twice the limit
    message = _one_line(lambda: read_image(tmp_path / "big.png", 8))
    assert message.startswith(f"cannot read image {tmp_path / 'big.png'}: Image size (1600 "
                              "pixels) exceeds limit"), message


def test_an_image_over_the_pixel_limit_but_under_twice_it_is_read_without_a_warning(
        tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: over it, under twice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_image(tmp_path / "large.png", 8)
    assert image.shape == (3, 8, 8) and image[:, 0, 0].tolist() == [200, 10, 10]
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("content, kind", [(torch.ones(3), "Tensor"), ([1, 2], "list")])
def test_a_checkpoint_file_that_holds_no_state_dict(tmp_path, content, kind):
    torch.save(content, tmp_path / "w.pt")
    assert _one_line(lambda: ckpt.load_weights(tmp_path / "w.pt", "teacher")) == (
        f"{tmp_path / 'w.pt'} holds a {kind}, not the weights of a model (a state dict, a "
        "kdcore weights file or a kdcore checkpoint)")


class _Runs:
    def __reduce__(self):  # what a crafted file would run on unpickling
        return (print, ("this ran",))


def test_a_plain_pickle_given_as_weights_is_refused_without_a_warning_first(tmp_path):
    """torch warns about a pickle protocol other than its own before it refuses such a file;
    that warning put lines on stderr above the one-line refusal."""
    import warnings

    path = tmp_path / "w.pt"
    path.write_bytes(pickle.dumps({"layer.weight": _Runs()}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = _one_line(lambda: ckpt.load_weights(path, "teacher"))
    assert message.startswith(f"cannot read checkpoint {path}: ")
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("column, message", [
    (np.array([0.0, 2.7, 1.0, 2.2]), "holds 2 labels that are not whole numbers (first: "
                                     "np.float64(2.7) at position 1)"),
    (np.array([0.0, 1.0, np.nan, 2.0], dtype=np.float32), "holds 1 labels that are not whole "
                                                          "numbers (first: np.float32(nan) at "
                                                          "position 2)"),
    (np.array([0.0, np.inf, 1.0, 2.0]), "holds 1 labels that are not whole numbers (first: "
                                        "np.float64(inf) at position 1)"),
    (["0", "1", "2", "1"], "is not a label array (its values are of type <U1, not "
                           "integers)"),
])
def test_cifar_n_labels_that_are_not_whole_numbers(tmp_path, column, message):
    """Before, a float label was truncated: 2.7 became class 2 without a word."""
    from kdcore.data.loaders import cifar_n_labels

    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": np.arange(4), "worse_label": column}, path)
    assert _one_line(lambda: cifar_n_labels(str(path))).endswith(message)
    torch.save({"clean_label": np.arange(4), "worse_label": np.array([0.0, 3.0, 1.0, 2.0])},
               path)
    assert cifar_n_labels(str(path))["worse_label"].tolist() == [0, 3, 1, 2]
