"""The CIFAR recipes (recipes/cifar*.toml): every one passes `kdcore check` on tiny generated
CIFAR-10 / CIFAR-100 files in the python-version layout, and a few representative ones train one
epoch per stage on CPU with tiny widths. The CIFAR-N recipes (cifar10n-*, cifar100n-*) give each
image its human label by its row in CIFAR's 50,000-image training set, so they get generated
training sets of that size (blank images) with CIFAR-N label files that match them.

tests/test_shipped_recipes.py checks the other recipes without a data root; it leaves the CIFAR
ones to this file, which points them at the generated files with `--set data.params.root=...`.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcore import load_recipe, run_recipe, testing
from kdcore.cli import main
from kdcore.data.loaders.cifar_n import CIFAR_N_ROWS
from kdcore.recipe.resolve import load_raw

RECIPE_DIR = Path(__file__).parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("cifar*.toml"))
BASES = [RECIPE_DIR / "base-cifar10.toml", RECIPE_DIR / "base-cifar100.toml"]

N_TRAIN = {10: 400, 100: 600}  # every class present, with a validation image: 40 and 6
N_TEST = {10: 100, 100: 200}


def _pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj))


def _images_and_labels(n: int, classes: int, seed: int, blank: bool = False
                       ) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    images = (np.zeros((n, 3072), dtype=np.uint8) if blank
              else rng.integers(0, 256, (n, 3072), dtype=np.uint8))
    labels = rng.permutation(np.arange(n) % classes)  # every class, shuffled
    return images, labels.tolist()


def write_cifar10(root: Path, n_train: int = N_TRAIN[10]) -> Path:
    """Tiny CIFAR-10 in the release's layout (blank training images when there are as many as
    the real 50,000)."""
    return testing.write_cifar10(root, n_train=n_train, n_test=N_TEST[10],
                                 blank=n_train == CIFAR_N_ROWS)


def write_cifar100(root: Path, n_train: int = N_TRAIN[100]) -> Path:
    """Tiny CIFAR-100 in the release's layout: train, test and meta, fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, seed in (("train", 2), ("test", 3)):
        n = n_train if name == "train" else N_TEST[100]
        images, fine = _images_and_labels(n, 100, seed, blank=n == CIFAR_N_ROWS)
        coarse = [label // 5 for label in fine]
        _pickle(folder / name,
                {b"data": images, b"fine_labels": fine, b"coarse_labels": coarse})
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}
    _pickle(folder / "meta", meta)
    return folder


def _training_labels(folder: Path, keys: tuple[str, ...], label_key: bytes) -> np.ndarray:
    """The training labels of a generated CIFAR folder, in the loader's (the release's) order."""
    parts = [pickle.loads((folder / key).read_bytes())[label_key] for key in keys]
    return np.concatenate([np.asarray(part) for part in parts])


def _noisy(rng: np.random.Generator, clean: np.ndarray, rate: float, classes: int) -> np.ndarray:
    flip = rng.random(len(clean)) < rate
    return np.where(flip, rng.integers(0, classes, len(clean)), clean)


def write_cifar10n(path: Path, clean: np.ndarray) -> Path:
    """A CIFAR-10N release file for training labels ``clean``: numpy label columns as torch.save
    wrote them, with the release's column names; every class is confused somewhat."""
    rng = np.random.default_rng(4)
    columns = {"clean_label": clean, "aggre_label": _noisy(rng, clean, 0.09, 10),
               "worse_label": _noisy(rng, clean, 0.4, 10)}
    columns |= {f"random_label{i}": _noisy(rng, clean, 0.17, 10) for i in (1, 2, 3)}
    torch.save(columns, path)
    return path


