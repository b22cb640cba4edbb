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
from kdcore.testing import assert_same_history, component, run_tiny, stage, tiny_recipe

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


@pytest.mark.parametrize("labels_on", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("generator_on", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_noise_models_and_splits_with_a_generator_on_either_device(labels_on, generator_on):
    """A direct caller may hand a CUDA generator (runs use a CPU one): every model draws on the
    generator's device and returns int64 labels on the labels' device, the same for a seed."""
    from kdcore.data.base import NoiseContext
    from kdcore.data.noise import NOISE_MODELS
    from kdcore.data.splits import make_splits

    labels = (torch.arange(200) % 4).to(labels_on)
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0)).to(labels_on)
    cases = [("symmetric", {"rate": 0.4}), ("symmetric", {"rate": 0.4, "include_true": True}),
             ("pair_flip", {"rate": 0.3, "mapping": "random"}),
             ("instance_dependent", {"rate": 0.3}), ("instance_dependent", {"rate": 0.3, "std": 0}),
             ("transition_matrix", {"matrix": [[0.7, 0.1, 0.1, 0.1]] * 4})]
    for name, params in cases:
        draws = []
        for _ in range(2):
            gen = torch.Generator(device=generator_on).manual_seed(3)
            draws.append(NOISE_MODELS[name](NoiseContext(labels, 4, gen, x=x), **params))
        assert draws[0].device == labels.device and draws[0].dtype == torch.int64, name
        assert torch.equal(*draws) and not torch.equal(draws[0], labels), name
    parts = make_splits(labels, num_classes=4, val_fraction=0.25, gold_per_class=2,
                        generator=torch.Generator(device=generator_on).manual_seed(1))
    assert sum(len(p) for p in parts.values()) == 200
    assert all(p.device.type == "cpu" for p in parts.values())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_a_deterministic_run_repeats_bit_for_bit(tmp_path, device):
    """``run.deterministic`` on a conv net (cuDNN's convolutions, their backward passes) and
    AML-KD's label propagation (sparse products, index additions): two runs of one seed write
    the same history. On the CPU that holds anyway; on a GPU it is what the setting is for."""
    recipe = tiny_recipe(stage("teacher", 2, ["teacher"], component("ce")),
                         stage("student", 2, ["student"],
                               component("initial_lp", params={"teacher": "teacher"}),
                               component("ce"), component("mixup_kd", weight=0.5)),
                         models={role: {"arch": "cnn", "params": {"channels": [8, 16]}}
                                 for role in ("teacher", "student")},
                         run={"device": device, "deterministic": True},
                         data={"params": {"flatten": False}}, train_subset=256)
    for name in ("a", "b"):
        run_tiny(recipe, tmp_path / name)
    assert_same_history(tmp_path / "a", tmp_path / "b")
    with History(tmp_path / "a") as h:
        assert h.setup["device"].startswith(device)
