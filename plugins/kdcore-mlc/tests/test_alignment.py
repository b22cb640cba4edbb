"""Disjoint gold / noisy / validation / test splits, and corrected labels aligned by index.

A test dataset carries each sample's row number in its last input column, so every split, every
gold batch and every training batch can be traced back to the rows they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import kdcore
from kdcore.testing import component, run_tiny, stage, tiny_recipe
from kdcore_mlc.mlc import MLC

MLP_STUDENT = {"arch": "mlp", "params": {"hidden": [16]}}  # the default lr (0.05)


def _recipe(*, dataset: str = "id_digits", epochs: int = 1, extra: tuple[dict, ...] = (),
            mlc: dict | None = None, student: dict | None = None, data: dict | None = None
            ) -> dict:
    """All of ``dataset`` (no subset) with a gold split; one stage of MLC on the student, then
    the ``extra`` components; ``mlc`` adds to its params, ``data`` to ``[data]``."""
    return tiny_recipe(
        stage("s", epochs, ["student"],
              component("mlc", params={"meta_lr": 1e-2, **(mlc or {})}), *extra),
        models={"student": student or MLP_STUDENT}, name="align", train_subset=0,
        gold_per_class=10, batch_size=64, run={"threads": 1, "checkpoint_interval_s": 30.0},
        data={"dataset": dataset, "val_fraction": 0.1, "test_fraction": 0.2, **(data or {})},
    )


ID_SCALE = 1e-4


def id_digits() -> kdcore.DatasetSplits:
    """scikit-learn digits plus a 65th column: the row number times 1e-4."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    ids = torch.arange(len(x), dtype=torch.float32)[:, None] * ID_SCALE
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return kdcore.DatasetSplits(train=kdcore.ArrayDataset(x=torch.cat([x, ids], 1), y=y,
                                                          num_classes=10))


def _ids(ds: kdcore.ArrayDataset) -> np.ndarray:
    return np.rint(ds.x[:, -1].cpu().numpy() / ID_SCALE).astype(np.int64)


class Tracer:
    """Records the splits at run start and the gold rows each training step used."""

    def __init__(self):
        self.splits: dict[str, np.ndarray] = {}
        self.gold_used: list[np.ndarray] = []
        self.true_labels = np.asarray(id_digits().train.y)

    @kdcore.hookimpl
    def kdcore_add_datasets(self):
        return {"id_digits": id_digits}

    @kdcore.hookimpl
    def kdcore_run_start(self, ctx):
        data = ctx.data
        self.splits = {s: _ids(data.split(s)) for s in ("train", "val", "gold", "test")}
        self.gold_labels = data.gold.y.cpu().numpy()
        self.train_source = data.train_source.cpu().numpy()

    @kdcore.hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        index = batch.store.require("mlc", "gold_index")
        self.gold_used.append(self.splits["gold"][index.cpu().numpy()])


def _run(tmp_path: Path, plugins, **recipe) -> Path:
    """Run :func:`_recipe` (``recipe`` its options) in ``tmp_path / "run"``."""
    run_tiny(_recipe(**recipe), tmp_path / "run", plugins=plugins)
    return tmp_path / "run"


@pytest.mark.slow
def test_gold_noisy_validation_and_test_splits_are_disjoint(tmp_path):
    tracer = Tracer()
    run_dir = _run(tmp_path, [tracer])
    s = tracer.splits
    for a in s:
        for b in s:
            if a < b:
                assert not set(s[a]) & set(s[b]), f"{a} and {b} overlap"
    assert sorted(np.concatenate(list(s.values()))) == list(range(1797))
    # the gold split is clean and class balanced
    np.testing.assert_array_equal(tracer.gold_labels, tracer.true_labels[s["gold"]])
    assert np.bincount(tracer.gold_labels, minlength=10).tolist() == [10] * 10
    # the history's sample ids are the noisy split's rows
    with kdcore.History(run_dir) as h:
        np.testing.assert_array_equal(h.data("sample_id"), s["train"])
    np.testing.assert_array_equal(tracer.train_source, s["train"])
    # every gold batch MLC drew came from the gold split only, each gold row once per pass
    used = np.concatenate(tracer.gold_used)
    assert set(used) <= set(s["gold"])
    assert not set(used) & (set(s["train"]) | set(s["val"]) | set(s["test"]))
    first_pass = used[:len(s["gold"])]
    assert sorted(first_pass) == sorted(s["gold"])


