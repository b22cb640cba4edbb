"""The ledger on its own: columns, their producers and kinds, writes by rows, mirrors and the
state a checkpoint keeps."""

from __future__ import annotations

import re

import pytest
import torch

from kdcore.ledger import Ledger


def test_a_column_is_a_detached_copy_with_its_metadata():
    led = Ledger(4)
    source = torch.arange(4.0, requires_grad=True)
    data = led.add("w", source, producer="awe", kind="weight", snapshot=False)
    assert data is led["w"] and not data.requires_grad and torch.equal(data, source.detach())
    source.data.add_(1)  # the component's own tensor moves on; the column does not
    assert torch.equal(led["w"], torch.arange(4.0))
    column = led.column("w")
    assert (column.producer, column.kind, column.snapshot, column.origin) == (
        "awe", "weight", False, None)
    assert led.add("v", torch.zeros(4), producer="p") is led["v"]
    assert (led.column("v").kind, led.column("v").snapshot) == ("value", True)
    with pytest.raises(ValueError) as info:
        led.add("x", torch.zeros(3, 2), producer="p")
    assert str(info.value) == "ledger column 'x' needs 4 rows, got 3"


def test_ensure_creates_once_full_of_its_fill():
    led = Ledger(3)
    like = torch.ones(2, 5, dtype=torch.float64)
    data = led.ensure("t", like, producer="lp", kind="target", fill=0.25, snapshot=False)
    assert data.shape == (3, 5) and data.dtype == torch.float64
    assert torch.equal(data, torch.full((3, 5), 0.25, dtype=torch.float64))
    assert (led.producer("t"), led.column("t").kind, led.column("t").snapshot) == (
        "lp", "target", False)
    data[0] = 7
    again = led.ensure("t", torch.ones(1, 9), producer="other", fill=1)
    assert again is data and led.producer("t") == "lp"  # there already: left as it is
    plain = led.ensure("m", torch.ones(2, dtype=torch.bool), producer="sel")
    assert torch.equal(plain, torch.zeros(3, dtype=torch.bool))
    assert (led.column("m").kind, led.column("m").snapshot) == ("value", True)


def test_writes_land_on_their_rows_and_name_the_last_writer():
    led = Ledger(5)
    led.write("loss/ce", torch.tensor([3, 1]), torch.tensor([0.5, 0.25], requires_grad=True),
              producer="ce", kind="value", snapshot=False)
    assert torch.equal(led["loss/ce"], torch.tensor([0, 0.25, 0, 0.5, 0]))
    assert (led.producer("loss/ce"), led.column("loss/ce").snapshot) == ("ce", False)
    led.write("loss/ce", torch.tensor([0]), torch.tensor([2], dtype=torch.int64), producer="b")
    assert led["loss/ce"].dtype == torch.float32 and float(led["loss/ce"][0]) == 2.0
    assert led.producer("loss/ce") == "b" and led.column("loss/ce").kind == "value"
    led.write("new", torch.tensor([1]), torch.tensor([1.5]), producer="c")
    assert led.column("new").kind == "value" and led.column("new").snapshot
    led.write("mask", torch.tensor([4]), torch.tensor([True]), producer="s", kind="mask")
    assert led.column("mask").kind == "mask" and led.column("mask").snapshot
    assert torch.equal(led.read("loss/ce", torch.tensor([1, 0])), torch.tensor([0.25, 2.0]))

    assert led.read("loss/ce") is led["loss/ce"]

