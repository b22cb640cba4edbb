"""CIFAR-N's per-image human labels (`cifar_n` noise, mode "per_image"): each sample gets the
release column's label at its row in CIFAR's original 50,000-image training set.

The release files written here have the real 50,000 rows (int arrays: cheap); the noisy labels
are compared with a NumPy indexing of the arrays that were written.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.data.base import NoiseContext
from kdcore.data.loaders.cifar_n import CIFAR_N_ROWS
from kdcore.data.noise import cifar_n
from kdcore.errors import KdcoreError
from kdcore.plugins import PluginHost
from kdcore.recipe import recipe_from_dict
from kdcore.rundata import build_run_data
from kdcore.testing import teacher_stage, tiny_recipe

CIFAR10N_COLUMNS = ("aggre_label", "worse_label", "random_label1", "random_label2",
                    "random_label3")


def release10(seed: int = 0) -> dict[str, np.ndarray]:
    """CIFAR-10N columns of the release's length; each noisy column differs from the clean one
    at random rows (about 40%), so a wrong row would show."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 10, CIFAR_N_ROWS)
    columns = {"clean_label": clean}
    for name in CIFAR10N_COLUMNS:
        flip = rng.random(CIFAR_N_ROWS) < 0.4
        columns[name] = np.where(flip, (clean + rng.integers(1, 10, CIFAR_N_ROWS)) % 10, clean)
    return columns


