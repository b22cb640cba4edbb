"""The ``npz`` dataset: one's own arrays in a numpy ``.npz`` file, read without pickle, every
malformed file one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcore.config import bind_params
from kdcore.data.loaders import DATASETS
from kdcore.data.loaders.npz import npz
from kdcore.errors import KdcoreError, RecipeError


def _features(rows: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 5)), np.arange(rows) % 3


def test_features_and_labels_come_back_as_given(tmp_path):
    x, y = _features()
    xt, yt = _features(12, seed=1)
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt.astype(np.float32),
             class_names=np.array(["cat", "dog", "eel"]))
    splits = DATASETS["npz"](path=str(path))
    train, test = splits.train, splits.test
    assert train.x.dtype == torch.float32 and np.array_equal(train.x.numpy(),
                                                             x.astype(np.float32))
    assert train.y.dtype == torch.int64 and train.y.tolist() == y.tolist()
    assert test.y.tolist() == yt.tolist() and np.array_equal(test.x.numpy(), xt.astype(np.float32))
    assert train.num_classes == test.num_classes == 3
    assert train.class_names == test.class_names == ("cat", "dog", "eel")
    assert train.mean is None and train.std is None  # features: used as given


def test_uint8_images_are_normalised_with_the_training_images_statistics(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    gray = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_train=x, y_train=np.arange(20) % 4,
             x_test=x[:5], y_test=np.zeros(5, dtype=np.int8))
    np.savez(tmp_path / "gray.npz", x_train=gray, y_train=np.array([0, 1, 0, 1, 0, 1]))
    rgb = npz(path=str(tmp_path / "rgb.npz"))
    scaled = x.astype(np.float64) / 255
    np.testing.assert_allclose(rgb.train.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rgb.train.std, scaled.std(axis=(0, 2, 3)), rtol=1e-12)
    assert rgb.test.mean == rgb.train.mean and rgb.test.std == rgb.train.std
    assert rgb.train.x.dtype == torch.uint8 and torch.equal(rgb.train.x, torch.from_numpy(x))
    assert rgb.train.num_classes == 4 and rgb.test is not None
    one = npz(path=str(tmp_path / "gray.npz"))
    assert one.train.input_shape == (1, 4, 4) and one.test is None
    assert one.train.x[:, 0].numpy().tolist() == gray.tolist() and len(one.train.mean) == 1


@pytest.mark.parametrize(("shape", "channels_last"), [
    ((12, 5, 6, 3), True), ((12, 7, 7, 1), True), ((12, 2, 2, 4), True),  # PIL's and Keras' layout
    ((12, 5, 3, 3), True),  # a width of 3 does not matter
    ((12, 3, 5, 6), False), ((12, 1, 6, 6), False),  # channels first, as documented
    ((12, 3, 4, 3), False), ((12, 4, 4, 1), False), ((12, 3, 5, 3), False),  # both could be
    # channels: channels first
    ((12, 5, 6, 2), False), ((12, 5, 6, 5), False),  # the last axis is no channel count
])
def test_uint8_images_laid_out_channels_last_are_read_channels_first(tmp_path, shape,
                                                                      channels_last):
    x = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "i.npz", x_train=x, y_train=np.arange(12) % 3, x_test=x[:4],
             y_test=np.arange(4) % 3)
    got = npz(path=str(tmp_path / "i.npz"))
    want = np.moveaxis(x, 3, 1) if channels_last else x
    assert got.train.x.numpy().tolist() == want.tolist()
    assert got.test.x.numpy().tolist() == want[:4].tolist()
    assert got.train.input_shape == want.shape[1:]
    np.testing.assert_allclose(got.train.mean, (want / 255).mean(axis=(0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize(("labels", "names", "num_classes", "want"), [
    ([0, 2, 1], None, 0, 3),          # the largest label plus one
    ([0, 1, 1], ["a", "b", "c"], 0, 3),  # the names' count: a class without samples
    ([0, 1, 1], None, 5, 5),          # as given
])
def test_the_number_of_classes(tmp_path, labels, names, num_classes, want):
    arrays = {"x_train": np.ones((3, 2)), "y_train": np.array(labels)}
    if names:
        arrays["class_names"] = np.array(names)
    np.savez(tmp_path / "c.npz", **arrays)
    assert npz(path=str(tmp_path / "c.npz"), num_classes=num_classes).train.num_classes == want


def _refusal(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(KdcoreError) as err:
        npz(path=str(path))
    message = str(err.value)
    assert "\n" not in message and message.startswith("npz: ")
    return message.replace(str(path), "F")


X, Y = np.ones((4, 2)), np.array([0, 1, 0, 1])


@pytest.mark.parametrize(("arrays", "message"), [
    ({"y_train": Y}, "npz: F has no 'x_train' (it holds y_train)"),
    ({"x_train": X}, "npz: F has no 'y_train' (it holds x_train)"),
    ({"class_names": np.array(["a"]), "y_train": Y},
     "npz: F has no 'x_train' (it holds class_names, y_train)"),
    ({}, "npz: F has no 'x_train' (it holds nothing)"),
    ({"x_train": X, "y_train": Y, "x_test": X, "y_test": np.array([0, 1, 0.5, 1])},
     "npz: F's y_test gives sample 2 the label 0.5, not a whole number"),
    ({"x_train": X, "y_train": Y, "x_test": X[:3], "y_test": Y},
     "npz: F's x_test is float64 of shape (3, 2); expected 4 rows of numbers (one per label), "
     "at least 2-D"),
    ({"x_train": X, "y_train": np.array([0, 1, 2**20, 1])},
     "npz: F's y_train gives sample 2 the label 1048576, beyond any class range (at most "
     "1,048,576 classes)"),
    ({"x_train": X, "y_train": np.array([0, 1, 1e30, 1])},
     "npz: F's y_train gives sample 2 the label 1e+30, beyond any class range (at most "
     "1,048,576 classes)"),
    ({"x_train": X, "y_train": np.array([0, 1, 2**64 - 1, 1], dtype=np.uint64)},
     "npz: F's y_train gives sample 2 the label 18446744073709551615, beyond any class range "
     "(at most 1,048,576 classes)"),
    ({"x_train": X, "y_train": np.array([0, -1.0, 1, 1])},
     "npz: F's y_train gives sample 1 the label -1.0; labels start at 0"),
    ({"x_train": X, "y_train": Y, "x_test": X},
     "npz: F has 'x_test' but no 'y_test'; give both or neither"),
    ({"x_train": X, "y_train": Y, "y_test": Y},
     "npz: F has 'y_test' but no 'x_test'; give both or neither"),
    ({"x_train": X, "y_train": Y, "X_test": X},
     "npz: F holds 'X_test', which is none of x_train, y_train, x_test, y_test, class_names"),
    ({"x_train": X, "y_train": np.array([0, 1, 2.5, 1])},
     "npz: F's y_train gives sample 2 the label 2.5, not a whole number"),
    ({"x_train": X, "y_train": np.array([0, 1, np.nan, 1])},
     "npz: F's y_train gives sample 2 the label nan, not a whole number"),
    ({"x_train": X, "y_train": np.array([0, -1, 1, 1])},
     "npz: F's y_train gives sample 1 the label -1; labels start at 0"),
    ({"x_train": X, "y_train": Y.reshape(2, 2)},
     "npz: F's y_train is int64 of shape (2, 2); expected one integer label per sample (1-D, "
     "at least one)"),
    ({"x_train": X, "y_train": np.array(["a", "b", "a", "b"])},
     "npz: F's y_train is <U1 of shape (4,); expected one integer label per sample (1-D, at "
     "least one)"),
    ({"x_train": X[:3], "y_train": Y},
     "npz: F's x_train is float64 of shape (3, 2); expected 4 rows of numbers (one per "
     "label), at least 2-D"),
    ({"x_train": np.ones(4), "y_train": Y},
     "npz: F's x_train is float64 of shape (4,); expected 4 rows of numbers (one per label), at "
     "least 2-D"),
    ({"x_train": np.ones((4, 1, 2, 2, 2), dtype=np.uint8), "y_train": Y},
     "npz: F's x_train is uint8 of shape (4, 1, 2, 2, 2): uint8 inputs are images, (N, C, H, "
     "W) or (N, H, W); give features as floats"),
    ({"x_train": np.array([[0.0, 1.0], [1.0, np.inf], [0, 0], [1, 1]]), "y_train": Y},
     "npz: F's x_train has a value that is not finite in row 1"),
    ({"x_train": np.array([[0.0, 1.0], [1.0, 1.0], [0, 1e300], [1, 1]]), "y_train": Y},
     "npz: F's x_train has a value that is not finite in row 2 (or beyond float32)"),
    ({"x_train": X, "y_train": Y, "x_test": np.ones((2, 3)), "y_test": Y[:2]},
     "npz: F's x_test rows are torch.float32 (3,), x_train's torch.float32 (2,); they must "
     "match"),
    ({"x_train": X, "y_train": Y, "class_names": np.array([1, 2])},
     "npz: F's class_names is int64 of shape (2,); expected a 1-D array of strings"),
    ({"x_train": X, "y_train": Y, "x_test": X, "y_test": np.array([0, 1, 7, 1]),
      "class_names": np.array(["a", "b"])},
     "npz: F holds the label 7; with 2 classes labels must lie in 0..1"),
])
def test_a_malformed_file_is_one_exact_line(tmp_path, arrays, message):
    assert _refusal(tmp_path, **arrays) == message


def test_names_and_num_classes_that_disagree_are_refused(tmp_path):
    np.savez(tmp_path / "n.npz", x_train=X, y_train=Y, class_names=np.array(["a", "b", "c"]))
    with pytest.raises(KdcoreError, match="names 3 classes, but num_classes is 4"):
        npz(path=str(tmp_path / "n.npz"), num_classes=4)
    np.savez(tmp_path / "u.npz", x_train=X, y_train=Y)
    with pytest.raises(KdcoreError, match=r"holds the label 1; with 1 classes labels must lie "
                                          r"in 0\.\.0"):
        npz(path=str(tmp_path / "u.npz"), num_classes=1)


class _Runs:
    def __reduce__(self):  # what a crafted file would run on loading
        return (print, ("this ran",))


def test_files_that_are_not_npz_archives_of_plain_arrays_are_refused(tmp_path, capsys):
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=np.array([_Runs(), _Runs()], dtype=object), y_train=Y[:2])
    pickled = tmp_path / "p.npz"
    pickled.write_bytes(pickle.dumps({"x_train": _Runs()}))
    single = tmp_path / "one.npz"
    with open(single, "wb") as fh:
        np.save(fh, X)
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, x_train=X, y_train=Y)
    damaged.write_bytes(damaged.read_bytes()[:100])
    cases = {objects: "is not a readable .npz file of arrays (Object arrays cannot be loaded",
             pickled: "is not a readable .npz file of arrays (",
             single: "is a single .npy array, not an .npz file of named arrays (x_train, "
                     "y_train, x_test, y_test, class_names)",
             damaged: "is not a readable .npz file of arrays (",
             tmp_path / "none.npz": "does not exist",
             tmp_path: "is not a regular file"}
    for path, message in cases.items():
        with pytest.raises(KdcoreError) as err:
            npz(path=str(path))
        assert str(err.value).startswith(f"npz: {path} {message}"), str(err.value)
        assert "\n" not in str(err.value)
    assert "this ran" not in capsys.readouterr().out


def test_a_file_the_system_refuses_or_numpy_cannot_name_is_one_line(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "f.npz"
    np.savez(path, x_train=X, y_train=Y)
    for raised, message in ((PermissionError(errno.EACCES, "denied", str(path)),
                             f"npz: cannot read {path}: Permission denied"),
                            (ValueError(), f"npz: {path} is not a readable .npz file of arrays "
                                           "(ValueError)")):
        def load(*args, error=raised, **kwargs):
            raise error

        monkeypatch.setattr(np, "load", load)
        with pytest.raises(KdcoreError) as err:
            npz(path=str(path))
        assert str(err.value) == message


def test_inputs_beyond_float32_are_refused_without_a_warning_first(tmp_path):
    import warnings

    np.savez(tmp_path / "big.npz", x_train=np.array([[1e300], [0.0]]), y_train=np.array([0, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would precede the refusal
        with pytest.raises(KdcoreError, match="not finite in row 0 \\(or beyond float32\\)"):
            npz(path=str(tmp_path / "big.npz"))


@pytest.mark.parametrize(("params", "message"), [
    ({"path": ""}, "npz: 'path' is empty; it must name an .npz file"),
    ({"path": " "}, "npz: 'path' is empty; it must name an .npz file"),
    ({"path": "a\0.npz"}, "npz: 'path' contains a NUL byte (\\0), which no name or path may "
                          "hold: 'a\\x00.npz'"),
    ({"path": "a.npz", "num_classes": -1}, "npz: 'num_classes' must be in [0, 1048576], got -1"),
])
def test_a_direct_call_with_bad_parameters_is_one_exact_line(params, message):
    with pytest.raises(KdcoreError) as err:
        npz(**params)
    assert str(err.value) == message


@pytest.mark.parametrize(("params", "message"), [
    ({"path": ""}, "'path' is empty"),
    ({"path": "a.npz", "num_classes": -1}, "'num_classes' must be in"),
    ({}, "missing required key 'path'"),
    ({"path": "a.npz", "classes": 3}, "unknown key 'classes'"),
])
def test_bad_parameters_are_refused_before_anything_is_read(params, message):
    with pytest.raises(RecipeError, match=message):
        bind_params(npz, params, "data.params")


def test_a_recipe_checks_the_file_and_refuses_a_bad_one_in_one_line(tmp_path):
    from kdcore.cli import main

    x, y = _features(60)
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x_train=x, y_train=y)
    np.savez(bad, x_train=x, y_train=y, extra=y)
    runner = CliRunner()
    sets = ["--set", 'data.dataset="npz"', "--set", "data.train_subset=0"]
    ok = runner.invoke(main, ["check", "recipes/ce.toml", *sets, "--set",
                              f"data.params={{path={str(good)!r}}}"])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(main, ["check", "recipes/ce.toml", *sets, "--set",
                                   f"data.params={{path={str(bad)!r}}}"])
    assert refused.exit_code == 2 and "holds 'extra', which is none of" in refused.output
    assert "Traceback" not in refused.output


@pytest.mark.slow
def test_a_run_trains_on_the_files_arrays(tmp_path):
    from kdcore.cli import main

    x, y = _features(90)
    x[np.arange(90), y] += 3.0  # separable enough to learn in a few epochs
    path = tmp_path / "f.npz"
    np.savez(path, x_train=x, y_train=y, class_names=np.array(["a", "b", "c"]))
    res = CliRunner().invoke(main, [
        "run", "recipes/ce.toml", "--out", str(tmp_path / "run"), "--quiet",
        "--set", 'data.dataset="npz"', "--set", f"data.params={{path={str(path)!r}}}",
        "--set", "stages.0.epochs=2", "--set", 'data.noise={model="none"}'])
    assert res.exit_code == 0, res.output
    from kdcore import History

    with History(tmp_path / "run") as h:
        assert h.class_names == ["a", "b", "c"] and h.num_classes == 3


def test_the_largest_label_allowed_is_the_last_of_the_most_classes(tmp_path):
    np.savez(tmp_path / "wide.npz", x_train=X, y_train=np.array([0, 1, 2**20 - 1, 1]))
    assert npz(path=str(tmp_path / "wide.npz")).train.num_classes == 2**20
