"""AML-KD loss pieces: golden values and their definitions, on fixed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdcore.losses import kd_kl, soft_cross_entropy
from kdcore_amlkd.losses import gram_mse

GOLDEN = Path(__file__).parent / "golden.json"


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(4, 3, generator=g, dtype=torch.float64),
            torch.randn(4, 3, generator=g, dtype=torch.float64),
            torch.randn(4, 5, generator=g, dtype=torch.float64),
            torch.randn(4, 5, generator=g, dtype=torch.float64))


def mixup_ce_reference(z, y, perm, lam, t):
    """The release's mixup CE: log-softmax of tempered logits, CE against both label sets."""
    logp = torch.log_softmax(z / t, 1)
    return -(lam * (y * logp).sum(1) + (1 - lam) * (y[perm] * logp).sum(1))


def compute():
    zs, zt, fs, ft = _inputs()
    y = torch.eye(3, dtype=torch.float64)[[0, 2, 1, 2]]
    perm = torch.tensor([2, 0, 3, 1])
    lam = 0.3
    mix = lam * soft_cross_entropy(zs / 4, y) + (1 - lam) * soft_cross_entropy(zs / 4, y[perm])
    return {"mixup_ce": mix.tolist(),
            "mixup_ce_ref": mixup_ce_reference(zs, y, perm, lam, 4.0).tolist(),
            "mixup_kd": kd_kl(zs, zt, 4.0).tolist(),
            "gram_mse": gram_mse(fs, ft).item()}


def test_golden_values():
    got = compute()
    want = json.loads(GOLDEN.read_text())
    for key in ("mixup_ce", "mixup_kd", "gram_mse"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    assert got["mixup_ce"] == pytest.approx(got["mixup_ce_ref"])


def test_gram_mse_is_zero_for_identical_features_and_scale_free():
    _, _, fs, _ = _inputs()
    assert gram_mse(fs, fs).item() == pytest.approx(0.0, abs=1e-12)
    assert gram_mse(3 * fs, fs).item() == pytest.approx(0.0, abs=1e-12)


def test_gram_mse_against_explicit_loop():
    _, _, fs, ft = _inputs()
    total = 0.0
    for i in range(4):
        for j in range(4):
            cs = torch.cosine_similarity(fs[i], fs[j], dim=0)
            ct = torch.cosine_similarity(ft[i], ft[j], dim=0)
            total += float((cs - ct) ** 2)
    assert gram_mse(fs, ft).item() == pytest.approx(total / 16)


if __name__ == "__main__":  # regenerate the fixture only when a loss is meant to change
    GOLDEN.write_text(json.dumps(compute(), indent=1) + "\n")


@pytest.mark.parametrize("beta, ok", [(1e-300, False), (1e-7, False), (1e-6, True), (4.0, True),
                                      (1e6, True), (1e7, False), (1e300, False)])
def test_beta_is_refused_where_float32_sampling_breaks(beta, ok):
    """torch draws Beta in float32: 1e-300 underflowed to 0 and the run stopped with a
    Dirichlet ValueError; now the recipe is refused by ``check``."""
    from kdcore_amlkd.losses import MixupParams

    if ok:
        assert MixupParams(beta=beta).beta == beta
    else:
        with pytest.raises(ValueError, match=r"'beta' must be in \[1e-06, 1000000\]"):
            MixupParams(beta=beta)
