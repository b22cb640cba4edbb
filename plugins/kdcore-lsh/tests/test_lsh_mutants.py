"""The checks that the mutation run of docs/mutation.md (target ``kdcore-lsh``) found missing:
the component's loss and mean bias against NumPy transcriptions, the bias kept under
``bias_update = "once"``, the edge cases of the functional helpers, the connector's seed,
dtype and messages."""

from __future__ import annotations

import types
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import kdcore
from kdcore.testing import TinyNet, harness
from kdcore_lsh import attach_connector
from kdcore_lsh import functional as lshf
from kdcore_lsh.connector import connector_seed
from kdcore_lsh.mimic import LSHL2Mimic, LSHMimic


def Net(d_in: int, hidden: int, classes: int) -> TinyNet:  # noqa: N802 (a model class in all but name)
    """A one-hidden-layer ReLU MLP: ``(logits, features)``."""
    return TinyNet(d_in, classes, hidden)


def mimic_harness(cls, params=None, *, student_hidden: int = 32, adapt: bool = True,
                  train=("student",)):
    """``cls`` serving a student beside a 32-feature teacher over 40 random inputs."""
    torch.manual_seed(0)
    x, y = torch.randn(40, 12), torch.randint(0, 5, (40,))
    models = {"teacher": Net(12, 32, 5), "student": Net(12, student_hidden, 5)}
    h = harness(cls, params, x=x, noisy_label=y, models=models, train=train,
                serves=("student",), name="feat")
    if adapt:
        h.component.adapt_models(h.ctx)
    return h


def np_bce_with_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


@pytest.mark.parametrize("cls", [LSHMimic, LSHL2Mimic])
def test_component_loss_is_the_numpy_lsh_bce_plus_l2(cls):
    h = mimic_harness(cls, {"num_hashes": 24}).setup()
    mimic = h.component
    assert mimic.bias.shape == (24,) and mimic.bias.abs().min() > 0  # the median bias
    batch = h.batch(list(range(0, 40, 3)))
    loss = mimic.transfer(h.ctx, batch)["student"]
    fs = batch.out("student").features.detach().double().numpy()
    ft = batch.out("teacher").features.detach().double().numpy()
    w, b = mimic.projection.double().numpy(), mimic.bias.double().numpy()
    bits = (ft @ w.T + b > 0).astype(np.float64)
    want = np_bce_with_logits(fs @ w.T + b, bits).mean(axis=1)
    if cls is LSHL2Mimic:
        want = want + ((fs - ft) ** 2).mean(axis=1)
    np.testing.assert_allclose(loss.detach().double().numpy(), want, rtol=1e-5)


def test_mean_bias_of_the_component_centres_the_teachers_training_features():
    h = mimic_harness(LSHMimic, {"num_hashes": 16, "bias": "mean"}).setup()
    mimic = h.component
    with torch.no_grad():
        feats = h.ctx.models["teacher"].eval()(h.run.data.train.x)[1].double().numpy()
    want = -(feats.mean(axis=0) @ mimic.projection.double().numpy().T)
    np.testing.assert_allclose(mimic.bias.double().numpy(), want, rtol=1e-5, atol=1e-6)


def test_zero_bias_has_one_entry_per_hash_function():
    mimic = mimic_harness(LSHMimic, {"num_hashes": 100, "bias": "zero"}).setup().component
    assert mimic.bias.shape == (100,) and not mimic.bias.any()


def test_bias_update_once_keeps_the_bias_of_the_stage_start():
    h = mimic_harness(LSHMimic, {"num_hashes": 16}, train=("student", "teacher")).setup()
    bias = h.component.bias.clone()
    with torch.no_grad():
        h.ctx.models["teacher"].trunk[0].weight.mul_(2.0)
    h.run.bump("teacher")
    h.epoch_start(1)
    assert torch.equal(h.component.bias, bias)


def test_sigma_metric_of_a_zero_spread_teacher_is_zero():
    h = mimic_harness(LSHMimic, {"num_hashes": 8})
    with torch.no_grad():
        h.ctx.models["teacher"].classifier.weight.fill_(0.25)
    h.setup()
    h.epoch_start(0)
    assert h.component.sigma == 0.0 and h.metrics["lsh/feat/sigma"] == 0.0


def test_setup_without_a_connector_names_the_sizes():
    h = mimic_harness(LSHMimic, student_hidden=16, adapt=False)
    with pytest.raises(kdcore.KdcoreError, match=r"^component 'feat': model 'student' has 16 "
                                                 r"features, the teacher 32, and no connector$"):
        h.component.setup(h.ctx)


def test_a_connector_of_another_size_is_refused_naming_the_component():
    h = mimic_harness(LSHMimic, adapt=False)
    attach_connector(h.ctx, "student", 20)
    with pytest.raises(kdcore.RecipeError, match=r"^component 'feat': model 'student' already"):
        h.component.adapt_models(h.ctx)
    with pytest.raises(kdcore.RecipeError, match=r"^component 'lsh': model 'student' already"):
        attach_connector(h.ctx, "student", 32)


# -- functional --------------------------------------------------------------------------------


def test_hash_bit_of_a_projection_of_exactly_zero_is_0():
    w = torch.randn(6, 4)
    assert not lshf.hash_bits(torch.zeros(3, 4), w, torch.zeros(6)).any()


def test_median_bias_of_no_sample_is_zero_and_of_one_sample_one_below():
    w = torch.randn(5, 8, dtype=torch.float64)
    empty = lshf.median_bias(torch.zeros(0, 8, dtype=torch.float64), w)
    assert empty.dtype == torch.float64 and empty.shape == (5,) and not empty.any()
    f = np.random.default_rng(0).normal(size=(1, 8))
    one = lshf.median_bias(torch.tensor(f), w)
    # the one sample on the 0 side of every hash function, 1 below its threshold
    np.testing.assert_allclose(one.numpy(), -(f @ w.numpy().T)[0] - 1.0, rtol=1e-12)


# -- the connector -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 2**62])
def test_connector_seed_formula(seed):
    want = (seed * 1000003 + zlib.crc32(b"kdcore-lsh/connector/student")) % 2**63
    assert connector_seed(seed, "student") == want


def _fake_ctx(seed: int, model: nn.Module):
    return SimpleNamespace(models=types.MappingProxyType({"student": model}),
                           recipe=SimpleNamespace(run=SimpleNamespace(seed=seed)))


def test_connector_is_initialised_under_the_roles_seed_in_the_models_dtype():
    ctx = _fake_ctx(3, Net(12, 16, 5).double())
    assert attach_connector(ctx, "student", 32)
    model = ctx.models["student"]
    torch.manual_seed((3 * 1000003 + zlib.crc32(b"kdcore-lsh/connector/student")) % 2**63)
    connector, classifier = nn.Linear(16, 32), nn.Linear(32, 5)
    for mine, ref in ((model.connector, connector), (model.classifier, classifier)):
        assert mine.weight.dtype == torch.float64 and mine.bias.dtype == torch.float64
        assert torch.equal(mine.weight, ref.weight.double())
        assert torch.equal(mine.bias, ref.bias.double())
