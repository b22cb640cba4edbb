"""The LSHFM maths: golden values, the median split, scale invariance of zero-bias hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdcore_lsh import functional as lshf

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "golden.json").read_text())


def _t(key: str) -> torch.Tensor:
    return torch.tensor(GOLDEN[key], dtype=torch.float32)


@pytest.fixture
def golden():
    return (_t("student_features"), _t("teacher_features"), _t("projection"), _t("bias"),
            _t("teacher_logits"), torch.tensor(GOLDEN["labels"]))


def test_golden_per_sample_losses(golden):
    fs, ft, w, b, _, _ = golden
    expected = GOLDEN["per_sample"]
    torch.testing.assert_close(lshf.l2_loss(fs, ft), torch.tensor(expected["l2"]))
    torch.testing.assert_close(lshf.lsh_loss(fs, ft, w, b), torch.tensor(expected["lsh"]))
    assert lshf.hash_bits(ft, w, b).int().tolist() == GOLDEN["teacher_bits"]


def test_golden_batch_values_and_independent_recomputation(golden):
    fs, ft, w, b, logits, labels = golden
    batch = GOLDEN["batch"]
    l2 = lshf.l2_loss(fs, ft)
    lsh = lshf.lsh_loss(fs, ft, w, b)
    r = lshf.teacher_correct(logits, labels)
    assert r.tolist() == GOLDEN["correct"]
    got = {"l2": l2.mean(), "lsh": lsh.mean(), "lshl2": (l2 + lsh).mean(),
           "lshl2_s": ((l2 + lsh) * r).sum() / r.sum()}
    for name, value in got.items():
        assert float(value) == pytest.approx(batch[name], rel=1e-6), name
    # the same numbers from torch's own batch-reduced losses, written independently
    bits = ((ft @ w.t() + b) > 0).float()
    ref_l2 = F.mse_loss(fs, ft)
    ref_lsh = F.binary_cross_entropy_with_logits(fs @ w.t() + b, bits)
    ref_s = (F.mse_loss(fs[r], ft[r]) + F.binary_cross_entropy_with_logits(
        fs[r] @ w.t() + b, bits[r]))
    assert float(ref_l2) == pytest.approx(batch["l2"], rel=1e-6)
    assert float(ref_lsh) == pytest.approx(batch["lsh"], rel=1e-6)
    assert float(ref_l2 + ref_lsh) == pytest.approx(batch["lshl2"], rel=1e-6)
    assert float(ref_s) == pytest.approx(batch["lshl2_s"], rel=1e-6)


def test_gradients_reach_the_student_only(golden):
    fs, ft, w, b, _, _ = golden
    fs = fs.clone().requires_grad_(True)
    ft = ft.clone().requires_grad_(True)
    (lshf.l2_loss(fs, ft) + lshf.lsh_loss(fs, ft, w, b)).sum().backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert ft.grad is None  # the teacher is a fixed target
    assert lshf.l2_loss(ft, ft).abs().max() == 0


def test_teacher_correct_reads_soft_targets_by_argmax():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    soft = torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]])
    assert lshf.teacher_correct(logits, soft).tolist() == [True, False, True]
    assert lshf.teacher_correct(logits, torch.tensor([0, 2, 0])).tolist() == [True, True, False]


@pytest.mark.parametrize("n", [1, 2, 7, 64, 301])
def test_median_bias_splits_every_hash_function_in_half(n):
    gen = torch.Generator().manual_seed(n)
    features = torch.randn(n, 16, generator=gen).relu()  # ReLU features, like a trunk's
    w = lshf.draw_projection(200, 16, 0.1, gen)
    # small blocks: the blockwise pass must give the same bias as one block
    b = lshf.median_bias(features, w, block_elements=5 * n)
    torch.testing.assert_close(b, lshf.median_bias(features, w))
    ones = lshf.hash_bits(features, w, b).sum(dim=0)
    assert ones.tolist() == [n // 2] * 200


def test_median_bias_is_the_median_for_even_counts():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(100, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(10, 8, generator=gen, dtype=torch.float64)
    expected = -(features @ w.t()).quantile(0.5, dim=0)
    torch.testing.assert_close(lshf.median_bias(features, w), expected)


def test_mean_bias_centres_every_projection():
    gen = torch.Generator().manual_seed(1)
    features = torch.rand(500, 12, generator=gen, dtype=torch.float64)
    w = torch.randn(30, 12, generator=gen, dtype=torch.float64)
    u = lshf.project(features, w, lshf.mean_bias(features, w))
    torch.testing.assert_close(u.mean(dim=0), torch.zeros(30, dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e-3, 0.5, 2.0, 1e3])
def test_zero_bias_bits_ignore_the_feature_norm(scale):
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(128, 32, generator=gen)
    w = lshf.draw_projection(512, 32, 0.05, gen)
    zero = torch.zeros(512)
    bits = lshf.hash_bits(features, w, zero)
    assert torch.equal(lshf.hash_bits(scale * features, w, zero), bits)
    assert bits.float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_draw_projection_is_seeded():
    a = lshf.draw_projection(64, 8, 0.3, torch.Generator().manual_seed(5))
    b = lshf.draw_projection(64, 8, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert float(a.std()) == pytest.approx(0.3, rel=0.15)