@pytest.mark.parametrize("kind", ["mask", "weight", "value"])
def test_floating_values_widen_a_bool_or_integer_column_and_leave_labels_integers(kind):
    """A selector whose first batch gave a bool mask and a later one soft scores: cast to
    the column's bool, a score of 0.3 became 1 (an integer weight column, 2.5 became 2)."""
    led = Ledger(4)
    led.write("c", torch.tensor([0, 1]), torch.tensor([True, False]), producer="s", kind=kind)
    first = led["c"]
    led.write("c", torch.tensor([2, 3]), torch.tensor([0.3, 1.0], dtype=torch.float64),
              producer="s", kind=kind)
    assert led["c"].dtype == torch.float64 and led["c"] is not first
    assert led["c"].tolist() == [1.0, 0.0, 0.3, 1.0] and led.column("c").kind == kind
    led.write("w", torch.tensor([0]), torch.tensor([2]), producer="w", kind=kind)
    led.write("w", torch.tensor([1]), torch.tensor([2.5]), producer="w", kind=kind)
    assert led["w"].tolist() == [2.0, 2.5, 0.0, 0.0]
    led.write("l", torch.tensor([0]), torch.tensor([3]), producer="d", kind="label")
    led.write("l", torch.tensor([1]), torch.tensor([2.7]), producer="d", kind="label")
    assert led["l"].dtype == torch.int64 and led["l"].tolist() == [3, 2, 0, 0]
    led.write("f", torch.tensor([0]), torch.tensor([0.5]), producer="d", kind=kind)
    led.write("f", torch.tensor([1]), torch.tensor([True]), producer="d", kind=kind)
    assert led["f"].dtype == torch.float32 and led["f"].tolist() == [0.5, 1.0, 0.0, 0.0]


def test_marks_tell_which_columns_of_their_prefixes_nothing_wrote_since():
    led = Ledger(3)
    for name in ("select/a", "select/b", "weight/w", "loss/ce", "logits/s", "lp/x", "target"):
        led.add(name, torch.zeros(3), producer="p")
    assert set(led.marks(("loss/", "logits/"))) == {"loss/ce", "logits/s"}
    marks = led.marks(("loss/", "logits/"), {"select/a", "select/b", "weight/w", "none"})
    assert set(marks) == {"select/a", "select/b", "weight/w", "loss/ce", "logits/s"}
    led.write("select/a", torch.tensor([1]), torch.tensor([1.0]), producer="p")  # in place
    led.add("weight/w", torch.ones(3), producer="p")  # replaced
    led["loss/ce"].add_(1)  # edited in place by whoever holds it
    led.write("lp/x", torch.tensor([0]), torch.tensor([2.0]), producer="p")  # not marked
    led.add("select/new", torch.ones(3), producer="p")  # made since: not in the marks
    assert led.unwritten(marks) == {"select/b", "logits/s"}
    with torch.inference_mode():  # a tensor that keeps no version: counted as written
        led.add("select/inf", torch.ones(3), producer="p")
    assert "select/inf" in led.marks(("select/",))
    assert led.unwritten(led.marks(("select/",))) == {"select/a", "select/b", "select/new"}
    assert led.marks((), {"lp/x"}).keys() == {"lp/x"}


def test_a_mirror_copies_only_when_something_changed():
    led = Ledger(3)
    led.add("base", torch.zeros(3), producer="data", kind="target")
    led["base"].zero_()  # edited in place before the first copy: its version is not the copy's
    led.mirror("target", "base", kind="target")
    first = led["target"]
    assert torch.equal(first, led["base"]) and first is not led["base"]
    assert led.producer("target") == "data"
    led.mirror("target", "base", kind="target")
    assert led["target"] is first  # nothing changed: the same tensor, the same history row
    led["base"][0] = 1  # the source edited in place
    led.mirror("target", "base", kind="target")
    assert led["target"] is not first and float(led["target"][0]) == 1.0
    second = led["target"]
    second[1] = 5  # the copy edited in place
    led.mirror("target", "base", kind="target")
    assert led["target"] is not second and float(led["target"][1]) == 0.0
    third = led["target"]
    led.mirror("target", "base", kind="value")  # another kind
    assert led["target"] is not third and led.column("target").kind == "value"
    fourth = led["target"]
    led.column("base").producer = "lp"
    led.mirror("target", "base", kind="value")  # another producer
    assert led["target"] is not fourth and led.producer("target") == "lp"
    fifth = led["target"]
    led.add("base", torch.ones(3), producer="lp", kind="target")  # the source replaced
    led.mirror("target", "base", kind="value")
    assert led["target"] is not fifth and torch.equal(led["target"], torch.ones(3))


