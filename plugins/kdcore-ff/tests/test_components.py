"""Instance filtering, label correction and warm-up: their rules on fixed inputs, and inside
runs the ledger rows they write are the rows of the samples they judged (shuffled batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdcore
from kdcore.losses import one_hot, soft_cross_entropy
from kdcore_ff import STATUS_OPEN, filter_quality
from kdcore_ff.components import correct_labels, filter_mask, suspicion

K = 8  # kept classes of the tests' ncifar digits; class 8 is the open-set sentinel

# -- the rules ----------------------------------------------------------------------------------


def test_per_class_rate_drops_the_largest_losses_of_each_class():
    loss = torch.tensor([0.1, 0.9, 0.5, 0.3, 2.0, 0.2, 0.4, 0.8, 0.6, 0.7])
    cls = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])
    keep = filter_mask(loss, cls, criterion="loss", rule="rate", rate=0.4, threshold=0,
                       per_class=True)
    # class 0: round(0.4 * 5) = 2 dropped (2.0, 0.9); class 1: round(1.6) = 2 (0.8, 0.6);
    # class 2: round(0.4) = 0
    assert keep.tolist() == [True, False, True, True, False, True, True, False, False, True]
    glob = filter_mask(loss, cls, criterion="loss", rule="rate", rate=0.4, threshold=0,
                       per_class=False)
    assert (~glob).nonzero().squeeze(1).tolist() == [1, 4, 7, 9]  # the 4 largest overall


def test_confidence_rule_and_ties():
    conf = torch.tensor([0.9, 0.2, 0.2, 0.6])
    cls = torch.zeros(4, dtype=torch.long)
    keep = filter_mask(conf, cls, criterion="confidence", rule="rate", rate=0.25, threshold=0,
                       per_class=True)
    assert keep.tolist() == [True, False, True, True]  # the tie goes to the lower index
    thr = filter_mask(conf, cls, criterion="confidence", rule="threshold", rate=0,
                      threshold=0.5, per_class=True)
    assert thr.tolist() == [True, False, False, True]
    loss_thr = filter_mask(torch.tensor([0.1, 1.0]), cls[:2], criterion="loss",
                           rule="threshold", rate=0, threshold=0.5, per_class=False)
    assert loss_thr.tolist() == [True, False]


def test_suspicion_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    targets = one_hot(torch.tensor([1, 2]), 3)
    torch.testing.assert_close(suspicion(logits, targets, "loss"),
                               F.cross_entropy(logits, torch.tensor([1, 2]), reduction="none"))
    torch.testing.assert_close(suspicion(logits, targets, "confidence"),
                               F.softmax(logits, 1)[[0, 1], [1, 2]])


def test_correction_ignores_the_open_set_logit_and_needs_confidence():
    logits = torch.tensor([[9.0, 0.0, 0.0, 50.0],   # confident class 0 (the sentinel ignored)
                           [0.0, 0.1, 0.0, 0.0],    # disagrees, but unsure
                           [0.0, 8.0, 0.0, 0.0]])   # agrees with its label
    change, pred, probs = correct_labels(logits, torch.tensor([2, 0, 1]), num_labels=3,
                                         threshold=0.9)
    assert change.tolist() == [True, False, False]
    assert pred.tolist() == [0, 1, 1]
    assert probs.shape == (3, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_filter_quality_counts_dropped_samples():
    kept = torch.tensor([True, False, False, False, True, True])
    status = torch.tensor([0, 2, 2, 1, 2, 0])
    q = filter_quality(kept, status)
    assert q["open_precision"] == pytest.approx(2 / 3)
    assert q["open_recall"] == pytest.approx(2 / 3)
    assert q["closed_recall"] == 1.0
    assert q["noisy_precision"] == 1.0


# -- alignment inside runs ----------------------------------------------------------------------

FILTER = '{ criterion = "loss", labels = "targets", rate = 0.3, per_class = true }'
CORRECT = '{ threshold = 0.5, base = "noisy" }'


def expected_pass(run: kdcore.Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrected targets and the filter mask, recomputed from the student alone: its
    eval-mode outputs on the training inputs in index order, then the documented rules."""
    model = run.models["student"]
    was = model.training
    model.eval()
    with torch.no_grad():
        x = run.data.inputs(run.data.train, torch.arange(len(run.data.train)))
        logits = model(x)[0]
    model.train(was)
    noisy = run.ledger["noisy_label"]
    probs = F.softmax(logits[:, :K], dim=1)
    conf, pred = probs.max(1)
    label = torch.where((pred != noisy) & (conf >= 0.5), pred, noisy)
    target = one_hot(label, K + 1)
    loss = soft_cross_entropy(logits, target)
    keep = torch.ones(len(label), dtype=torch.bool)
    for c in range(K):
        rows = (label == c).nonzero().squeeze(1)
        drop = round(0.3 * len(rows))
        keep[rows[torch.sort(loss[rows], descending=True, stable=True).indices[:drop]]] = False
    return target, keep


