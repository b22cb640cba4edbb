"""Impossible loader and architecture parameters end in one clear KdcoreError when the function
is called (and one line from ``kdcore run``), never a traceback or a silent fallback."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from kdcore.config import bind_params
from kdcore.data.loaders import cifar10, cifar100, fashion_mnist, image_folder
from kdcore.errors import KdcoreError, RecipeError
from kdcore.models.base import ModelSpec
from kdcore.models.zoo import MODELS
from kdcore.testing import MODELS as TINY_MODELS
from kdcore.testing import write_fashion_mnist
from tests.test_data_safety import _assert_one_error_line, _run

IMAGES = ModelSpec((3, 8, 8), 10)
FLAT = ModelSpec((64,), 10)


def _assert_refused(call: Callable[[], Any], *needles: str) -> str:
    with pytest.raises(KdcoreError) as err:
        call()
    message = str(err.value)
    assert message and "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# -- loaders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [cifar10, cifar100])
def test_cifar_without_a_root(loader: Callable[..., Any]) -> None:
    _assert_refused(lambda: loader(root=None), loader.__name__, "'root' is missing",
             "python-version release")
    for root in ("", "  "):
        _assert_refused(lambda root=root: loader(root=root), loader.__name__, "'root' is empty")


@pytest.mark.parametrize("loader", [cifar10, cifar100])
def test_cifar_root_that_is_a_file_or_missing(tmp_path: Path, loader: Callable[..., Any]) -> None:
    afile = tmp_path / "cifar.tar.gz"
    afile.write_bytes(b"an archive, not yet extracted")
    _assert_refused(lambda: loader(root=str(afile)), str(afile), "is not a directory")
    _assert_refused(lambda: loader(root=str(tmp_path / "nowhere")), "does not exist")


def test_empty_roots_do_not_read_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    # Path("") is the working directory; data there must not be picked up silently.
    write_fashion_mnist(tmp_path)
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cls" / "a.png")
    monkeypatch.chdir(tmp_path)
    assert fashion_mnist(root=".").train.x.shape[0] == 6  # the files are there to be found
    _assert_refused(lambda: fashion_mnist(root=""), "fashion_mnist", "'root' is empty")
    assert image_folder(root=".", size=4).train.x.shape[0] == 1
    _assert_refused(lambda: image_folder(root="", size=4), "image_folder", "'root' is empty")
    _assert_refused(lambda: image_folder(root=".", size=4, test_root=""), "'test_root' is empty")


def test_fashion_mnist_root_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "fashion.gz"
    afile.write_bytes(b"")
    _assert_refused(lambda: fashion_mnist(root=str(afile)), str(afile), "is not a directory")


# -- architectures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "spec", "params", "needle"),
    [
        ("mlp", FLAT, {"hidden": (0,)}, "'hidden[0]' must be positive"),
        ("mlp", FLAT, {"hidden": (32, -4)}, "'hidden[1]' must be positive"),
        ("mlp", FLAT, {"dropout": -0.1}, "'dropout' must be in [0, 1)"),
        ("mlp", FLAT, {"dropout": float("nan")}, "'dropout' must be in [0, 1)"),
        ("cnn", IMAGES, {"channels": ()}, "'channels' must not be empty"),
        ("cnn", IMAGES, {"channels": (8, 0)}, "'channels[1]' must be positive"),
        ("cnn", IMAGES, {"hidden": 0}, "'hidden' must be positive"),
        ("resnet8", IMAGES, {"width": 0}, "'width' must be positive"),
        ("resnet20", IMAGES, {"width": -16}, "'width' must be positive"),
        ("wrn", IMAGES, {"widen": 0}, "'widen' must be positive"),
        ("wrn", IMAGES, {"depth": 4}, "6n + 4"),
        ("wrn", IMAGES, {"dropout": 1.0}, "'dropout' must be in [0, 1)"),
        ("torchvision", IMAGES, {"name": ""}, "unknown classification model"),
    ],
)
def test_impossible_architecture_parameters(arch: str, spec: ModelSpec, params: dict[str, Any],
                                            needle: str) -> None:
    _assert_refused(lambda: MODELS[arch](spec, **params), arch, needle)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "resnet8", "wrn"])
@pytest.mark.parametrize("spec", [ModelSpec((3, 0, 8), 10), ModelSpec((3, 8, 8), 0)])
def test_data_no_model_can_be_built_for(arch: str, spec: ModelSpec) -> None:
    # A zero-sized input or no class at all would build layers without weights.
    params = {"depth": 10, "widen": 1} if arch == "wrn" else {}
    _assert_refused(lambda: MODELS[arch](spec, **params), arch)


# -- in a recipe, before anything is loaded or built -------------------------------------------


@pytest.mark.parametrize(
    ("fn", "key", "value", "needle"),
    [
        (cifar10, "root", "", "'root' is empty"),
        (cifar100, "root", "a\0b", "NUL"),
        (fashion_mnist, "root", " ", "'root' is empty"),
        (image_folder, "size", 0, "'size' must be positive"),
        (image_folder, "test_root", "", "'test_root' is empty"),
        (MODELS["mlp"], "hidden", [16, 0], "'hidden[1]' must be positive"),
        (MODELS["cnn"], "channels", [], "'channels' must not be empty"),
        (MODELS["resnet32"], "width", 0, "'width' must be positive"),
        (MODELS["wrn"], "depth", 12, "6n + 4"),
        (MODELS["wrn"], "dropout", 1.5, "'dropout' must be in [0, 1)"),
    ],
)
def test_recipe_values_are_refused_by_their_declared_range(fn: Callable[..., Any], key: str,
                                                           value: Any, needle: str) -> None:
    # The ranges are Annotated metadata, so ``kdcore check`` refuses them with no data at hand.
    params = {"root": "somewhere", key: value} if fn is image_folder else {key: value}
    with pytest.raises(RecipeError) as err:
        bind_params(fn, params, "data.params")
    message = str(err.value)
    assert needle in message and f"data.params.{key}" in message


# -- through the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "teacher", "needle"),
    [
        ({"dataset": "cifar10", "params": {"root": ""}}, {}, "data.params.root: 'root' is empty"),
        ({}, {"arch": "mlp", "params": {"hidden": [0]}}, "params.hidden: 'hidden[0]' must be"),
        ({"params": {"flatten": False}}, {"arch": "cnn", "params": {"channels": []}},
         "params.channels: 'channels' must not be empty"),
    ],
)
def test_cli_reports_impossible_parameters_on_one_line(tmp_path: Path, data: dict[str, Any],
                                                       teacher: dict[str, Any],
                                                       needle: str) -> None:
    models = {**TINY_MODELS, "teacher": {**TINY_MODELS["teacher"], **teacher}}
    _assert_one_error_line(_run(tmp_path, data, models), needle)


# -- label spaces and ledgers the memory cannot hold ---------------------------------------------


class _ManyClasses:
    """A dataset plugin that declares ``classes`` classes for 40 samples."""

    classes = 10

    @staticmethod
    def loader():
        import torch

        from kdcore.data.base import ArrayDataset, DatasetSplits

        y = torch.arange(40) % 4  # classes 4 to 9 are warned of: no training sample
        return DatasetSplits(train=ArrayDataset(torch.randn(40, 5), y, _ManyClasses.classes))

    from kdcore import hookimpl

    @hookimpl
    def kdcore_add_datasets(self):
        return {"many_classes": self.loader}


MANY = _ManyClasses()


def _check_many(tmp_path: Path, classes: int, hidden: int = 16):
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import stage, tiny_recipe, write_recipe

    _ManyClasses.classes = classes
    data = tiny_recipe(stage("s", 1, ["student"], {"use": "ce"}))
    data["data"] = {"dataset": "many_classes", "batch_size": 8, "val_fraction": 0.0,
                    "test_fraction": 0.25, "eval_batch_size": 4}
    del data["models"]["teacher"]
    data["models"]["student"]["params"] = {"hidden": [hidden]}
    recipe = write_recipe(data, tmp_path / "many.toml")
    return CliRunner().invoke(main, ["check", str(recipe), "--plugin",
                                     "tests.test_impossible_params:MANY"])


def test_a_label_space_whose_transition_matrix_cannot_fit_is_refused_before_the_splits(
        tmp_path, monkeypatch):
    import kdcore.data.splits as splits

    def no_split(*args, **kwargs):  # make_splits loops over the classes: not reached
        raise AssertionError("make_splits ran")

    monkeypatch.setattr("kdcore.rundata.make_splits", no_split)
    assert splits.make_splits is not no_split
    result = _check_many(tmp_path, 10**7)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith(f"kdcore: error: {tmp_path / 'many.toml'}: data.dataset: dataset "
                           "'many_classes' has 10000000 classes: its transition matrix needs "
                           "727.6 TiB; "), line
    assert line.endswith(" GiB are free on cpu (a label space this large is a mistake)"), line


def test_a_ledger_that_cannot_fit_is_refused(tmp_path, monkeypatch):
    # 32 training samples x 10 classes x 2 float32 columns: 2,560 bytes (the transition
    # matrix: 800); a run may plan for half the free memory: refused with 5,119 bytes free
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 5_119)
    result = _check_many(tmp_path, 10)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"kdcore: error: {tmp_path / 'many.toml'}: data.train_subset: the ledger's targets of 32 "
        "samples x 10 classes needs 2.5 KiB; 5.0 KiB are free on cpu (lower it)"), result.output
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 5_120)
    assert _check_many(tmp_path, 10).exit_code == 0


@pytest.mark.parametrize("split", ["training", "test"])
def test_a_dataset_plugin_that_gives_an_empty_split_is_refused(tmp_path, monkeypatch, split):
    import torch

    from kdcore.data.base import ArrayDataset, DatasetSplits

    def loader():
        rows = 0 if split == "training" else 40
        full = ArrayDataset(torch.randn(rows, 5), torch.arange(rows) % 4, 10)
        test = ArrayDataset(torch.randn(0, 5), torch.zeros(0, dtype=torch.long), 10)
        return DatasetSplits(train=full, test=test if split == "test" else None)

    monkeypatch.setattr(_ManyClasses, "loader", staticmethod(loader))
    result = _check_many(tmp_path, 10)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"kdcore: error: dataset 'many_classes' gave an empty "
                                     f"{split} split"), result.output


def _good_split(rows=40, features=5):
    import torch

    from kdcore.data.base import ArrayDataset

    return ArrayDataset(torch.randn(rows, features), torch.arange(rows) % 4, 10)


def _wrong(what):
    import attrs
    import torch

    from kdcore.data.base import DatasetSplits

    good = _good_split()
    return {
        "dict": {"train": good},
        "x float64": DatasetSplits(attrs.evolve(good, x=good.x.double())),
        "x int64": DatasetSplits(attrs.evolve(good, x=good.x.long())),
        "y 2d": DatasetSplits(attrs.evolve(good, y=good.y[:, None])),
        "y float": DatasetSplits(attrs.evolve(good, y=good.y.float())),
        "y negative": DatasetSplits(attrs.evolve(good, y=good.y - 1)),
        "x short": DatasetSplits(attrs.evolve(good, x=good.x[:39])),
        "test shape": DatasetSplits(good, test=_good_split(features=6)),
        "test labels": DatasetSplits(good, test=attrs.evolve(good, y=good.y + 7)),
        "names": DatasetSplits(attrs.evolve(good, class_names=("a",))),
        "x nan": DatasetSplits(attrs.evolve(good, x=_with(good.x, (3, 1), math.nan))),
        "x inf": DatasetSplits(attrs.evolve(good, x=_with(_with(good.x, (7, 0), math.inf),
                                                          (30, 4), -math.inf))),
        "test nan": DatasetSplits(good, test=attrs.evolve(good, x=_with(good.x, (39, 4),
                                                                        math.nan))),
        "x numpy": DatasetSplits(attrs.evolve(good, x=good.x.numpy())),
        "x scalar": DatasetSplits(attrs.evolve(good, x=good.x[0, 0])),
        "x 1d": DatasetSplits(attrs.evolve(good, x=good.x[:, 0])),
        "x with a graph": DatasetSplits(attrs.evolve(good, x=good.x * torch.ones(
            (), requires_grad=True))),
        "classes 0": DatasetSplits(attrs.evolve(good, num_classes=0)),
        "classes 10.0": DatasetSplits(attrs.evolve(good, num_classes=10.0)),
        "classes True": DatasetSplits(attrs.evolve(good, num_classes=True)),
        "float mean": DatasetSplits(attrs.evolve(good, mean=(0.5,), std=(0.2,))),
        "float std": DatasetSplits(attrs.evolve(good, std=(0.2,))),
        **{f"images {k}": DatasetSplits(attrs.evolve(_images(), **v)) for k, v in {
            "mean alone": {"mean": (0.5, 0.5, 0.5), "std": None},
            "std alone": {"std": (0.2, 0.2, 0.2), "mean": None},
            "mean of 2": {"mean": (0.5, 0.5)},
            "std 0": {"std": (0.2, 0.0, 0.2)},
            "std nan": {"std": (0.2, math.nan, 0.2)},
            "mean inf": {"mean": (math.inf,)},
            "mean str": {"mean": "abc"},
            "mean number": {"mean": 0.5},
            "without channels": {"x": _images().x[:, 0], "mean": (0.5,), "std": (0.2,)},
        }.items()},
    }[what]


def _with(x, where, value):
    x = x.clone()
    x[where] = value
    return x


def _images(rows=40):
    """uint8 images of 3 channels, normalised per channel."""
    import torch

    from kdcore.data.base import ArrayDataset

    x = torch.arange(rows * 3 * 4 * 4).reshape(rows, 3, 4, 4).remainder(256).to(torch.uint8)
    return ArrayDataset(x, torch.arange(rows) % 4, 10, mean=(0.5, 0.4, 0.3),
                        std=(0.2, 0.2, 0.2))


@pytest.mark.parametrize(("what", "message"), [
    ("dict", "gave a dict, not DatasetSplits of ArrayDataset or FileDataset splits"),
    ("x float64", "its training inputs are torch.float64 of shape (40, 5) for 40 labels; "
                  "expected float32 (or uint8 images), one per label"),
    ("x int64", "its training inputs are torch.int64 of shape (40, 5) for 40 labels; expected "
                "float32 (or uint8 images), one per label"),
    ("y 2d", "its training labels are torch.int64 of shape (40, 1); expected integers of "
             "shape (N,)"),
    ("y float", "its training labels are torch.float32 of shape (40,); expected integers of "
                "shape (N,)"),
    ("y negative", "its training labels run from -1 to 2; classes are 0 .. 9"),
    ("x short", "inputs are torch.float32 of shape (39, 5) for 40 labels; expected float32 "
                "(or uint8 images), one per label"),
    ("test shape", "its test split holds inputs (6,) of 10 classes, the training split (5,) "
                   "of 10"),
    ("test labels", "its test labels run from 7 to 10; classes are 0 .. 9"),
    ("names", "names 1 classes of 10"),
    ("x nan", "its training inputs are not finite (NaN or infinite) in 1 sample (the first: "
              "sample 3); the loader should drop or fill them"),
    ("x inf", "its training inputs are not finite (NaN or infinite) in 2 samples (the first: "
              "sample 7); the loader should drop or fill them"),
    ("test nan", "its test inputs are not finite (NaN or infinite) in 1 sample (the first: "
                 "sample 39); the loader should drop or fill them"),
    ("x numpy", "its training inputs are a ndarray; expected a torch.Tensor (torch.from_numpy "
                "turns an array into one)"),
    ("x scalar", "its training inputs are torch.float32 of shape () for 40 labels; expected "
                 "float32 (or uint8 images), one per label"),
    ("x 1d", "its training inputs are of shape (40,): a single number per sample; give each "
             "sample its values along a dimension of their own (x[:, None] for one feature)"),
    ("x with a graph", "its training inputs carry an autograd graph (requires_grad); make "
                       "them data with .detach(), or build them under torch.no_grad()"),
    ("classes 0", "gave num_classes int 0; expected a whole number of classes, at least 1"),
    ("classes 10.0", "gave num_classes float 10.0; expected a whole number of classes, at "
                     "least 1"),
    ("classes True", "gave num_classes bool True; expected a whole number of classes, at "
                     "least 1"),
    ("float mean", "its training split gives a mean and std for float inputs, which are used "
                   "as they are; normalise them in the loader (mean and std apply to uint8 "
                   "images)"),
    ("float std", "its training split gives a mean and std for float inputs, which are used "
                  "as they are; normalise them in the loader (mean and std apply to uint8 "
                  "images)"),
    ("images mean alone", "its training split gives a mean without a std; give both, or "
                          "neither"),
    ("images std alone", "its training split gives a std without a mean; give both, or "
                         "neither"),
    ("images mean of 2", "its training split's mean has 2 values for 3 channels; expected 1 "
                         "or 3"),
    ("images std 0", "its training split's std is (0.2, 0.0, 0.2); expected finite values, "
                     "each above 0"),
    ("images std nan", "its training split's std is (0.2, nan, 0.2); expected finite values, "
                       "each above 0"),
    ("images mean inf", "its training split's mean is (inf,); expected finite values"),
    ("images mean str", "its training split's mean is str 'abc'; expected one number per "
                        "channel"),
    ("images mean number", "its training split's mean is float 0.5; expected one number per "
                           "channel"),
    ("images without channels", "its training split gives a mean and std for uint8 inputs of "
                                "shape (4, 4) per sample; they scale images of shape (C, H, W) "
                                "per channel (give the channel axis, even of 1)"),
])
def test_a_dataset_plugin_that_gives_what_datasetsplits_does_not_hold_is_refused(
        tmp_path, monkeypatch, what, message):
    """Each passed check and failed in the run, blamed on 'ce' or on nothing named, some
    after a whole epoch."""
    monkeypatch.setattr(_ManyClasses, "loader", staticmethod(lambda: _wrong(what)))
    result = _check_many(tmp_path, 10)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("kdcore: error: dataset 'many_classes'") and line.endswith(message)


def test_what_datasetsplits_holds_passes_its_checks():
    """The controls of the refusals above: uint8 images with a mean and std of one value per
    channel or one for all, or none; a numpy integer count of classes; float features."""
    import attrs
    import numpy as np
    import torch

    from kdcore.data.base import DatasetSplits
    from kdcore.data.split_checks import check_splits

    images = _images()
    one_class = attrs.evolve(_good_split(), y=torch.zeros(40, dtype=torch.long), num_classes=1)
    for split in (images, attrs.evolve(images, mean=(0.5,), std=(0.25,)),
                  attrs.evolve(images, mean=None, std=None), one_class,
                  attrs.evolve(_good_split(), num_classes=np.int64(10)), _good_split()):
        check_splits("d", DatasetSplits(split, test=split))


def _files(folder: Path, rows: int = 40):
    """A streamed split of ``rows`` 4x4 PNG files in ``folder``."""
    import numpy as np
    import torch

    from kdcore.data.base import FileDataset

    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(rows):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(np.full((4, 4, 3), 6 * i, dtype=np.uint8)).save(paths[-1])
    return FileDataset(paths=tuple(paths), y=torch.arange(rows) % 4, num_classes=10, size=4,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize(("change", "message"), [
    ({"paths": tuple(range(40))}, "lists int 0 as a path; expected a tuple of paths as strings"),
    ({"paths": "images/"}, "lists str 'images/' as a path; expected a tuple of paths as "
                           "strings"),
    ({"paths": lambda p: p[:30]}, "lists 30 image files for 40 labels; expected one per label"),
    ({"size": 0}, "resizes images to a size of int 0; expected a whole number of pixels, at "
                  "least 1"),
    ({"size": 2.5}, "resizes images to a size of float 2.5; expected a whole number of pixels, "
                    "at least 1"),
    ({"size": True}, "resizes images to a size of bool True; expected a whole number of "
                     "pixels, at least 1"),
    ({"paths": lambda p: (*p[:38], "gone.png", str(Path(p[0]).parent))},
     ": 2 of the 40 listed images are not files (first: gone.png)"),
])
def test_a_dataset_plugin_that_lists_files_it_cannot_stream_is_refused(
        tmp_path, monkeypatch, change, message):
    """An int path was read as an open file descriptor ('cannot read image 7: Bad file
    descriptor'); a short list was an IndexError; a missing file or a folder stopped the run
    at its batch, a size of 0 or 2.5 failed in the model's check with torch's words."""
    import attrs

    from kdcore.data.base import DatasetSplits
    from kdcore.data.split_checks import check_splits

    good = _files(tmp_path / "images")
    check_splits("d", DatasetSplits(attrs.evolve(good, size=1)))  # one pixel is a size
    monkeypatch.setattr(_ManyClasses, "loader", staticmethod(lambda: DatasetSplits(good)))
    assert _check_many(tmp_path, 10).exit_code == 0
    fields = {k: v(good.paths) if callable(v) else v for k, v in change.items()}
    monkeypatch.setattr(_ManyClasses, "loader",
                        staticmethod(lambda: DatasetSplits(attrs.evolve(good, **fields))))
    result = _check_many(tmp_path, 10)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    shown = message if message.startswith(":") else f" {message}"
    assert line == f"kdcore: error: dataset 'many_classes': its training split{shown}", line


def test_inputs_are_checked_for_nan_in_blocks_to_the_last_row(monkeypatch):
    """A block of a few rows at a time (not a boolean copy of a whole split): a NaN in a later
    block, and in the last row, is found with its row number."""
    import attrs

    from kdcore.data import split_checks
    from kdcore.data.base import DatasetSplits

    monkeypatch.setattr(split_checks, "_CHECK_BYTES", 3 * 5 * 4)  # 3 rows of 5 float32
    good = _good_split()
    split_checks.check_splits("d", DatasetSplits(good))
    for rows in ([39], [10, 20], [0, 2, 3]):
        x = good.x.clone()
        x[rows, 1] = math.nan
        with pytest.raises(KdcoreError) as err:
            split_checks.check_splits("d", DatasetSplits(attrs.evolve(good, x=x)))
        plural = "s" if len(rows) > 1 else ""
        assert f"in {len(rows)} sample{plural} (the first: sample {rows[0]});" in str(err.value)


# -- splits too small for what the recipe does with them -----------------------------------------


def _check_ce(*overrides: str):
    from click.testing import CliRunner

    from kdcore.cli import main

    recipe = Path(__file__).parents[1] / "recipes" / "ce.toml"
    args = ["check", str(recipe)] + [a for o in overrides for a in ("--set", o)]
    return CliRunner().invoke(main, args), recipe


def test_best_val_with_an_empty_validation_split_is_refused():
    """Every epoch's validation accuracy would be NaN, and the 'best' epoch the first."""
    result, recipe = _check_ce("data.val_fraction=0.0")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"kdcore: error: {recipe}: stages[0].keep: 'best_val' keeps the epoch with the best "
        "validation accuracy, but the validation split is empty; use keep = \"last\", or raise "
        "data.val_fraction")
    assert _check_ce("data.val_fraction=0.0", 'stages.0.keep="last"')[0].exit_code == 0
    # a fraction that rounds to no sample of any class (digits' classes: 174 to 183 samples)
    result, recipe = _check_ce("data.val_fraction=0.0025")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"kdcore: error: {recipe}: stages[0].keep: 'best_val' keeps the epoch with the best "
        "validation accuracy, but the validation split is empty (data.val_fraction = 0.0025 is "
        "taken of each class and rounded: of classes this small it rounds to no sample); use "
        "keep = \"last\", or raise data.val_fraction")


