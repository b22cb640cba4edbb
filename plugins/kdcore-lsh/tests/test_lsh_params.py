"""The hash functions' memory is checked in set-up, so ``kdcore check`` refuses a
``num_hashes`` that cannot fit (``10**12`` passed ``check`` and stopped the run on a failed
allocation when the LSH stage started, after the teacher's stage had trained)."""

from __future__ import annotations

import re

import pytest

import kdcore_lsh.mimic as mimic_module
from kdcore.errors import KdcoreError
from kdcore.testing import check_tiny, component, stage, teacher_stage, tiny_recipe


def _lsh(use: str, batch_size: int = 64, **params) -> dict:
    return tiny_recipe(teacher_stage(1), stage("s", 1, ["student"],
                                                component(use, params=params), component("ce")),
                       batch_size=batch_size)


@pytest.mark.parametrize("use", ["lsh", "lshl2", "lshl2_s"])
def test_a_projection_that_cannot_fit_is_refused_before_anything_trains(use):
    with pytest.raises(KdcoreError, match=re.escape(
            f"component '{use}': num_hashes = 1000000000000 (the projection and a batch's "
            "projections) needs ")) as err:
        check_tiny(_lsh(use, num_hashes=10**12))
    assert str(err.value).endswith(" (lower it)")


def test_set_up_counts_the_projection_and_a_batchs_projections(monkeypatch):
    seen = []
    monkeypatch.setattr(mimic_module, "check_fits", lambda what, n, *a, **k: seen.append(n))
    check_tiny(_lsh("lsh", batch_size=16, num_hashes=100))
    # W of 100 x 32 (the tiny teacher's features) and, per batch of 16, the student's and the
    # teacher's 16 x 100 projections and a gradient's: float32
    assert seen == [4 * (100 * 32 + 3 * 16 * 100)]
    seen.clear()
    check_tiny(_lsh("lsh", batch_size=16))
    assert seen == [4 * (32 * 32 * 32 + 3 * 16 * 32 * 32)]  # N = 32 D


def test_l2_mimicking_has_no_projection_to_check(monkeypatch):
    seen = []
    monkeypatch.setattr(mimic_module, "check_fits", lambda what, n, *a, **k: seen.append(n))
    check_tiny(_lsh("l2", num_hashes=10**12))
    assert seen == []