class Checker:
    """Recomputes at each epoch start; checks every batch's ledger rows and its loss."""

    def __init__(self):
        self.expected: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.batches = 0
        self.shuffled = 0
        self.losses_ok = True

    @kdcore.hookimpl
    def kdcore_epoch_start(self, run, epoch):
        if run.stage.name != "ff":
            return
        target, keep = expected_pass(run)
        self.expected.append((target, keep))
        assert torch.equal(run.ledger["base_target"], target)
        assert torch.equal(run.ledger["select/instance_filter"], keep)
        assert keep.any() and not keep.all()  # a real mix: a misaligned row would show

    @kdcore.hookimpl
    def kdcore_batch_end(self, run, batch, losses):
        if run.stage.name != "ff":
            return
        target, keep = self.expected[-1]
        index = batch.index
        assert torch.equal(batch.targets, target[index])
        assert torch.equal(run.ledger["target"][index], target[index])
        assert torch.equal(run.ledger["select/instance_filter"][index], keep[index])
        if len(index) >= 8:  # a tiny last batch may come out sorted by chance
            self.batches += 1
            self.shuffled += int(not torch.equal(index, index.sort().values))
        if run.lr("student") == 0.0:  # a frozen model: the batch's loss can be recomputed
            with torch.no_grad():
                ce = soft_cross_entropy(run.models["student"](batch.x)[0], target[index])
            m = keep[index].double()
            want = float((ce.double() * m).sum() / m.sum().clamp_min(1))
            self.losses_ok &= abs(float(losses["student"].detach()) - want) < 1e-5


@pytest.mark.parametrize("lr", [0.0, 0.1])
def test_filter_and_correction_rows_follow_the_sample_index(ff, lr):
    checker = Checker()
    warm = ff.stage("warm", 2, ff.comp("ce"))
    main = ff.stage("ff", 2, ff.comp("label_correction", CORRECT),
                    ff.comp("instance_filter", FILTER), ff.comp("ce"))
    # lr 0 (a frozen model) keeps the warm-up from moving too: raise it there
    run_dir = ff.run(warm + main, lr=lr, observers=[checker],
                     overrides=("stages.warm.epochs=0",) if lr == 0 else ())
    assert checker.batches > 0 and checker.shuffled == checker.batches
    assert checker.losses_ok
    with kdcore.History(run_dir) as h:
        rows = [i for i, (s, _) in enumerate(h.epochs()) if s == "ff"]
        status = h.data("ff/status")
        for row, (target, keep) in zip(rows, checker.expected[-2:]):
            np.testing.assert_array_equal(h.column("select/instance_filter", row),
                                          keep.numpy())
            np.testing.assert_array_equal(h.column("target", row).argmax(1),
                                          target.argmax(1).numpy())
            np.testing.assert_array_equal(h.column("lc/label_correction/label", row),
                                          target.argmax(1).numpy())
            # open-noise filtering quality, as the history reports it
            dropped = ~keep.numpy()
            is_open = status == STATUS_OPEN
            assert h.metric("select/instance_filter/open_precision")[row] == pytest.approx(
                (dropped & is_open).sum() / dropped.sum())
            assert h.metric("select/instance_filter/open_recall")[row] == pytest.approx(
                (dropped & is_open).sum() / is_open.sum())
            clean = h.data("clean_label")
            moved = target.argmax(1).numpy() != h.data("noisy_label")
            if moved.any():
                assert h.metric("lc/label_correction/precision")[row] == pytest.approx(
                    (target.argmax(1).numpy()[moved] == clean[moved]).mean())
        assert h.producers("target")[rows[0]] == "label_correction"
        if lr == 0:  # nothing moved: every epoch's columns are the same
            np.testing.assert_array_equal(h.column("select/instance_filter", rows[0]),
                                          h.column("select/instance_filter", rows[1]))