def test_a_test_fraction_that_carves_no_test_sample_is_refused():
    result, recipe = _check_ce("data.test_fraction=0.001", 'stages.0.keep="last"')
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"kdcore: error: {recipe}: data.test_fraction: carves no test sample from dataset "
        "'digits' (1797 samples; the fraction is taken of each class and rounded): a run "
        "without a test set has nothing to report; raise it")


def test_train_subset_is_exactly_the_size_asked_for_in_class_proportions():
    """Every size of digits' training split: exactly that many distinct rows, each class
    within one row of its proportional share, none left out once there are enough rows."""
    import numpy as np
    import torch

    from kdcore.rundata import _stratified_subset

    labels = torch.arange(1000) % 7  # seven classes of 143 or 142
    labels[:60] = 6  # and one larger
    index = torch.arange(1000) + 5
    counts_all = np.bincount(labels.numpy(), minlength=7)
    for size in [*range(1, 1000, 7), 6, 7, 999]:
        got = _stratified_subset(labels, index, size, torch.Generator().manual_seed(size))
        assert len(got) == size and len(set(got.tolist())) == size, size
        assert set(got.tolist()) <= set(index.tolist())
        counts = np.bincount(labels[got - 5].numpy(), minlength=7)
        assert np.all(np.abs(counts - counts_all * size / 1000) <= 1 + 1e-9), (size, counts)
        if size >= 7:
            assert np.all(counts >= 1), (size, counts)
        quota = counts_all * size / 1000
        if np.all(np.floor(quota) >= 1):  # no class needed a row moved to it: plain Hamilton
            expected = np.floor(quota).astype(int)
            order = sorted(range(7), key=lambda k: (-(quota[k] - expected[k]), k))
            expected[order[:size - expected.sum()]] += 1
            assert np.array_equal(counts, expected), (size, counts, expected)
        assert size >= 7 or np.all(counts <= 1)  # a row each for the first classes by share