CHECKS: list[int] = []


class AlignCheck(kdcore.Component):
    """After the refinement, recomputes y^c from the sample ids alone and compares it with the
    batch's targets; after the step, with the ledger's rows of those ids."""

    mlcs: ClassVar[list[MLC]] = []  # the test's ``mlc_instances``: MLC set up for this run

    def transfer(self, ctx, batch):
        mlc = self.mlcs[-1]
        index = batch.index
        assert not torch.equal(index, index.sort().values)  # the batches are shuffled
        with torch.no_grad():
            # look the samples up by their ids, independently of the batch's own tensors
            x = ctx.data.inputs(ctx.data.train, index)
            features = ctx.models["student"](x)[1]
            expected, _ = mlc.lcn.correct(features, ctx.data.train_noisy[index])
        torch.testing.assert_close(batch.targets, expected, rtol=1e-5, atol=1e-6)
        # the same labels are what MLC left for this batch's later components
        torch.testing.assert_close(batch.store.require(mlc.name, "yc").detach(), expected,
                                   rtol=1e-5, atol=1e-6)
        batch.store.put(self.name, "expected", expected)
        return None

    def after_step(self, ctx, batch):
        # the engine has written the batch's final targets to the ledger by now
        expected = batch.store.require(self.name, "expected")
        ledger = ctx.ledger["target"][batch.index]
        torch.testing.assert_close(ledger, expected, rtol=1e-5, atol=1e-6)
        # and the check would see a shuffle: rows of other samples differ
        assert not torch.allclose(ledger, expected.roll(1, 0), rtol=1e-5, atol=1e-6)
        assert ctx.ledger.producer("target") == self.mlcs[-1].name
        CHECKS.append(len(batch.index))


class AlignPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"align_check": AlignCheck}


@pytest.mark.slow
def test_corrected_labels_stay_aligned_by_index(tmp_path, mlc_instances, monkeypatch):
    CHECKS.clear()
    monkeypatch.setattr(AlignCheck, "mlcs", mlc_instances)
    run_dir = _run(tmp_path, [AlignPlugin()], dataset="digits", epochs=2,
                   extra=(component("align_check"),))
    with kdcore.History(run_dir) as h:
        n = len(h.data("sample_id"))
        assert sum(CHECKS) == 2 * n  # every sample checked in each epoch
        # the snapshot is the ledger: each sample's row is the y^c of its last batch
        final = h.column("target", 1).astype(np.float64)
        np.testing.assert_allclose(final.sum(1), 1.0, atol=5e-3)
        assert h.producers("target") == ["mlc", "mlc"]


@pytest.mark.slow
@pytest.mark.parametrize("augment", [True, False])
def test_cutout_reaches_gold_batches_on_images(augment, tmp_path):
    """With image data and Cutout in data.augment, gold batches are cut out too (by default)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Peek:
        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            gold = batch.store.require("mlc", "gold")
            half = len(gold.meta_y)
            plain = ctx.data.inputs(ctx.data.gold, gold.index[:half].to(ctx.device))
            seen.append((gold.meta_x, plain))

    _run(tmp_path, [Peek()], dataset="digits", mlc={"augment_gold": augment},
         student={"arch": "cnn", "params": {"channels": [4], "hidden": 16}},
         data={"params": {"flatten": False},
               "augment": [{"name": "cutout", "params": {"size": 4}}]})
    x = torch.cat([a for a, _ in seen])
    plain = torch.cat([b for _, b in seen])
    assert x.shape[1:] == (1, 8, 8)
    changed = (x != plain).flatten(1).any(1)
    if augment:  # a hole over the digit's strokes changes nearly every image, only to zeros
        assert changed.float().mean() > 0.8
        assert bool((x[x != plain] == 0).all())
    else:
        assert not changed.any()
