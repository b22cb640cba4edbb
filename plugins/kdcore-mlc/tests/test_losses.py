"""Golden values of MLC's and KDMLC's losses, the LCN's structure, and late labels' gradient."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore_mlc.lcn import LabelCorrectionNet, corrected_label
from kdcore_mlc.losses import LabelsAtBackward, kdmlc_student_loss, mlc_training_loss

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "fixtures" / "golden.json").read_text())
INP = GOLDEN["inputs"]


def _reference():
    """The independent NumPy implementation that wrote the fixture."""
    spec = importlib.util.spec_from_file_location("mlc_make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _t(name, dtype=torch.float64):
    return torch.tensor(INP[name], dtype=dtype)


def _torch_values() -> dict[str, object]:
    z, y, zc, t = _t("logits_s"), _t("corrected"), _t("clean_logits"), _t("teacher")
    yc = _t("clean_labels", torch.long)
    raw, noisy = _t("raw"), _t("noisy", torch.long)
    return {
        "mlc_training_loss_mix": float(mlc_training_loss(z, y, zc, yc)),
        "mlc_training_loss_plain": float(mlc_training_loss(z, y)),
        "kdmlc_teacher_beta0.5_T4": kdmlc_student_loss(z, y, t, 0.5, 4.0).tolist(),
        "kdmlc_lcn_beta0.3_T2": kdmlc_student_loss(z, y, None, 0.3, 2.0).tolist(),
        "kdmlc_beta0": kdmlc_student_loss(z, y, t, 0.0, 4.0).tolist(),
        "corrected_skip": corrected_label(raw, noisy, 3, True)[0].flatten().tolist(),
        "corrected_plain": corrected_label(raw[:, :3], noisy, 3, False)[0].flatten().tolist(),
    }


@pytest.mark.parametrize("name", sorted(GOLDEN["values"]))
def test_golden_values(name):
    expected = np.asarray(GOLDEN["values"][name], dtype=np.float64)
    np.testing.assert_allclose(np.asarray(_torch_values()[name]), expected, rtol=1e-10,
                               err_msg=f"plugin vs fixture: {name}")
    np.testing.assert_allclose(np.asarray(_reference().compute()[name]), expected, rtol=1e-12,
                               err_msg=f"independent NumPy vs fixture: {name}")


def test_golden_by_hand():
    """One value worked out from the formula alone: L_tr with the clean half."""
    z, y = INP["logits_s"], INP["corrected"]

    def logsm(row):
        norm = math.log(sum(math.exp(v) for v in row))
        return [v - norm for v in row]

    sce = [-sum(q * lp for q, lp in zip(yi, logsm(zi), strict=True)) for zi, yi in zip(z, y,
                                                                                       strict=True)]
    ce = [-logsm(zc)[lab] for zc, lab in zip(INP["clean_logits"], INP["clean_labels"],
                                             strict=True)]
    expected = (4 * sum(sce) / 4 + 2 * sum(ce) / 2) / 6
    assert GOLDEN["values"]["mlc_training_loss_mix"] == pytest.approx(expected, rel=1e-12)


def test_kdmlc_limits():
    z, y, t = _t("logits_s"), _t("corrected"), _t("teacher")
    from kdcore.losses import kd_kl, soft_cross_entropy

    torch.testing.assert_close(kdmlc_student_loss(z, y, t, 1.0, 3.0), kd_kl(z, t, 3.0))
    torch.testing.assert_close(kdmlc_student_loss(z, y, t, 0.0, 3.0), soft_cross_entropy(z, y))
    # the LCN source at T = 1 distils y^c itself: KL(y || p_s) = sce(z, y) - H(y)
    y_pos = torch.softmax(t, 1)
    entropy = -(y_pos * y_pos.log()).sum(1)
    torch.testing.assert_close(kdmlc_student_loss(z, y_pos, None, 1.0, 1.0),
                               soft_cross_entropy(z, y_pos) - entropy)


def test_lcn_structure_and_init():
    torch.manual_seed(0)
    lcn = LabelCorrectionNet(feature_dim=20, num_classes=5, cls_dim=128, skip=False)
    linears = [m for m in lcn.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(148, 128), (128, 128),
                                                                  (128, 5)]
    assert isinstance(lcn.net[1], torch.nn.Tanh) and isinstance(lcn.net[3], torch.nn.Tanh)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in linears)
    bound = math.sqrt(6.0 / (5 + 128))  # Xavier-uniform on the (C, e) embedding
    assert float(lcn.embedding.weight.detach().abs().max()) <= bound
    std = math.sqrt(2.0 / (148 + 128))  # Xavier-normal
    assert float(linears[0].weight.detach().std()) == pytest.approx(std, rel=0.05)
    h = torch.randn(16, 20)
    noisy = torch.randint(0, 5, (16,))
    y, a = lcn.correct(h, noisy)
    assert a is None and y.shape == (16, 5)
    torch.testing.assert_close(y.sum(1), torch.ones(16))


def test_skip_link_mixes_in_the_noisy_label():
    torch.manual_seed(0)
    lcn = LabelCorrectionNet(feature_dim=4, num_classes=3, cls_dim=8, skip=True)
    assert lcn.net[-1].out_features == 4  # C + 1
    noisy = torch.tensor([0, 1, 2, 2])
    y, a = lcn.correct(torch.randn(4, 4), noisy)
    assert a.shape == (4, 1) and bool(((a > 0) & (a < 1)).all())
    torch.testing.assert_close(y.sum(1), torch.ones(4))
    # the noisy class gets at least a (the skip weight)
    assert bool((y[torch.arange(4), noisy] >= a[:, 0] - 1e-7).all())
    raw = torch.tensor([[0.0, 0.0, 0.0, 50.0]])  # a -> 1: the noisy one-hot
    torch.testing.assert_close(corrected_label(raw, torch.tensor([1]), 3, True)[0],
                               torch.tensor([[0.0, 1.0, 0.0]]))


def test_labels_at_backward_value_now_gradient_later():
    """The value uses the labels of the forward pass, the gradient those of the backward."""
    torch.manual_seed(0)
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 4, dtype=torch.float64)
    now = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    later = torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    weights = torch.rand(5, dtype=torch.float64)
    for source in (teacher, None):
        def fn(logits, labels, source=source):
            return kdmlc_student_loss(logits, labels, source, 0.4, 3.0)

        value = LabelsAtBackward.apply(z, fn, now, lambda: later)
        torch.testing.assert_close(value, fn(z, now))
        (grad,) = torch.autograd.grad((weights * value).sum(), z)
        (expected,) = torch.autograd.grad((weights * fn(z, later)).sum(), z)
        torch.testing.assert_close(grad, expected)