def test_train_subset_leaves_no_class_out_where_it_can():
    """One class of 904 rows and six of 16: at 7 to 20 rows the small classes' shares round
    to nothing, and each still gets one row, taken from the large class."""
    import numpy as np
    import torch

    from kdcore.rundata import _stratified_subset

    labels = torch.cat([torch.zeros(904, dtype=torch.long), torch.arange(96) % 6 + 1])
    for size in range(7, 21):
        got = _stratified_subset(labels, torch.arange(1000), size, torch.Generator())
        counts = np.bincount(labels[got].numpy(), minlength=7)
        assert counts.tolist() == [size - 6] + [1] * 6, (size, counts)
    got = _stratified_subset(labels, torch.arange(1000), 6, torch.Generator())
    assert np.bincount(labels[got].numpy(), minlength=7).tolist() == [6, 0, 0, 0, 0, 0, 0]


def test_a_model_whose_parameters_cannot_fit_is_refused_before_it_is_built(tmp_path,
                                                                          monkeypatch):
    # the student (5 inputs, hidden [1000], 10 classes): 16,010 float32 = 64,040 bytes, more
    # than the data's checks (the ledger: 2,560); a run may plan for half the free memory
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 128_079)
    result = _check_many(tmp_path, 10, hidden=1000)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"kdcore: error: {tmp_path / 'many.toml'}: models.student.params: model 'student' (its "
        "parameters alone) needs 62.5 KiB; 125.1 KiB are free on cpu (a smaller model)")
    # its parameters alone fit; trained (SGD with momentum) it holds 3 x 64,040 = 192,120
    # bytes, and a batch of 8 rows saves 8 x 4 x (5 + 1000) = 32,160 for its backward pass:
    # 224,280 bytes, more than 0.8 x 128,080 (kdcore.footprint)
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 128_080)
    result = _check_many(tmp_path, 10, hidden=1000)
    assert result.exit_code == 2, result.output
    assert ("models.student.params: the models' training state needs 187.6 KiB and a training "
            "step's activations 31.4 KiB more (a batch of 8 rows in stage 's'); ") in result.output
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 280_349)
    assert _check_many(tmp_path, 10, hidden=1000).exit_code == 2
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 280_350)  # 0.8 x: 224,280
    assert _check_many(tmp_path, 10, hidden=1000).exit_code == 0