def write_cifar100n(path: Path, clean: np.ndarray) -> Path:
    """A CIFAR-100N release file for fine training labels ``clean`` (coarse: ``fine // 5``)."""
    noisy = _noisy(np.random.default_rng(5), clean, 0.4, 100)
    torch.save({"clean_label": clean, "noisy_label": noisy, "clean_coarse_label": clean // 5,
                "noisy_coarse_label": noisy // 5}, path)
    return path


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cifar")
    return {"cifar10": str(write_cifar10(root)), "cifar100": str(write_cifar100(root))}


@pytest.fixture(scope="module")
def cifar_n_data(tmp_path_factory) -> dict[str, str]:
    """Training sets of CIFAR's 50,000 rows, and a folder with both CIFAR-N label files."""
    root = tmp_path_factory.mktemp("cifar_n")
    ten = write_cifar10(root, CIFAR_N_ROWS)
    hundred = write_cifar100(root, CIFAR_N_ROWS)
    labels = root / "CIFAR-N"
    labels.mkdir()
    batches = tuple(f"data_batch_{i}" for i in range(1, 6))
    write_cifar10n(labels / "CIFAR-10_human.pt", _training_labels(ten, batches, b"labels"))
    write_cifar100n(labels / "CIFAR-100_human.pt",
                    _training_labels(hundred, ("train",), b"fine_labels"))
    return {"cifar10": str(ten), "cifar100": str(hundred), "cifar_n": str(labels)}


@pytest.fixture
def data_for(request) -> Callable[[Path], dict[str, str]]:
    """The generated data for a recipe: full-size for the CIFAR-N ones (built on first use)."""
    def pick(path: Path) -> dict[str, str]:
        cifar_n = load_recipe(path).data.noise.model == "cifar_n"
        return request.getfixturevalue("cifar_n_data" if cifar_n else "cifar_data")
    return pick


def data_overrides(path: Path, data: dict[str, str]) -> list[str]:
    """The `--set` values that point a shipped recipe at the generated files."""
    recipe = load_recipe(path)
    overrides = [f"data.params.root={data[recipe.data.dataset]!r}"]
    if recipe.data.noise.model == "cifar_n":
        overrides.append(f"data.noise.params.path={data['cifar_n']!r}")
    return overrides


def test_there_are_cifar_recipes():
    names = {p.stem for p in RECIPES}
    for method in ("ce", "kd", "amlkd"):
        for setting in ("cifar10-{}-sym40", "cifar10-{}-pair40", "cifar10-{}-idn40",
                        "cifar10-{}-asym40",
                        "cifar100-{}-sym40", "cifar10n-{}-worst", "cifar10n-{}-aggre",
                        "cifar100n-{}-noisy"):
            assert setting.format(method) in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_cifar_recipe_checks(path, data_for):
    sets = [arg for value in data_overrides(path, data_for(path)) for arg in ("--set", value)]
    result = CliRunner().invoke(main, ["check", str(path), *sets])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_cifar_recipe_is_the_full_benchmark(path):
    """As shipped: the full data on the GPU when there is one, CIFAR networks at full width."""
    recipe = load_recipe(path)
    assert recipe.run.device == "auto" and recipe.data.train_subset == 0
    assert recipe.data.dataset in ("cifar10", "cifar100")
    assert [a.name for a in recipe.data.augment] == ["crop_flip"]
    assert {m.arch for m in recipe.models.values()} <= {"resnet56", "resnet8"}
    assert all(m.params.get("width", 16) == 16 for m in recipe.models.values())
    assert recipe.run.name == path.stem
    epochs = {role: 0 for role in recipe.models}
    for stage in recipe.stages:
        for role in stage.train:
            epochs[role] += stage.epochs
    assert epochs["student"] in (200, 240) and epochs["teacher"] in (0, 200)  # ce: no teacher
    if recipe.data.noise.model == "cifar_n":  # the release's own per-image human labels
        noise = recipe.data.noise.params
        assert noise["mode"] == "per_image" and recipe.data.noise.apply_to_val
        assert noise["label"] in (("noisy_label",) if recipe.data.dataset == "cifar100"
                                  else ("worse_label", "aggre_label"))
    if recipe.data.dataset == "cifar100":  # the CIFAR-100 data of base-cifar100.toml
        base = load_raw(BASES[1])["data"]
        assert recipe.data.params == base["params"] and recipe.data.dataset == base["dataset"]


def test_cifar_bases_are_not_runnable_alone():
    for path in BASES:
        result = CliRunner().invoke(main, ["check", str(path)])
        assert result.exit_code == 2 and "at least one [[stages]]" in result.output


# -- smoke runs: one epoch per stage, a few hundred images, tiny widths, on CPU ----------------

SMOKE = ["cifar10-kd-sym40", "cifar10-amlkd-idn40", "cifar100-ce-sym40", "cifar10n-ce-worst",
         "cifar100n-kd-noisy"]


def smoke_overrides(path: Path, data: dict[str, str]) -> list[str]:
    recipe = load_recipe(path)
    overrides = [*data_overrides(path, data), 'run.device="cpu"', "data.train_subset=300",
                 "data.batch_size=64", "run.checkpoint_interval_s=1000"]
    overrides += [f"models.{role}.params.width=4" for role in recipe.models]
    overrides += [f"stages.{stage.name}.epochs=1" for stage in recipe.stages]
    return overrides


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKE)
def test_cifar_recipe_smoke_run(name, data_for, tmp_path):
    path = RECIPE_DIR / f"{name}.toml"
    overrides = smoke_overrides(path, data_for(path))
    recipe = load_recipe(path, overrides)
    started = time.perf_counter()
    summary = run_recipe(recipe, out=str(tmp_path / "run"), progress=False, overrides=overrides)
    elapsed = time.perf_counter() - started
    print(f"{name}: {elapsed:.1f} s")
    trained = {role for stage in recipe.stages for role in stage.train}
    assert set(summary) == trained
    for role, result in summary.items():
        assert 0.0 <= result["test_acc_at_best_val"] <= 1.0, role
    assert (tmp_path / "run" / "summary.json").is_file()


def test_cifar_n_recipe_refuses_a_training_set_that_is_not_cifars(cifar_data, cifar_n_data):
    """Per-image labels on the tiny 400-image CIFAR-10: one clear error from `kdcore check`."""
    path = RECIPE_DIR / "cifar10n-ce-worst.toml"
    data = {**cifar_data, "cifar_n": cifar_n_data["cifar_n"]}
    sets = [arg for value in data_overrides(path, data) for arg in ("--set", value)]
    result = CliRunner().invoke(main, ["check", str(path), *sets])
    assert result.exit_code != 0
    assert "training split has 400 rows" in result.output and "50,000" in result.output