def test_correction_once_at_stage_start_and_filter_start_epoch(ff):
    stages = ff.stage("warm", 2, ff.comp("ce")) + ff.stage(
        "ff", 3, ff.comp("label_correction", '{ when = "stage_start", threshold = 0.5 }'),
        ff.comp("instance_filter", '{ start_epoch = 1, rate = 0.2 }'), ff.comp("ce"))
    with kdcore.History(ff.run(stages)) as h:
        rows = [i for i, (s, _) in enumerate(h.epochs()) if s == "ff"]
        relabelled = h.metric("lc/label_correction/relabelled")[rows]
        assert relabelled[0] > 0 and np.isnan(relabelled[1:]).all()
        targets = [h.column("target", r).argmax(1) for r in rows]
        assert all((t == targets[0]).all() for t in targets)  # one correction for the stage
        fraction = h.metric("select/instance_filter/fraction")[rows]
        assert np.isnan(fraction[0]) and fraction[1:] == pytest.approx([0.8, 0.8], abs=0.01)
        assert np.isnan(h.metric("ff/instance_filter/rate")[rows[0]])


def test_oracle_rate_drops_the_realised_noise_share(ff):
    stages = ff.stage("s", 1, ff.comp("instance_filter", "{ oracle_rate = true }"),
                      ff.comp("ce"))
    with kdcore.History(ff.run(stages)) as h:
        realised = 1 - h.data("clean_mask").mean()
        assert h.metric("ff/instance_filter/rate")[0] == pytest.approx(realised)
        mask = h.column("select/instance_filter", 0)
        target = h.column("target", 0).argmax(1)
        expected = sum(round(realised * (target == c).sum()) for c in range(K))
        assert (~mask).sum() == expected


# -- warm-up ------------------------------------------------------------------------------------


class ParamProbe:
    def __init__(self):
        self.snapshots: list[dict[str, torch.Tensor]] = []

    @kdcore.hookimpl
    def kdcore_run_start(self, run):
        self.snapshots.append(self._copy(run))

    @kdcore.hookimpl
    def kdcore_epoch_end(self, run, epoch, metrics):
        self.snapshots.append(self._copy(run))

    @staticmethod
    def _copy(run):
        return {k: v.detach().clone() for k, v in run.models["student"].state_dict().items()}


def test_warmup_classifier_only_then_full_then_hands_over(ff):
    probe = ParamProbe()
    stages = ff.stage("warmup", 3, ff.comp(
        "ff_warmup", '{ epochs = 2, classifier_only_epochs = 1 }'), ff.comp("ce", weight="0.5"))
    with kdcore.History(ff.run(stages, observers=[probe])) as h:
        np.testing.assert_array_equal(h.metric("ff/ff_warmup/classifier_only"), [1, 0, 0])
        np.testing.assert_array_equal(h.metric("ff/ff_warmup/active"), [1, 1, 0])
        term = h.metric("train/student/ff_warmup")
        assert (term[:2] > 0).all() and np.isnan(term[2])  # handed over after 2 epochs
        assert (h.metric("train/student/ce") > 0).all()
    start, first, second = probe.snapshots[:3]
    trunk = [k for k in start if not k.startswith("classifier.")]
    assert trunk and all(torch.equal(start[k], first[k]) for k in trunk)
    assert not torch.equal(start["classifier.weight"], first["classifier.weight"])
    assert any(not torch.equal(first[k], second[k]) for k in trunk)


def test_warmup_on_noisy_labels_ignores_refined_targets(ff):
    class Peek:
        checked = 0

        @kdcore.hookimpl
        def kdcore_batch_end(self, run, batch, losses):
            with torch.no_grad():  # lr 0: the model after the step is the model of the step
                logits = run.models["student"](batch.x)[0]
            on_noisy = F.cross_entropy(logits, batch.noisy_label)
            on_targets = soft_cross_entropy(logits, batch.targets).mean()
            loss = float(losses["student"].detach())
            assert loss == pytest.approx(float(on_noisy), rel=1e-5)
            assert bool((batch.targets.argmax(1) != batch.noisy_label).any())
            assert abs(loss - float(on_targets)) > 1e-3
            Peek.checked += 1

    stages = ff.stage("w", 1, ff.comp("label_correction", "{ threshold = 0.0 }"),
                      ff.comp("ff_warmup", '{ labels = "noisy" }'))
    ff.run(stages, lr=0.0, observers=[Peek()])
    assert Peek.checked > 0


@pytest.mark.parametrize(("use", "params", "message"), [
    ("instance_filter", "{ rate = 1.5 }", r"params\.rate.*\[0, 1\)"),
    ("instance_filter", '{ criterion = "margin" }', r"params\.criterion"),
    ("label_correction", "{ threshold = 2.0 }", r"params\.threshold.*\[0, 1\]"),
    ("label_correction", '{ model = "teacher" }', r"no model role 'teacher'"),
    ("ff_warmup", "{ epochs = -1 }", r"params\.epochs"),
])
def test_bad_parameters_are_clear_errors(ff, use, params, message):
    with pytest.raises(kdcore.RecipeError, match=message):
        ff.run(ff.stage("s", 1, ff.comp(use, params), ff.comp("ce")))
