"""On a GPU (skipped without one; benchmarks/gpu_check.sh runs them where there is one): the
batch loop does not wait for the device at every step; and on the GPU as on the CPU, the
per-sample loss a run records is the loss of the logits it records."""

from __future__ import annotations

import threading
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
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            # the training thread's own: a GPU run's checkpoint is written on a background
            # thread, whose copies to the host wait for the device without stalling the loop
            warnings.showwarning = lambda message, *a, **k: syncs.append(
                (threading.current_thread().name, str(message)))
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_batch(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "_train_batch", watched)
    recipe = tiny_recipe(stage("teacher", 2, ["teacher"], component("ce")),
                         stage("student", 2, ["student"], component("ce"),
                               component("hinton_kd", weight=0.5)),
                         run={"device": "cuda"}, train_subset=1024, batch_size=16)
    run_tiny(recipe, tmp_path / "run")
    assert steps[0] >= 4 * 1024 // 16 // 2  # every epoch's batches went through the watch
    waits = [m for thread, m in syncs
             if thread == threading.main_thread().name and "called a synchronizing" in m]
    # the loop's only wait for the device: one finiteness check per FINITE_CHECK_EVERY steps
    assert 0 < len(waits) <= steps[0] // FINITE_CHECK_EVERY + 1, syncs[:3]


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_a_cached_teacher_trains_the_student_as_the_uncached_one(tmp_path, device):
    """``models.teacher.cache_outputs`` on the device: the stored pass's rows are gathered
    there, and the student ends where the per-batch teacher leads it (up to float rounding)."""
    recipe = tiny_recipe(stage("teacher", 1, ["teacher"], component("ce")),
                         stage("student", 2, ["student"],
                               component("hinton_kd", params={"teacher": "teacher"})),
                         run={"device": device})
    for cached in ("false", "true"):
        run_tiny(recipe, tmp_path / cached, overrides=[f"models.teacher.cache_outputs={cached}"])
    with History(tmp_path / "false") as a, History(tmp_path / "true") as b:
        assert b.setup["device"].startswith(device)
        np.testing.assert_allclose(b.metric("train/student/loss"),
                                   a.metric("train/student/loss"), rtol=1e-4, equal_nan=True)
