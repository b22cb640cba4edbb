"""Small-loss selection: exact kept counts, rankings, scopes, and the ledger record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdcore
from kdcore.testing import component, run_tiny, stage, tiny_recipe
from kdcore_selection.small_loss import keep_smallest, kept_count

STUDENT = {"student": {"arch": "mlp", "params": {"hidden": [16]}}}  # the default lr (0.05)


def test_keep_smallest_picks_the_smallest():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert keep_smallest(losses, 2).tolist() == [False, True, False, True, False]
    assert not keep_smallest(losses, 0).any()


@pytest.mark.parametrize(("size", "rate"), [(64, 0.4), (10, 0.4), (256, 0.5), (7, 0.0)])
def test_kept_count_is_floor(size, rate):
    assert kept_count(size, rate) == math.floor(round((1 - rate) * size, 9))


class CountCheck:
    """Records, after each batch, how many samples of the batch the selection kept."""

    def __init__(self):
        self.counts = []

    @kdcore.hookimpl
    def kdcore_batch_end(self, run, batch, losses):
        mask = run.ledger["select/small_loss"][batch.index]
        self.counts.append((len(batch), int(mask.sum())))


def _run(tmp_path, params, batch=64, epochs=1, observer=None):
    recipe = tiny_recipe(
        stage("s", epochs, ["student"], component("small_loss", params=params), component("ce")),
        models=STUDENT, name="sl", batch_size=batch, run={"checkpoint_interval_s": 30.0})
    run_tiny(recipe, tmp_path / "run", plugins=[observer] if observer else [])
    return kdcore.History(tmp_path / "run")


def test_batch_scope_keeps_exactly_floor_of_each_batch(tmp_path):
    check = CountCheck()
    with _run(tmp_path, {"rate": 0.3}, batch=64, observer=check) as h:
        assert h.metric("select/small_loss/fraction")[0] == pytest.approx(
            sum(k for _, k in check.counts) / sum(b for b, _ in check.counts))
    assert check.counts and all(k == math.floor(0.7 * b + 1e-9) for b, k in check.counts)


def test_oracle_rate_is_the_realised_rate_and_pass_scope_records_without_masking(tmp_path):
    with _run(tmp_path, {"scope": "pass", "pass_batch_size": 50, "mask_loss": False}) as h:
        realised = 1 - h.data("clean_mask").mean()
        assert h.metric("select/small_loss/rate")[0] == pytest.approx(realised)
        mask = h.column("select/small_loss", 0)
        n = len(mask)
        full, rest = divmod(n, 50)
        expected = full * kept_count(50, realised) + (kept_count(rest, realised) if rest else 0)
        assert mask.sum() == expected
        # precision against the true noise mask is measured every epoch
        assert 0 <= h.metric("select/small_loss/precision")[0] <= 1


def test_dataset_scope_ranks_globally(tmp_path):
    with _run(tmp_path, {"scope": "dataset", "rate": 0.5, "ranking_model": "student"}) as h:
        mask = h.column("select/small_loss", 0)
        assert mask.sum() == kept_count(len(mask), 0.5)


def test_ramp_grows_the_dropped_share(tmp_path):
    with _run(tmp_path, {"rate": 0.4, "ramp_epochs": 2}, epochs=3) as h:
        np.testing.assert_allclose(h.metric("select/small_loss/rate"), [0.0, 0.2, 0.4])


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(kdcore.RecipeError, match=r"params\.rate.*\[0, 1\)"):
        _run(tmp_path, {"rate": 1.5})
    with pytest.raises(kdcore.RecipeError, match="did you mean 'scope'"):
        _run(tmp_path, {"scop": "batch"})
