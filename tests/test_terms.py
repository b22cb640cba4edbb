"""A transfer term given as a row-wise function (``PerSampleLoss``): its mean, its record, and
the cross-entropy term the baseline returns, checked against a NumPy transcription and
against ``F.cross_entropy`` bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore.component import Batch
from kdcore.context import ModelOutput
from kdcore.errors import KdcoreError
from kdcore.ledger import Ledger
from kdcore.losses import cross_entropy_term
from kdcore.records import EpochRecords
from kdcore.step import combine
from kdcore.terms import PerSampleLoss, evaluate_rows
from tests.test_step import Fn

NAN = float("nan")


def dot_rows(a, b):
    return (a * b).sum(1)


def scaled_rows(a, b):
    return 2.0 * (a * b).sum(1)


def numpy_ce(logits, labels=None, targets=None):
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    if targets is None:
        return -log_p[np.arange(len(z)), labels]
    return -(targets * log_p).sum(1)


def test_values_and_mean_follow_rows_and_the_fused_mean_is_used_when_given():
    a, b = torch.arange(6.0).view(3, 2), torch.ones(3, 2)
    plain = PerSampleLoss(dot_rows, a, b)
    assert plain.values().tolist() == [1.0, 5.0, 9.0]
    assert plain.mean().item() == 5.0
    calls = []

    def fused(x, y):
        calls.append(1)
        return torch.tensor(42.0)

    assert PerSampleLoss(dot_rows, a, b, mean=fused).mean().item() == 42.0 and calls == [1]
    with pytest.raises(ValueError) as err:
        PerSampleLoss(dot_rows)
    assert str(err.value) == "a PerSampleLoss needs at least one input tensor"


def test_evaluate_rows_keeps_order_and_groups_only_what_joins():
    rng = np.random.default_rng(0)
    parts, expected = [], []
    for i in range(7):
        a, b = rng.normal(size=(i + 1, 3)), rng.normal(size=(i + 1, 3))
        if i == 3:  # plain values between losses
            parts.append(torch.tensor(a[:, 0]))
            expected.append(a[:, 0])
            continue
        fn, k = (scaled_rows, 2.0) if i == 5 else (dot_rows, 1.0)
        dtype = torch.float64 if i == 6 else torch.float32
        parts.append(PerSampleLoss(fn, torch.tensor(a, dtype=dtype), torch.tensor(b, dtype=dtype)))
        expected.append(k * (a * b).sum(1))
    got = evaluate_rows(parts)
    np.testing.assert_allclose(got.double().numpy(), np.concatenate(expected), rtol=1e-6)
    assert parts[0].joins(parts[1]) and not parts[4].joins(parts[5])  # other function
    assert not parts[5].joins(parts[6])  # other dtype
    assert not parts[4].joins(PerSampleLoss(dot_rows, torch.ones(1, 3)))  # other arity


def test_consecutive_losses_that_join_cost_one_call_and_no_parts_give_no_rows():
    calls = []

    def counted(a):
        calls.append(len(a))
        return a.sum(1)

    parts = [PerSampleLoss(counted, torch.ones(2, 3)) for _ in range(4)]
    assert evaluate_rows(parts[:3] + [torch.zeros(1)] + parts[3:]).tolist() == [3.0] * 6 + [
        0.0] + [3.0] * 2
    assert calls == [6, 2]  # one call for the three joined, one after the plain values
    assert evaluate_rows([]).shape == (0,)


def test_inputs_that_do_not_concatenate_are_evaluated_apart():
    parts = [PerSampleLoss(dot_rows, torch.ones(2, 3), torch.ones(2, 3)),
             PerSampleLoss(dot_rows, torch.ones(1, 4), torch.full((1, 4), 2.0))]
    assert evaluate_rows(parts).tolist() == [3.0, 3.0, 8.0]


def test_a_kept_loss_holds_no_graph_and_its_record_has_none():
    z = torch.randn(4, 3, requires_grad=True)
    labels = torch.ones(4, 3)
    loss = PerSampleLoss(dot_rows, z * 2, labels)
    kept = loss.kept()
    assert kept.inputs[1] is labels  # nothing to detach: the same tensor
    assert not kept.inputs[0].requires_grad and kept.inputs[0].grad_fn is None
    assert loss.mean().requires_grad  # the term itself still trains
    values = evaluate_rows([kept, kept])
    assert not values.requires_grad and values.shape == (8,)


def test_an_input_changed_after_the_hook_returned_or_a_wrong_shape_is_refused():
    labels = torch.ones(3, 2)
    kept = PerSampleLoss(dot_rows, torch.ones(3, 2), labels).kept()
    labels[0, 0] = 5.0
    with pytest.raises(ValueError) as err:
        evaluate_rows([kept])
    assert str(err.value) == ("an input of a PerSampleLoss was changed in place after the "
                              "transfer hook returned it; return a copy")
    with pytest.raises(ValueError, match=r"shape \(3, 2\) for 3 rows"):
        evaluate_rows([PerSampleLoss(lambda a: a, torch.ones(3, 2))])


@pytest.mark.parametrize("soft", [False, True])
def test_cross_entropy_term_equals_f_cross_entropy_bit_for_bit_and_numpy(soft):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(37, 5, generator=g) * 3).requires_grad_()
    y = torch.randint(0, 5, (37,), generator=g)
    q = torch.softmax(torch.randn(37, 5, generator=g), 1)
    term = cross_entropy_term(z, q, None) if soft else cross_entropy_term(z, None, y)
    target = q if soft else y
    reference = F.cross_entropy(z, target, reduction="none")
    assert torch.equal(term.values(), reference)
    assert torch.equal(evaluate_rows([term.kept()]), reference.detach())
    (fused,) = torch.autograd.grad(term.mean(), z)
    (mean,) = torch.autograd.grad(reference.mean(), z)
    assert torch.equal(fused, mean)  # the fused mean trains exactly as the mean of the rows
    expected = numpy_ce(z.detach().numpy(), None if soft else y.numpy(),
                        q.numpy() if soft else None)
    np.testing.assert_allclose(term.values().detach().double().numpy(), expected, rtol=1e-5)
    assert term.mean().item() == pytest.approx(expected.mean(), rel=1e-5)
    with pytest.raises(ValueError) as err:
        cross_entropy_term(z, None, None)
    assert str(err.value) == "cross_entropy_term needs targets or labels"


def test_cross_entropy_terms_mean_is_one_fused_node_and_soft_targets_take_the_logits_dtype():
    z = torch.randn(6, 4, requires_grad=True)
    hard = cross_entropy_term(z, None, torch.tensor([0, 1, 2, 3, 0, 1])).mean()
    assert hard.grad_fn.name() == "NllLossBackward0"  # not a MeanBackward over the rows
    assert hard.grad_fn.next_functions[0][0].name() == "LogSoftmaxBackward0"
    q = torch.softmax(torch.randn(6, 4, dtype=torch.float64), 1)  # float64 targets
    soft = cross_entropy_term(z, q, None)
    assert "Mean" not in soft.mean().grad_fn.name()  # F.cross_entropy's own reduction
    assert soft.values().dtype == torch.float32
    torch.testing.assert_close(soft.values(), F.cross_entropy(z, q.float(), reduction="none"))


def batch_of(logits):
    return Batch(torch.arange(len(logits)), logits, torch.zeros(len(logits), dtype=torch.long),
                 forward=lambda role, x: ModelOutput(x, x), num_classes=logits.shape[1],
                 targets=torch.eye(logits.shape[1])[[0] * len(logits)])


def test_an_unmasked_term_takes_the_fused_mean_and_is_recorded_later():
    means = []

    def fused(a, b):
        means.append(1)
        return (a * b).sum(1).mean()

    x = torch.arange(8.0).view(4, 2)
    ce = Fn("ce", transfer=lambda b: PerSampleLoss(dot_rows, b.x, torch.ones(4, 2), mean=fused))
    r = combine(batch_of(x), refiners=[], selectors=[], weighters=[], transfers=[ce],
                context=lambda c: None)
    assert means == [1] and r.losses["s"].item() == pytest.approx((1 + 5 + 9 + 13) / 4)
    (p,) = r.losses_per_sample
    assert p.column == "loss/ce" and isinstance(p.values, PerSampleLoss)
    assert evaluate_rows([p.values]).tolist() == [1.0, 5.0, 9.0, 13.0]
    assert r.total("s") is r.terms["s"]["ce"]  # one term of weight 1: detached once


def test_a_masked_or_weighted_term_is_reduced_from_its_values():
    means = []
    x = torch.arange(8.0).view(4, 2)
    mask = Fn("keep", select=lambda b: torch.tensor([True, False, True, False]))
    other = Fn("other", terms=("kd",), weigh=lambda b: torch.full((4,), 9.0))  # not on ce
    ce = Fn("ce", weight=0.5, transfer=lambda b: PerSampleLoss(
        dot_rows, b.x, torch.ones(4, 2), mean=lambda a, c: means.append(1)))
    r = combine(batch_of(x), refiners=[], selectors=[mask], weighters=[other], transfers=[ce],
                context=lambda c: None)
    assert means == []  # the mask acts on ce: no fused mean
    alone = combine(batch_of(x), refiners=[], selectors=[mask], weighters=[], transfers=[ce],
                    context=lambda c: None)  # a mask without any weighter
    assert means == [] and alone.terms["s"]["ce"].item() == pytest.approx(5.0)
    assert r.terms["s"]["ce"].item() == pytest.approx((1 + 9) / 2)
    assert r.losses["s"].item() == pytest.approx(0.5 * (1 + 9) / 2)
    assert r.total("s").item() == pytest.approx(2.5) and r.totals["s"] is None
    (p,) = r.losses_per_sample
    assert isinstance(p.values, torch.Tensor) and p.values.tolist() == [1.0, 5.0, 9.0, 13.0]
    # a weight that acts on another term only leaves the fused mean in use
    unmasked = combine(batch_of(x), refiners=[], selectors=[], weighters=[other],
                       transfers=[Fn("ce", transfer=lambda b: PerSampleLoss(
                           dot_rows, b.x, torch.ones(4, 2), mean=lambda a, c: torch.tensor(42.0)))],
                       context=lambda c: None)
    assert unmasked.losses["s"].item() == 42.0  # the fused mean, not the values' 7.0


def test_weights_alone_weigh_a_term_and_two_terms_total_is_their_sum():
    x = torch.arange(8.0).view(4, 2)
    w = Fn("w", weigh=lambda b: torch.tensor([1.0, 0.0, 0.0, 1.0]))
    ce = Fn("ce", transfer=lambda b: PerSampleLoss(dot_rows, b.x, torch.ones(4, 2)))
    kd = Fn("kd", transfer=lambda b: torch.ones(4))
    r = combine(batch_of(x), refiners=[], selectors=[], weighters=[w], transfers=[ce, kd],
                context=lambda c: None)
    assert r.terms["s"]["ce"].item() == pytest.approx((1 + 13) / 4)  # weighted, no mask
    assert r.totals["s"] is None and r.total("s").item() == pytest.approx(3.5 + 0.5)  # w on both
    scalar = combine(batch_of(x), refiners=[], selectors=[], weighters=[],
                     transfers=[Fn("reg", transfer=lambda b: torch.tensor(2.0))],
                     context=lambda c: None)
    assert scalar.losses_per_sample == [] and scalar.total("s").item() == 2.0


def test_epoch_records_settle_in_groups_and_write_every_row_once():
    records, ledger = EpochRecords(group=3), Ledger(10)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    values = torch.arange(10.0) * 1.5
    for k in range(5):
        rows = order[2 * k:2 * k + 2]
        part = (PerSampleLoss(dot_rows, values[rows, None], torch.ones(2, 1)).kept()
                if k != 2 else values[rows])
        records.add("loss/t", "t", rows, part)
        records.add("logits/s", "s", rows, values[rows, None].repeat(1, 2))
    entry = records._columns["loss/t"]
    assert (len(entry.values), entry.settled) == (3, 1)  # three settled into one, two pending
    records.write(ledger)
    assert torch.equal(ledger["loss/t"], values)
    assert torch.equal(ledger["logits/s"], values[:, None].repeat(1, 2))
    assert ledger.producer("loss/t") == "t" and ledger.column("loss/t").kind == "value"
    assert records._columns == {}
    one = EpochRecords(group=1)  # settles every batch: a single part's rows each time
    for k in range(5):
        one.add("loss/t", "t", order[2 * k:2 * k + 2], values[order[2 * k:2 * k + 2]])
    one.write(ledger)
    assert torch.equal(ledger["loss/t"], values)


def test_the_rows_no_batch_recorded_this_epoch_are_nan():
    """A term that abstained on a batch (or a model nothing computed there) left that batch's
    rows as the last epoch had them, or 0 in a new column: the history said those samples had
    a loss of 0. They are NaN; a record that covers every row keeps the column as it is."""
    ledger = Ledger(6)
    full = EpochRecords(group=2)
    full.add("loss/t", "t", torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    full.add("loss/t", "t", torch.tensor([3, 4, 5]), torch.tensor([4.0, 5.0, 6.0]))
    full.write(ledger)
    column = ledger["loss/t"]
    partial = EpochRecords(group=2)
    partial.add("loss/t", "t", torch.tensor([4, 1]), torch.tensor([0.5, 0.25]))
    partial.add("logits/s", "s", torch.tensor([2]), torch.tensor([[1.0, -1.0]]))
    partial.add("label/k", "k", torch.tensor([3]), torch.tensor([7]))  # no NaN in integers
    partial.write(ledger)
    assert ledger["loss/t"] is column  # the same tensor: readers holding it see the epoch
    np.testing.assert_array_equal(ledger["loss/t"].numpy(), [NAN, 0.25, NAN, NAN, 0.5, NAN])
    logits = np.full((6, 2), NAN)
    logits[2] = [1.0, -1.0]
    np.testing.assert_array_equal(ledger["logits/s"].numpy(), logits)
    assert ledger["label/k"].tolist() == [0, 0, 0, 7, 0, 0]


def test_a_bad_record_names_its_component_when_added_written_or_observed():
    bad = PerSampleLoss(lambda a: a, torch.ones(2, 2)).kept()
    message = "component 'mine', column 'loss/mine': PerSampleLoss rows gave shape"
    with pytest.raises(KdcoreError, match=message):
        EpochRecords(group=1).add("loss/mine", "mine", torch.arange(2), bad)
    later = EpochRecords(group=8)
    later.add("loss/mine", "mine", torch.arange(2), bad)
    with pytest.raises(KdcoreError, match=message):
        later.write(Ledger(2))
    with pytest.raises(KdcoreError, match=message):
        EpochRecords().evaluate("loss/mine", "mine", bad)
    good = PerSampleLoss(dot_rows, torch.ones(2, 3), torch.ones(2, 3)).kept()
    assert EpochRecords().evaluate("loss/t", "t", good).tolist() == [3.0, 3.0]
    values = torch.ones(2)
    assert EpochRecords().evaluate("loss/t", "t", values) is values
