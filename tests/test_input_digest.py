"""The digest of each training sample's input, kept in the history so that ``--resume`` refuses
data whose content changed with its count and labels unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore import History, PluginHost, load_recipe, run_recipe
from kdcore.data import digest
from kdcore.data.digest import row_digests
from kdcore.errors import KdcoreError
from kdcore.testing import InterruptAt, Interrupted
from tests.cli_helpers import invoke
from tests.cli_helpers import one_line_error as assert_one_line_error

MASK = 2**64 - 1


def _splitmix_odd(i: int) -> int:
    """The i-th multiplier (1-based), by the reference splitmix64 finaliser in Python ints."""
    z = (i * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return (z ^ (z >> 31)) | 1


def _reference(x: np.ndarray) -> list[int]:
    """Each row's bytes as little-endian 64-bit words (the last zero-padded), summed with the
    multipliers modulo 2**64, xor the row's width in bytes; as signed int64."""
    out = []
    for row in x.reshape(len(x), -1):
        raw = row.tobytes()
        total = 0
        for k in range(0, len(raw), 8):
            word = int.from_bytes(raw[k:k + 8].ljust(8, b"\0"), "little")
            total = (total + word * _splitmix_odd(k // 8 + 1)) & MASK
        total ^= len(raw)
        out.append(total - 2**64 if total >= 2**63 else total)
    return out


@pytest.mark.parametrize("dtype, shape", [
    (np.uint8, (7, 1, 4, 4)),    # 16 bytes: whole words
    (np.uint8, (5, 3, 3)),       # 9 bytes: a padded last word
    (np.float32, (6, 5)),        # 20 bytes
    (np.bool_, (4, 3)),
    (np.int64, (3, 2)),
])
def test_digests_equal_an_independent_transcription(dtype, shape):
    rng = np.random.default_rng(0)
    x = (rng.random(shape) * 255).astype(dtype)
    assert row_digests(torch.from_numpy(x)).tolist() == _reference(x)


def test_a_change_of_any_one_byte_changes_that_rows_digest_only():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(9, 3, 5, 5), dtype=np.uint8)  # 75 bytes: a padded word
    before = row_digests(torch.from_numpy(x))
    for _ in range(200):
        row, flat = int(rng.integers(9)), int(rng.integers(75))
        changed = x.copy()
        changed.reshape(9, -1)[row, flat] ^= np.uint8(1 << int(rng.integers(8)))
        after = row_digests(torch.from_numpy(changed))
        assert (after != before).nonzero().flatten().tolist() == [row]


def test_rows_of_zeros_of_other_widths_and_empty_inputs():
    assert row_digests(torch.zeros(2, 3)).tolist() == [12, 12]
    assert row_digests(torch.zeros(2, 4)).tolist() == [16, 16]
    empty = row_digests(torch.zeros(0, 4))
    assert empty.shape == (0,) and empty.dtype == torch.int64
    halves = torch.ones(2, 3, dtype=torch.bfloat16)  # a dtype NumPy does not have
    assert row_digests(halves).tolist() == _reference(halves.view(torch.int16).numpy())


def test_the_digest_does_not_depend_on_the_block_size(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (50, 13), dtype=torch.uint8, generator=generator)
    whole = row_digests(x)
    monkeypatch.setattr(digest, "_BLOCK_BYTES", 24)  # one or two rows at a time
    assert torch.equal(row_digests(x), whole)
    assert whole.tolist() == _reference(x.numpy())


def test_data_changes_names_inputs_that_changed(tmp_path):
    from kdcore.checkpointing import data_changes
    from kdcore.history import HistoryWriter

    labels = torch.tensor([0, 1, 2, 1, 0], dtype=torch.int32)
    saved = {"noisy_label": labels, "input_digest": torch.arange(5)}
    path = tmp_path / "history.h5"
    HistoryWriter(path).create(recipe_toml="", versions={}, num_classes=3,
                               class_names=["a", "b", "c"], constants=saved,
                               transition_matrix=torch.eye(3).numpy())
    assert data_changes(path, 3, ["a", "b", "c"], saved) == []
    moved = dict(saved, input_digest=torch.tensor([0, 1, 7, 3, 9]))
    assert data_changes(path, 3, ["a", "b", "c"], moved) == ["the inputs differ at 2 of 5 samples"]


def test_data_changes_names_image_files_of_another_size(tmp_path):
    from kdcore.checkpointing import data_changes
    from kdcore.history import HistoryWriter

    saved = {"noisy_label": torch.tensor([0, 1, 2], dtype=torch.int32),
             "file_size": torch.tensor([100, 200, 300])}
    path = tmp_path / "history.h5"
    HistoryWriter(path).create(recipe_toml="", versions={}, num_classes=3,
                               class_names=["a", "b", "c"], constants=saved,
                               transition_matrix=torch.eye(3).numpy())
    assert data_changes(path, 3, ["a", "b", "c"], saved) == []
    resized = dict(saved, file_size=torch.tensor([100, 201, 300]))
    assert data_changes(path, 3, ["a", "b", "c"], resized) == [
        "the image files differ in size at 1 of 3 samples"]


def test_file_sizes_are_each_files_bytes_and_a_missing_file_is_one_line(tmp_path):
    paths = []
    for i, size in enumerate((0, 5, 70000)):
        paths.append(str(tmp_path / f"{i}.png"))
        Path(paths[-1]).write_bytes(b"x" * size)
    sizes = digest.file_sizes(paths)
    assert sizes.dtype == torch.int64 and sizes.tolist() == [0, 5, 70000]
    assert digest.file_sizes([]).tolist() == []
    gone = str(tmp_path / "gone.png")
    with pytest.raises(KdcoreError) as err:
        digest.file_sizes([*paths, gone])
    assert str(err.value) == f"cannot read image {gone}: No such file or directory"


@pytest.mark.slow
def test_resume_on_images_changed_with_the_same_labels_is_refused(tmp_path):
    """An .npz re-made with one training image changed (count and labels as before): the
    resume names it in one line and exit 2; the export of every column leaves the digest out."""
    rng = np.random.default_rng(3)
    y = np.arange(120) % 3
    x = rng.integers(0, 256, size=(120, 1, 6, 6), dtype=np.uint8)
    data = tmp_path / "images.npz"
    np.savez(data, x_train=x, y_train=y)
    overrides = ['data.dataset="npz"', f"data.params={{path={str(data)!r}}}",
                 "stages.0.epochs=2", 'data.noise={model="none"}']
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "ce.toml"
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe, overrides), out=str(out),
                   host=PluginHost(extra=[InterruptAt(epoch=1, batch=0)]))
    with History(out) as h:
        trained = int(h.data("sample_id")[4])
        assert h.data("input_digest").tolist() == _reference(x[h.data("sample_id")])
    x[trained, 0, 2, 3] ^= 1
    np.savez(data, x_train=x, y_train=y)
    args = ["run", recipe, "--out", out, "--resume", *sum((["--set", o] for o in overrides), [])]
    assert_one_line_error(invoke(*args), "the data are not those the run in",
                          "(the inputs differ at 1 of ", "--overwrite")
    exported = tmp_path / "all.csv"
    assert invoke("inspect", out, "--column", "all", "--csv", exported).exit_code == 0
    assert "input_digest" not in exported.read_text().splitlines()[0]