def release100(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 100, CIFAR_N_ROWS)
    noisy = np.where(rng.random(CIFAR_N_ROWS) < 0.4, rng.integers(0, 100, CIFAR_N_ROWS), clean)
    return {"clean_label": clean, "noisy_label": noisy, "clean_coarse_label": clean // 5,
            "noisy_coarse_label": noisy // 5}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("cifar_n")
    ten, hundred = release10(), release100()
    torch.save(ten, folder / "CIFAR-10_human.pt")
    torch.save(hundred, folder / "CIFAR-100_human.pt")
    return folder, ten, hundred


def _ctx(clean: np.ndarray, rows: np.ndarray, num_classes: int, *, size: int = CIFAR_N_ROWS,
         labels: np.ndarray | None = None) -> NoiseContext:
    y = torch.as_tensor(clean[rows] if labels is None else labels)
    return NoiseContext(y, num_classes, torch.Generator().manual_seed(0),
                        source_index=torch.as_tensor(rows), source_size=size)


ROWS = np.array([49_999, 0, 17, 12_345, 31_000, 5, 40_001, 17_000])


@pytest.mark.parametrize("label", CIFAR10N_COLUMNS)
def test_per_image_gives_the_release_label_at_each_row(files, label):
    folder, ten, _ = files
    noisy = cifar_n(_ctx(ten["clean_label"], ROWS, 10), path=str(folder), label=label,
                    mode="per_image")
    assert noisy.dtype == torch.int64
    assert noisy.tolist() == ten[label][ROWS].tolist()
    assert noisy.tolist() != ten["clean_label"][ROWS].tolist() or label == "aggre_label"


def test_per_image_cifar100n_fine_and_coarse(files):
    folder, _, hundred = files
    rows = np.random.default_rng(3).choice(CIFAR_N_ROWS, 500, replace=False)
    fine = cifar_n(_ctx(hundred["clean_label"], rows, 100), path=str(folder),
                   label="noisy_label", mode="per_image")
    assert fine.tolist() == hundred["noisy_label"][rows].tolist()
    coarse = cifar_n(_ctx(hundred["clean_coarse_label"], rows, 20),
                     path=str(folder / "CIFAR-100_human.pt"), label="noisy_coarse_label",
                     mode="per_image")
    assert coarse.tolist() == hundred["noisy_coarse_label"][rows].tolist()


def test_per_image_draws_nothing(files):
    folder, ten, _ = files
    ctx = _ctx(ten["clean_label"], ROWS, 10)
    before = ctx.generator.get_state()
    cifar_n(ctx, path=str(folder), mode="per_image")
    assert torch.equal(ctx.generator.get_state(), before)


def test_per_image_refuses_another_training_set(files):
    folder, ten, _ = files
    with pytest.raises(KdcoreError, match=r"training split has 400 rows.*50,000") as err:
        cifar_n(_ctx(ten["clean_label"], np.arange(10), 10, size=400), path=str(folder),
                mode="per_image")
    assert "\n" not in str(err.value) and str(err.value).endswith(
        "but the CIFAR-N release has 50,000; mode = 'transition' applies the human noise "
        "structure to other data instead")


def test_per_image_refuses_another_order(files):
    folder, ten, _ = files
    shuffled = np.roll(ten["clean_label"], 1)  # the same images, one row off
    with pytest.raises(KdcoreError, match=r"disagree with the release's clean column at \d+ of"
                       r" 8 rows \(first: training row 49999"):
        cifar_n(_ctx(shuffled, ROWS, 10, labels=shuffled[ROWS]), path=str(folder),
                mode="per_image")


def test_per_image_refuses_cifar100n_on_ten_classes(files):
    folder, ten, _ = files
    for mode in ("per_image", "transition"):
        with pytest.raises(KdcoreError, match="'noisy_label' is a CIFAR-100N annotation of 100 "
                           "classes, but the dataset has 10 classes"):
            cifar_n(_ctx(ten["clean_label"], ROWS, 10), path=str(folder), label="noisy_label",
                    mode=mode)


def test_per_image_needs_the_rows(files):
    folder, ten, _ = files
    ctx = NoiseContext(torch.as_tensor(ten["clean_label"][:5]), 10, torch.Generator())
    with pytest.raises(KdcoreError, match="source_index"):
        cifar_n(ctx, path=str(folder), mode="per_image")
    bad = _ctx(ten["clean_label"], ROWS, 10)
    bad.source_index = torch.tensor([0, 1])
    with pytest.raises(KdcoreError, match="one row in 0..49999 per sample"):
        cifar_n(bad, path=str(folder), mode="per_image")
    with pytest.raises(KdcoreError, match="mode must be"):
        cifar_n(_ctx(ten["clean_label"], ROWS, 10), path=str(folder), mode="per-image")


# -- through a run's data: train and validation rows of a loader's training split -------------


def _write_cifar10(root: Path, clean: np.ndarray) -> Path:
    """CIFAR-10 in the release's layout whose training image of row r holds r in its first two
    bytes, so that every split's rows can be read back from its inputs."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    images = np.zeros((CIFAR_N_ROWS, 3072), dtype=np.uint8)
    rows = np.arange(CIFAR_N_ROWS)
    images[:, 0], images[:, 1] = rows // 256, rows % 256
    per = CIFAR_N_ROWS // 5
    for i in range(5):
        part = slice(i * per, (i + 1) * per)
        batch = {b"data": images[part], b"labels": clean[part].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {b"data": images[:100], b"labels": clean[:100].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def _rows_of(x: torch.Tensor) -> np.ndarray:
    flat = x.reshape(len(x), -1)[:, :2].to(torch.int64).numpy()
    return flat[:, 0] * 256 + flat[:, 1]


def test_run_data_noises_train_and_val_by_their_source_rows(files, tmp_path):
    folder, ten, _ = files
    root = _write_cifar10(tmp_path, ten["clean_label"])
    data = {"dataset": "cifar10", "params": {"root": str(root)}, "train_subset": 300,
            "val_fraction": 0.002, "gold_per_class": 2,
            "noise": {"model": "cifar_n",
                      "params": {"path": str(folder), "label": "random_label2",
                                 "mode": "per_image"}}}
    recipe = recipe_from_dict(tiny_recipe(teacher_stage(), data=data))
    run = build_run_data(recipe.data, PluginHost(), 0, torch.device("cpu"))
    train_rows, val_rows = _rows_of(run.train.x), _rows_of(run.val.x)
    assert train_rows.tolist() == run.train_source.tolist() and 290 <= len(train_rows) <= 300
    assert len(val_rows) == 100 and not set(val_rows) & set(train_rows)
    column = ten["random_label2"]
    assert run.train_noisy.tolist() == column[train_rows].tolist()
    assert run.val_noisy.tolist() == column[val_rows].tolist()
    assert run.train.y.tolist() == ten["clean_label"][train_rows].tolist()
    expected_rate = float((column[train_rows] != ten["clean_label"][train_rows]).mean())
    assert run.noise_rate == pytest.approx(expected_rate)
    gold_rows = _rows_of(run.gold.x)  # the gold split stays clean
    assert run.gold.y.tolist() == ten["clean_label"][gold_rows].tolist()


def test_per_image_row_bounds_and_half_given_rows(files):
    folder, ten, _ = files
    for rows in (np.array([0, CIFAR_N_ROWS]), np.array([-1, 5])):
        bad = _ctx(ten["clean_label"], np.array([0, 5]), 10)
        bad.source_index = torch.as_tensor(rows)
        with pytest.raises(KdcoreError, match="one row in 0..49999 per sample"):
            cifar_n(bad, path=str(folder), mode="per_image")
    half = _ctx(ten["clean_label"], ROWS, 10)
    half.source_index = None
    with pytest.raises(KdcoreError, match=r"^cifar_n per_image noise needs each sample's row in "
                       r"the loader's training split \(NoiseContext\.source_index and "
                       r"source_size\), which were not given$"):
        cifar_n(half, path=str(folder), mode="per_image")
    shuffled = np.roll(ten["clean_label"], 1)
    with pytest.raises(KdcoreError, match="'random_label2' needs CIFAR's training images"):
        cifar_n(_ctx(shuffled, ROWS, 10, labels=shuffled[ROWS]), path=str(folder),
                label="random_label2", mode="per_image")


def test_transition_mode_is_seeded_and_needs_every_clean_class(files, tmp_path):
    folder, ten, _ = files
    draws = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # the global stream must not matter
        draws.append(cifar_n(_ctx(ten["clean_label"], np.arange(300), 10), path=str(folder)))
    assert torch.equal(*draws)
    gap = {k: v.copy() for k, v in ten.items()}
    gap["clean_label"] = np.where(gap["clean_label"] == 3, 4, gap["clean_label"])
    torch.save(gap, tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(KdcoreError, match="^the CIFAR-N file has no image of clean class 3$"):
        cifar_n(_ctx(ten["clean_label"], np.arange(10), 10), path=str(tmp_path))
