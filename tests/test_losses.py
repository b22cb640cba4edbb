"""Golden values of the shared losses, and their agreement with PyTorch's own functions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdcore.losses import kd_kl, normalized_entropy, smooth_targets, soft_cross_entropy

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "losses.json").read_text())


def _inputs():
    i = GOLDEN["inputs"]
    return (torch.tensor(i["logits_s"], dtype=torch.float64),
            torch.tensor(i["logits_t"], dtype=torch.float64),
            torch.tensor(i["targets"], dtype=torch.float64))


def test_golden_values():
    s, t, q = _inputs()
    got = {
        "soft_cross_entropy": soft_cross_entropy(s, q),
        "kd_kl_T1": kd_kl(s, t, 1.0),
        "kd_kl_T4": kd_kl(s, t, 4.0),
        "smooth_targets_0.1": smooth_targets(q, 0.1).flatten(),
        "normalized_entropy": normalized_entropy(torch.softmax(s, 1)),
    }
    for name, value in got.items():
        assert value.tolist() == pytest.approx(GOLDEN["values"][name], rel=1e-9), name


def test_hand_computed_values():
    zero = torch.zeros(1, 2)
    assert soft_cross_entropy(zero, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(
        math.log(2))
    assert kd_kl(zero, zero, 4.0).item() == pytest.approx(0.0)
    assert normalized_entropy(torch.full((1, 4), 0.25)).item() == pytest.approx(1.0)


def test_agree_with_torch():
    s, t, q = _inputs()
    hard = torch.tensor([0, 2, 1])
    assert torch.allclose(soft_cross_entropy(s, F.one_hot(hard, 3).double()),
                          F.cross_entropy(s, hard, reduction="none"))
    for temp in (1.0, 4.0):
        ref = F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1),
                       reduction="batchmean") * temp**2
        assert kd_kl(s, t, temp).mean().item() == pytest.approx(ref.item())
    assert torch.allclose(soft_cross_entropy(s, smooth_targets(F.one_hot(hard, 3).double(), 0.1)),
                          F.cross_entropy(s, hard, reduction="none", label_smoothing=0.1))


def test_hard_label_path_is_bit_identical_to_one_hot_targets():
    torch.manual_seed(0)
    for scale in (1.0, 30.0):
        z = (torch.randn(64, 10) * scale).requires_grad_()
        y = torch.randint(0, 10, (64,))
        soft = soft_cross_entropy(z, F.one_hot(y, 10).float())
        (g_soft,) = torch.autograd.grad(soft.mean(), z)
        hard = soft_cross_entropy(z, F.one_hot(y, 10).float(), labels=y)
        (g_hard,) = torch.autograd.grad(hard.mean(), z)
        assert torch.equal(soft, hard) and torch.equal(g_soft, g_hard)