def test_without_a_validation_split_no_best_val_result_is_reported(tmp_path):
    """Before, the first epoch's numbers stood as the 'best-val' result (and summary.json held
    a bare NaN, which is not JSON)."""
    import json

    from click.testing import CliRunner

    from kdcore.cli import main

    run = tmp_path / "noval"
    res = CliRunner().invoke(main, [
        "run", str(Path(__file__).parents[1] / "recipes" / "ce.toml"),
        "--set", "data.train_subset=100", "--set",
        "stages.student.epochs=2", "--set", "data.val_fraction=0.0", "--set",
        'stages.student.keep="last"', "--out", str(run)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "student: no validation split, last " in res.output
    text = (run / "summary.json").read_text()
    assert "NaN" not in text
    student = json.loads(text)["student"]
    assert student["best_val_epoch"] is None and student["test_acc_at_best_val"] is None
    assert student["val_acc"] is None and 0 <= student["last_test_acc"] <= 1
    table = CliRunner().invoke(main, ["report", str(run)], catch_exceptions=False).output
    (row,) = [line for line in table.splitlines() if line.startswith("| noval")]
    assert row.split("|")[4].strip() == "-"
    assert row.split("|")[5].strip() == f"{100 * student['last_test_acc']:.2f}"  # one seed


# -- softmax temperatures -------------------------------------------------------------------------


def _temperature_fields() -> list[tuple[str, str]]:
    import attrs

    from kdcore.plugins import PluginHost

    host = PluginHost()
    return [(name, field.name) for name in host.components
            for field in attrs.fields(host.components.get(name).Params)
            if field.name.endswith("temperature")]


def test_every_temperature_of_every_installed_component_is_checked():
    fields = _temperature_fields()
    # hinton_kd's, the first-party packages' (AML-KD, ALM-KD, KDMLC, DML, SMKD, F&F, AWE)
    assert ("hinton_kd", "temperature") in fields and ("awe", "margin_temperature") in fields
    assert len(fields) >= 8, fields


@pytest.mark.parametrize(("use", "field"), _temperature_fields())
def test_a_temperature_where_float32_breaks_is_refused_by_the_recipe(use: str,
                                                                     field: str) -> None:
    """A KD term at T = 1e20 (T**2 infinite in float32) was NaN at the first step, after the
    recipe had passed `check`; T = 1e-40 overflowed the scaled logits."""
    from kdcore.plugins import PluginHost

    params = PluginHost().components.get(use).Params
    for value in (1e-3, 1e3):
        params(**{field: value})
    for value in (1e20, 1000.5, 9.99e-4, 1e-40, 0.0):
        with pytest.raises(ValueError, match=re.escape(
                f"'{field}' must be in [0.001, 1000] (a softmax temperature), got {value!r}")):
            params(**{field: value})


@pytest.mark.parametrize("dtype", ["int32", "uint8", "int16"])
def test_integer_labels_of_any_width_are_taken_as_they_are_meant(tmp_path, dtype):
    """int32 labels (NumPy's usual type on some platforms, np.loadtxt's) passed every check
    and then stopped the run: 'Index put requires the source and destination dtypes match'."""
    import torch

    from kdcore import History, PluginHost, hookimpl, run_recipe
    from kdcore.data.base import ArrayDataset, DatasetSplits
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 4
    train = ArrayDataset(torch.randn(120, 5, generator=g), y.to(getattr(torch, dtype)), 4)
    test = ArrayDataset(torch.randn(20, 5, generator=g), (torch.arange(20) % 4).to(torch.uint8),
                        4)

    class Loader:
        @hookimpl
        def kdcore_add_datasets(self):
            return {"narrow": lambda: DatasetSplits(train, test=test)}

    recipe = recipe_from_dict(tiny_recipe(stage("s", 1, ["student"], component("ce")),
                                          train_subset=0, data={"dataset": "narrow"}))
    summary = run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[Loader()]))
    assert 0 <= summary["student"]["last_test_acc"] <= 1
    with History(tmp_path / "run") as h:
        clean, ids = h.data("clean_label"), h.data("sample_id")
    assert clean.tolist() == y[torch.as_tensor(ids)].tolist()
    assert train.y.dtype == getattr(torch, dtype)  # the loader's own split is left as it was
