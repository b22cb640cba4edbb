"""An epoch's batches: batch_size rows at a time in the shuffled order, and a last batch of one
sample joined to the one before it (BatchNorm cannot train on one sample)."""

from __future__ import annotations

import torch

from kdcore import api
from kdcore.batching import batches_per_epoch, epoch_batches
from kdcore.history import History
from kdcore.testing import component, stage, tiny_recipe


def _expected_sizes(n: int, batch_size: int) -> list[int]:
    """Written out independently: full batches, then the rest; a rest of one merged."""
    full, rest = divmod(n, batch_size)
    if rest == 1 and full:
        return [batch_size] * (full - 1) + [batch_size + 1]
    return [batch_size] * full + ([rest] if rest else [])


def test_batches_cover_the_order_once_in_order_and_never_leave_one_sample_alone():
    for n in range(1, 61):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        for batch_size in range(1, 14):
            batches = epoch_batches(order, batch_size)
            assert [len(b) for b in batches] == _expected_sizes(n, batch_size), (n, batch_size)
            assert torch.equal(torch.cat(batches), order)
            assert batches_per_epoch(n, batch_size) == len(batches)


def test_a_batchnorm_model_trains_on_a_set_one_more_than_a_multiple_of_the_batch(tmp_path):
    """300 training rows in batches of 13: 23 batches of 13 and one of 1, which stopped the run
    at the end of its first epoch ("Expected more than 1 value per channel when training")."""
    student = {"arch": "mlp", "optimizer": {"lr": 0.1},
               "params": {"hidden": [8], "batch_norm": True}}
    recipe = tiny_recipe(stage("student", 1, ["student"], component("ce")), train_subset=300,
                         batch_size=13, models={"student": student})
    result = api.run(recipe, out=tmp_path / "run")
    assert result.summary["student"]["last_test_acc"] is not None
    with History(tmp_path / "run") as h:
        assert len(h.data("sample_id")) == 300  # the set the test means: 300 = 23 x 13 + 1
        assert not torch.isnan(torch.from_numpy(h.column("loss/ce", 0)).float()).any()
