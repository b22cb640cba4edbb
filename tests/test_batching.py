"""An epoch's batches: batch_size rows at a time in the shuffled order, and a last batch of one
sample joined to the one before it (BatchNorm cannot train on one sample)."""

from __future__ import annotations

import pytest
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


@pytest.mark.slow
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


def _bn_check(n: int, batch_size: int, world: int, monkeypatch, batch_norm: bool = True,
              train: tuple[str, ...] = ("student",)) -> None:
    """prepare's check of a run's batches, on a stand-in run of ``n`` training rows."""
    from types import SimpleNamespace

    from torch import nn

    from kdcore import distributed, prepare
    from kdcore.api import as_recipe

    monkeypatch.setattr(distributed, "world", lambda: SimpleNamespace(size=world))
    recipe = as_recipe(tiny_recipe(stage("s", 1, list(train), component("ce")),
                                   batch_size=batch_size))
    layer = nn.BatchNorm1d(4) if batch_norm else nn.LayerNorm(4)
    run = SimpleNamespace(data=SimpleNamespace(train=range(n)),
                          models={"student": nn.Sequential(nn.Linear(4, 4), layer),
                                  "teacher": nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))})
    prepare._check_batch_norm_batches(recipe, run)


def test_a_batchnorm_model_is_refused_where_a_batch_or_a_share_of_one_holds_one_row(
        monkeypatch):
    from kdcore.errors import RecipeError

    with pytest.raises(RecipeError) as info:
        _bn_check(300, 1, 1, monkeypatch)
    assert str(info.value).endswith(
        "data.batch_size: model 'student' has BatchNorm layers, which cannot train on fewer "
        "than 2 rows, and 300 training samples in batches of 1 give a batch of 1; choose "
        "another data.batch_size")
    with pytest.raises(RecipeError) as info:  # 3 processes: a batch of 5 is shared 2, 2, 1
        _bn_check(300, 5, 3, monkeypatch)
    assert ("300 training samples in batches of 5 shared by 3 processes give a batch share "
            "of 1;") in str(info.value)
    with pytest.raises(RecipeError, match="give a batch share of 0;"):  # 302 = 50 x 6 + 2
        _bn_check(302, 6, 3, monkeypatch)
    with pytest.raises(RecipeError, match="model 'teacher' has BatchNorm"):  # trained here
        _bn_check(300, 1, 1, monkeypatch, batch_norm=False, train=("teacher",))
    with pytest.raises(RecipeError, match="1 training samples in batches of 64 give a batch of 1"):
        _bn_check(1, 64, 1, monkeypatch)
    _bn_check(300, 6, 3, monkeypatch)  # 2 rows for each process
    _bn_check(4, 3, 2, monkeypatch)  # one batch of all 4 rows (3 + the lone one): 2 each
    with pytest.raises(RecipeError, match="give a batch share of 1;"):  # batches of 3, then 4
        _bn_check(7, 3, 2, monkeypatch)
    _bn_check(301, 6, 3, monkeypatch)  # 301 = 49 x 6 + 7: the last batch's shares are 2, 2, 3
    _bn_check(300, 1, 1, monkeypatch, batch_norm=False)  # LayerNorm, and the teacher untrained
    _bn_check(0, 64, 1, monkeypatch)  # no rows: nothing to train on, nothing to refuse here
    with pytest.raises(RecipeError, match="in batches of 3 shared by 2 processes give a batch "
                                          "share of 1;"):
        _bn_check(300, 3, 2, monkeypatch)


def test_check_refuses_a_batchnorm_model_in_batches_of_one_naming_the_file(tmp_path):
    from kdcore.testing import write_recipe
    from tests.cli_helpers import invoke, one_line_error

    path = write_recipe(tiny_recipe(stage("student", 1, ["student"], component("ce"))),
                        tmp_path / "bn.toml")
    line = one_line_error(invoke("check", path, "--set", "data.batch_size=1", "--set",
                                 'models.student.params={hidden=[8], batch_norm=true}'))
    assert line.startswith(f"kdcore: error: {path}: data.batch_size: model 'student' has "
                           "BatchNorm layers")
