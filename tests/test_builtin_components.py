"""The built-in baselines (kdcore/builtin/components.py) through the component harness: each
hook's values against a NumPy transcription of its formula, what it serves, what it detaches,
its parameters' defaults and ranges, and the plugin hooks that register them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdcore.builtin as builtin
from kdcore.builtin.components import (
    COMPONENTS,
    AllSamples,
    CrossEntropy,
    HintonKD,
    LabelSmoothing,
)
from kdcore.component import Batch
from kdcore.errors import RecipeError
from kdcore.terms import PerSampleLoss
from kdcore.testing import TinyNet, harness

N, D, C = 12, 6, 4


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    labels = torch.arange(N) % C
    return x, labels[torch.randperm(N, generator=g)]


def _models(*roles: str) -> dict[str, TinyNet]:
    out = {}
    for i, role in enumerate(roles):
        torch.manual_seed(10 + i)
        out[role] = TinyNet(D, C)
    return out


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _values(loss: torch.Tensor | PerSampleLoss) -> torch.Tensor:
    return loss.values() if isinstance(loss, PerSampleLoss) else loss


# -- ce ----------------------------------------------------------------------------------------


def test_ce_of_soft_targets_against_numpy_for_every_served_model():
    x, y = _data()
    models = _models("student", "peer")
    h = harness(CrossEntropy, x=x, noisy_label=y, models=models, train=("student", "peer"))
    batch = h.batch(torch.arange(N))
    q = torch.rand(N, C, generator=torch.Generator().manual_seed(3))
    batch.targets = q / q.sum(1, keepdim=True)
    out = h.component.transfer(h.ctx, batch)
    assert sorted(out) == ["peer", "student"]
    for role, model in models.items():
        logits = model(x)[0].detach().numpy()
        expected = -(batch.targets.numpy() * _np_log_softmax(logits)).sum(1)
        got = _values(out[role])
        np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
        assert float(out[role].mean().detach()) == pytest.approx(float(expected.mean()), rel=1e-5)


def test_ce_of_hard_labels_is_the_negative_log_probability_of_the_label():
    x, y = _data(1)
    models = _models("student")
    h = harness(CrossEntropy, x=x, noisy_label=y, models=models)
    base = h.run.ledger["base_target"]
    idx = torch.arange(N)
    batch = Batch(idx, x, y, forward=h.run.forward, num_classes=C, step=0, hard_targets=y,
                  targets_from=base)
    out = h.component.transfer(h.ctx, batch)["student"]
    log_p = _np_log_softmax(models["student"](x)[0].detach().numpy())
    expected = -log_p[np.arange(N), y.numpy()]
    np.testing.assert_allclose(_values(out).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    # the hard path never gathers the soft targets (they would be the same one-hot rows)
    assert batch._targets is None


def test_ce_trains_the_model_and_leaves_the_targets_alone():
    x, y = _data(2)
    models = _models("student")
    h = harness(CrossEntropy, x=x, noisy_label=y, models=models)
    batch = h.batch()
    targets = torch.full((N, C), 1.0 / C, requires_grad=True)
    batch.targets = targets
    h.component.transfer(h.ctx, batch)["student"].mean().backward()
    assert targets.grad is None
    assert all(p.grad is not None for p in models["student"].parameters())


# -- hinton_kd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_hinton_kd_against_numpy(temperature):
    x, y = _data(3)
    models = _models("student", "teacher")
    h = harness(HintonKD, {"temperature": temperature}, x=x, noisy_label=y, models=models)
    out = h.component.transfer(h.ctx, h.batch())
    assert list(out) == ["student"]
    s = models["student"](x)[0].detach().numpy() / temperature
    t = models["teacher"](x)[0].detach().numpy() / temperature
    log_ps, log_pt = _np_log_softmax(s), _np_log_softmax(t)
    expected = temperature ** 2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(1)
    # float32 log-probabilities differ by a few ulp, times T^2
    np.testing.assert_allclose(_values(out["student"]).detach().numpy(), expected, rtol=1e-5,
                               atol=1e-6 * max(1.0, temperature ** 2))


def test_hinton_kd_distils_from_the_named_role_without_training_it():
    x, y = _data(4)
    models = _models("student", "mentor", "teacher")
    h = harness(HintonKD, {"teacher": "mentor"}, x=x, noisy_label=y, models=models)
    loss = _values(h.component.transfer(h.ctx, h.batch())["student"])
    t = _np_log_softmax(models["mentor"](x)[0].detach().numpy() / 4.0)
    s = _np_log_softmax(models["student"](x)[0].detach().numpy() / 4.0)
    np.testing.assert_allclose(loss.detach().numpy(), 16.0 * (np.exp(t) * (t - s)).sum(1),
                               rtol=1e-5, atol=1.6e-5)
    # the mentor is not trained here: it runs without gradients
    loss.sum().backward()
    assert all(p.grad is None for p in models["mentor"].parameters())
    assert all(p.grad is None for p in models["teacher"].parameters())
    assert all(p.grad is not None for p in models["student"].parameters())


def test_hinton_kd_parameters():
    params = HintonKD.Params()
    assert params.teacher == "teacher" and params.temperature == 4.0
    for bad in (0.0, -1.0, 1e-4, 2e3, float("nan")):
        with pytest.raises(RecipeError, match="temperature"):
            harness(HintonKD, {"temperature": bad}, x=torch.zeros(2, D),
                    noisy_label=torch.tensor([0, 1]))
    for edge in (1e-3, 1e3):
        assert harness(HintonKD, {"temperature": edge}, x=torch.zeros(2, D),
                       noisy_label=torch.tensor([0, 1])).component.params.temperature == edge


# -- label_smoothing ---------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.35, 1.0])
def test_label_smoothing_moves_epsilon_to_the_uniform_distribution(epsilon):
    x, y = _data(5)
    h = harness(LabelSmoothing, {"epsilon": epsilon}, x=x, noisy_label=y)
    q = np.random.default_rng(0).dirichlet(np.ones(C), size=N).astype(np.float32)
    got = h.component.refine(h.ctx, h.batch(), torch.from_numpy(q))
    np.testing.assert_allclose(got.numpy(), (1 - epsilon) * q + epsilon / C, rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(got.sum(1).numpy(), np.ones(N), rtol=1e-6)


def test_label_smoothing_parameters():
    assert LabelSmoothing.Params().epsilon == 0.1
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(RecipeError, match="epsilon"):
            harness(LabelSmoothing, {"epsilon": bad}, x=torch.zeros(2, D),
                    noisy_label=torch.tensor([0, 1]))


# -- all_samples -------------------------------------------------------------------------------


def test_all_samples_selects_every_row_of_the_batch():
    x, y = _data(6)
    h = harness(AllSamples, x=x, noisy_label=y)
    mask = h.component.select(h.ctx, h.batch(torch.tensor([3, 0, 7])))
    assert mask.dtype == torch.bool and mask.tolist() == [True, True, True]
    # on the batch's device (the meta device stands in for a GPU here)
    idx = torch.arange(3, device="meta")
    elsewhere = Batch(idx, torch.zeros(3, D, device="meta"), idx, forward=h.run.forward,
                      num_classes=C, step=0)
    assert h.component.select(h.ctx, elsewhere).device.type == "meta"


# -- registration ------------------------------------------------------------------------------


def test_the_builtin_plugin_registers_the_baselines_under_their_recipe_names():
    assert COMPONENTS == {"ce": CrossEntropy, "hinton_kd": HintonKD,
                          "label_smoothing": LabelSmoothing, "all_samples": AllSamples}
    assert builtin.kdcore_add_components() is COMPONENTS
    from kdcore.data.augment import AUGMENTATIONS
    from kdcore.data.loaders import DATASETS
    from kdcore.data.noise import NOISE_MODELS
    from kdcore.loggers import LOGGERS
    from kdcore.models.zoo import MODELS

    assert builtin.kdcore_add_datasets() is DATASETS
    assert builtin.kdcore_add_noise_models() is NOISE_MODELS
    assert builtin.kdcore_add_models() is MODELS
    assert builtin.kdcore_add_augmentations() is AUGMENTATIONS
    assert builtin.kdcore_add_loggers() is LOGGERS
    for cls in COMPONENTS.values():
        assert cls.description and cls.__doc__