def test_lookups_name_what_is_there():
    led = Ledger(2)
    for name in ("b", "a", "c"):
        led.add(name, torch.zeros(2), producer=name)
    assert list(led) == ["b", "a", "c"] and [n for n, _ in led.items()] == ["b", "a", "c"]
    assert "a" in led and "z" not in led
    with pytest.raises(KeyError) as info:
        led["z"]
    assert info.value.args[0] == "no ledger column 'z'; columns: a, b, c"
    for name in ("select/pm/q", "select/pm/p", "select/pmx"):
        led.add(name, torch.zeros(2), producer="pm")
    with pytest.raises(KeyError) as info:  # a hook that returned one mask per model
        led["select/pm"]
    assert info.value.args[0] == (
        "no ledger column 'select/pm', only the columns under it (select/pm/p, select/pm/q: "
        "one per model, where a hook returned a value per model); columns: a, b, c, "
        "select/pm/p, select/pm/q, select/pmx")


def test_the_state_restores_every_column_and_nothing_else():
    led = Ledger(3)
    led.add("t", torch.rand(3, 2), producer="lp", kind="target")
    led.add("m", torch.tensor([True, False, True]), producer="sel", kind="mask", snapshot=False)
    state = led.state_dict()
    assert state["m"] == {"data": state["m"]["data"], "producer": "sel", "kind": "mask",
                          "snapshot": False}
    assert all(s["data"].device.type == "cpu" for s in state.values())
    other = Ledger(3)
    other.add("stale", torch.zeros(3), producer="x")
    other.load_state_dict(state)
    assert list(other) == ["t", "m"]
    for name in ("t", "m"):
        a, b = led.column(name), other.column(name)
        assert torch.equal(a.data, b.data) and (a.producer, a.kind, a.snapshot) == (
            b.producer, b.kind, b.snapshot)
    assert other.column("m").snapshot is False and other.column("t").snapshot is True


def test_every_column_lives_on_the_ledgers_device():
    """On the training device, so that batch reads stay there (the meta device stands in for
    a GPU: tensors that are not on the CPU)."""
    led = Ledger(3, device="meta")
    assert led.device == torch.device("meta")
    on = [led.add("a", torch.zeros(3), producer="p"),
          led.ensure("b", torch.zeros(1, 2), producer="p")]
    led.write("c", torch.tensor([0, 2]), torch.ones(2), producer="p")
    on += [led["c"], led.read("a", torch.tensor([1]))]
    other = Ledger(3, device="meta")
    other.load_state_dict({"d": {"data": torch.zeros(3), "producer": "p", "kind": "value",
                                 "snapshot": True}})
    on.append(other["d"])
    assert [t.device.type for t in on] == ["meta"] * 5


@pytest.mark.parametrize(("data", "message"), [
    (torch.zeros(4, dtype=torch.complex64), "ledger column 'c' holds complex numbers "
                                            "(torch.complex64); the history keeps real ones"),
    (torch.zeros(4, 0), "ledger column 'c' has empty rows (of shape (0,)); a row holds at "
                        "least one value"),
    (torch.zeros(4, 3, 0), "ledger column 'c' has empty rows (of shape (3, 0)); a row holds"),
    (torch.tensor(1.0), "ledger column 'c' needs 4 rows, got a single number"),
])
def test_a_column_the_history_cannot_keep_is_refused_when_it_is_made(data, message):
    """An empty row failed in h5py at the epoch's end ('chunk dimensions must be positive');
    a complex column lost its imaginary part with a warning from torch; a 0-d tensor was an
    IndexError."""
    ledger = Ledger(4)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        ledger.add("c", data, producer="p")
    if data.dim():
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            ledger.ensure("c", data[:2], producer="p")
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            ledger.write("c", torch.tensor([0, 1]), data[:2], producer="p")
    assert "c" not in ledger
    ledger.write("c", torch.tensor([1]), torch.tensor(2.0), producer="p")  # a scalar per row
    assert ledger["c"].tolist() == [0, 2, 0, 0]
