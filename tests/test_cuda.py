"""On a GPU (skipped without one; benchmarks/gpu_check.sh runs them where there is one): the
batch loop does not wait for the device at every step; and on the GPU as on the CPU, the
per-sample loss a run records is the loss of the logits it records."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kdcore import History
from kdcore.loop import FINITE_CHECK_EVERY, Trainer
from kdcore.testing import component, run_tiny, stage, tiny_recipe

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_gpu
def test_the_batch_loop_synchronises_only_for_the_periodic_finite_check(tmp_path, monkeypatch):
    steps, syncs = [0], []
    train_batch = Trainer._train_batch

    def watched(self, *args, **kwargs):
        steps[0] += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_batch(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))

    monkeypatch.setattr(Trainer, "_train_batch", watched)
    recipe = tiny_recipe(stage("teacher", 2, ["teacher"], component("ce")),
                         stage("student", 2, ["student"], component("ce"),
                               component("hinton_kd", weight=0.5)),
                         run={"device": "cuda"}, train_subset=1024, batch_size=16)
    run_tiny(recipe, tmp_path / "run")
    assert steps[0] >= 4 * 1024 // 16 // 2  # every epoch's batches went through the watch
    # the loop's only wait for the device: one finiteness check per FINITE_CHECK_EVERY steps
    assert len(syncs) <= steps[0] // FINITE_CHECK_EVERY + 4, syncs[:3]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_a_runs_loss_records_are_the_losses_of_its_logits(tmp_path, device):
    recipe = tiny_recipe(stage("teacher", 2, ["teacher"], component("ce")),
                         run={"device": device}, train_subset=512)
    run_tiny(recipe, tmp_path / "run")
    with History(tmp_path / "run") as h:
        logits = h.column("logits/teacher")[-1].astype(np.float64)  # float16 in the file
        loss = h.column("loss/ce")[-1].astype(np.float64)
        labels = h.data("noisy_label")
    assert np.isfinite(loss).all() and loss.shape == labels.shape
    shifted = logits - logits.max(1, keepdims=True)
    expected = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(labels)), labels]
    np.testing.assert_allclose(loss, expected, atol=2e-2, rtol=1e-2)
