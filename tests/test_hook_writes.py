"""What the engine writes for a select or weight hook that abstains on some of an epoch's
batches: the identity, once the hook has written the column in that epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.hook_writes import HookWrites
from kdcore.ledger import Ledger
from kdcore.step import Produced

N = 8


def _batches(writes: HookWrites, steps, column="select/s"):
    """Run ``steps``: (rows, what the hook did: a tensor of values, or None to abstain)."""
    for rows, values in steps:
        writes.index = torch.tensor(rows)
        if values is None:
            writes.abstained(column, "s")
        else:
            writes.write(Produced(column, "s", values), "mask")


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_abstained_rows_hold_one_before_and_after_the_first_write(dtype):
    """Rows 0-1 abstained before the first write (filled at settle), 4-5 after it (at once);
    the rows written keep what the hook returned."""
    ledger = Ledger(N)
    ledger.add("select/s", torch.zeros(N, dtype=dtype), producer="earlier", kind="mask")
    writes = HookWrites(ledger)
    returned = torch.tensor([0, 1], dtype=dtype)
    _batches(writes, [([0, 1], None), ([2, 3], returned)])
    assert ledger["select/s"][[0, 1]].tolist() == [0, 0]  # not yet: the epoch's end decides
    assert ledger.producer("select/s") == "s"
    _batches(writes, [([4, 5], None), ([6, 7], returned)])
    assert ledger["select/s"][[4, 5]].tolist() == [1, 1]  # at once: it wrote this epoch
    writes.settle()
    expected = np.array([1, 1, 0, 1, 1, 1, 0, 1])
    np.testing.assert_array_equal(ledger["select/s"].double().numpy(), expected)
    assert ledger["select/s"].dtype == dtype and ledger.column("select/s").kind == "mask"


def test_a_column_a_hook_creates_is_tagged_with_it():
    ledger = Ledger(N)
    writes = HookWrites(ledger)
    writes.index = torch.tensor([1, 2])
    writes.write(Produced("weight/w", "w", torch.tensor([0.5, 2.0])), "weight")
    column = ledger.column("weight/w")
    assert (column.producer, column.kind) == ("w", "weight")
    assert column.data.tolist() == [0, 0.5, 2.0, 0, 0, 0, 0, 0]


def test_a_hook_that_abstains_all_epoch_writes_nothing_and_pending_rows_do_not_carry_over():
    ledger = Ledger(N)
    ledger.add("select/s", torch.zeros(N, dtype=torch.bool), producer="earlier", kind="mask")
    before = ledger["select/s"]._version
    writes = HookWrites(ledger)
    _batches(writes, [([0, 1, 2, 3], None), ([4, 5, 6, 7], None)])
    writes.settle()
    assert ledger["select/s"]._version == before and ledger.producer("select/s") == "earlier"
    _batches(writes, [([0, 1], None), ([2, 3], torch.tensor([False, True]))])
    writes.start()  # the next epoch: neither last epoch's abstentions nor its writes count
    _batches(writes, [([4, 5], None), ([6, 7], torch.tensor([True, False]))])
    writes.settle()
    assert ledger["select/s"].tolist() == [False, False, False, True, True, True, True, False]


def test_a_column_the_component_writes_itself_while_its_hook_abstains_is_kept():
    """small_loss with mask_loss = false records its mask itself and returns None: the
    engine never wrote that column, so its abstentions leave the record as it is."""
    ledger = Ledger(N)
    writes = HookWrites(ledger)
    for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
        ledger.write("select/s", torch.tensor(rows), torch.tensor([True, False, False, True]),
                     producer="s", kind="mask")
        writes.index = torch.tensor(rows)
        writes.abstained("select/s", "s")
    writes.settle()
    assert ledger["select/s"].tolist() == [True, False, False, True] * 2


def test_each_column_is_filled_on_its_own_and_tagged_with_its_hook():
    """A per-model abstention fills that model's column only."""
    ledger = Ledger(4)
    writes = HookWrites(ledger)
    writes.index = torch.tensor([0, 1])
    writes.write(Produced("weight/w/p", "w", torch.tensor([0.5, 0.25])), "weight")
    writes.abstained("weight/w/q", "w")
    writes.index = torch.tensor([2, 3])
    writes.write(Produced("weight/w/q", "w", torch.tensor([2.0, 3.0])), "weight")
    ledger.column("weight/w/p").producer = "someone else"
    writes.abstained("weight/w/p", "w")
    assert ledger.producer("weight/w/p") == "w"
    ledger.column("weight/w/q").producer = "someone else"
    writes.settle()
    assert ledger.producer("weight/w/q") == "w"
    assert ledger["weight/w/p"].tolist() == [0.5, 0.25, 1.0, 1.0]
    assert ledger["weight/w/q"].tolist() == [1.0, 1.0, 2.0, 3.0]
