"""Instance filtering, label correction and warm-up: their rules on fixed inputs, and inside
runs the ledger rows they write are the rows of the samples they judged (shuffled batches)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loguru import logger

import kdcore
from kdcore import RecipeError
from kdcore.losses import one_hot, soft_cross_entropy
from kdcore.testing import ColumnReaderPlugin, TinyNet, harness
from kdcore_ff import STATUS_OPEN, InstanceFilter, LabelCorrection, Warmup, filter_quality
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


def expected_pass(ctx: kdcore.RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrected targets and the filter mask, recomputed from the student alone: its
    eval-mode outputs on the training inputs in index order, then the documented rules."""
    model = ctx.models["student"]
    was = model.training
    model.eval()
    with torch.no_grad():
        x = ctx.data.inputs(ctx.data.train, torch.arange(len(ctx.data.train)))
        logits = model(x)[0]
    model.train(was)
    noisy = ctx.ledger["noisy_label"]
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
    def kdcore_epoch_start(self, ctx, epoch):
        if ctx.stage.name != "ff":
            return
        target, keep = expected_pass(ctx)
        self.expected.append((target, keep))
        assert torch.equal(ctx.ledger["base_target"], target)
        assert torch.equal(ctx.ledger["select/instance_filter"], keep)
        assert keep.any() and not keep.all()  # a real mix: a misaligned row would show

    @kdcore.hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        if ctx.stage.name != "ff":
            return
        target, keep = self.expected[-1]
        index = batch.index
        assert torch.equal(batch.targets, target[index])
        assert torch.equal(ctx.ledger["target"][index], target[index])
        assert torch.equal(ctx.ledger["select/instance_filter"][index], keep[index])
        if len(index) >= 8:  # a tiny last batch may come out sorted by chance
            self.batches += 1
            self.shuffled += int(not torch.equal(index, index.sort().values))
        if ctx.lr("student") == 0.0:  # a frozen model: the batch's loss can be recomputed
            with torch.no_grad():
                ce = soft_cross_entropy(ctx.models["student"](batch.x)[0], target[index])
            m = keep[index].double()
            want = float((ce.double() * m).sum() / m.sum().clamp_min(1))
            self.losses_ok &= abs(float(losses["student"].detach()) - want) < 1e-5


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    def kdcore_run_start(self, ctx):
        self.snapshots.append(self._copy(ctx))

    @kdcore.hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        self.snapshots.append(self._copy(ctx))

    @staticmethod
    def _copy(ctx):
        return {k: v.detach().clone() for k, v in ctx.models["student"].state_dict().items()}


@pytest.mark.slow
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


@pytest.mark.slow
def test_warmup_on_noisy_labels_ignores_refined_targets(ff):
    class Peek:
        checked = 0

        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            with torch.no_grad():  # lr 0: the model after the step is the model of the step
                logits = ctx.models["student"](batch.x)[0]
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
    ("ff_warmup", "{ epochs = -1 }", r"params\.epochs"),
])
def test_bad_parameters_are_clear_errors(ff, use, params, message):
    with pytest.raises(RecipeError, match=message):
        ff.plan(ff.stage("s", 1, ff.comp(use, params), ff.comp("ce")))


# -- the plan's wiring check ---------------------------------------------------------------------


def test_plan_checks_model_roles_and_declared_columns(ff):
    filt = ff.comp("instance_filter", '{ model = "student" }')
    corr = ff.comp("label_correction")
    plan = ff.plan(ff.stage("s", 1, corr, filt, ff.comp("ce")))
    lc, inst = plan.stages[0].components[:2]
    assert inst.roles() == ("student",) and lc.roles() == ()
    assert set(inst.written_columns()) == {"ff/instance_filter/score", "select/instance_filter",
                                           "select/instance_filter/student"}
    assert set(lc.written_columns()) == {"base_target", "lc/label_correction/label",
                                         "lc/label_correction/confidence", "target"}
    # declared kinds, held against a reader (a label propagation's kept mask read base_target)
    assert inst.written_column_kinds() == {"ff/instance_filter/score": "value",
                                           "select/instance_filter": "mask",
                                           "select/instance_filter/student": "mask"}
    assert lc.written_column_kinds() == {"base_target": "target", "target": "target",
                                         "lc/label_correction/label": "label",
                                         "lc/label_correction/confidence": "value"}
    # a model role that [models] does not define, named by a Role parameter
    for use in ("instance_filter", "label_correction"):
        with pytest.raises(RecipeError, match="model role 'teacher'"):
            ff.plan(ff.stage("s", 1, ff.comp(use, '{ model = "teacher" }'), ff.comp("ce")))
    # serving two models without naming the one whose predictions count
    two = ff.comp("instance_filter", models='["student", "peer"]')
    peer = ('\n[models.peer]\narch = "mlp"\nparams = { hidden = [8] }\n'
            'optimizer = { lr = 0.1 }\n')
    with pytest.raises(RecipeError, match="set params.model"):
        ff.plan(peer + ff.stage("s", 1, two, ff.comp("ce")))
    # a reader of the correction's column is wired after it, refused before it
    reader = ff.comp("column_reader", '{ column = "lc/label_correction/label" }')
    ff.plan(ff.stage("s", 1, corr, reader, ff.comp("ce")), plugins=[ColumnReaderPlugin()])
    with pytest.raises(RecipeError, match="'lc/label_correction/label'"):
        ff.plan(ff.stage("s", 1, reader, corr, ff.comp("ce")), plugins=[ColumnReaderPlugin()])
    score = ff.comp("column_reader", '{ column = "ff/instance_filter/score" }')
    with pytest.raises(RecipeError, match="'ff/instance_filter/score'"):
        ff.plan(ff.stage("s", 1, score, filt, ff.comp("ce")), plugins=[ColumnReaderPlugin()])


@pytest.mark.parametrize("start_epoch", [0, 2])
def test_a_schedule_that_starts_later_serves_its_own_stage_only_from_then(ff, start_epoch):
    """With a later ``start_epoch`` the correction's and the filter's columns are not there in
    their stage's first epoch: a reader of the same stage is refused (it stopped the run at
    the first batch that read them), one of a later stage is not."""
    corr = ff.comp("label_correction", f"{{ start_epoch = {start_epoch} }}")
    filt = ff.comp("instance_filter", f"{{ start_epoch = {start_epoch} }}")
    lc, inst = ff.plan(ff.stage("s", 3, corr, filt, ff.comp("ce"))).stages[0].components[:2]
    lc_columns = ("lc/label_correction/label", "lc/label_correction/confidence")
    filter_columns = ("select/instance_filter", "ff/instance_filter/score")
    if start_epoch:
        assert (lc.writes_at_start(), inst.writes_at_start()) == ({}, {})
        assert (lc.late_writes(), inst.late_writes()) == (dict.fromkeys(lc_columns, 2),
                                                          dict.fromkeys(filter_columns, 2))
    else:
        assert lc.writes_at_start() == dict.fromkeys(("base_target", *lc_columns),
                                                     "on_epoch_start")
        assert inst.writes_at_start() == dict.fromkeys(filter_columns, "on_epoch_start")
        assert (lc.late_writes(), inst.late_writes()) == ({}, {})
    for column in (*lc_columns, "ff/instance_filter/score"):
        reader = ff.comp("column_reader", f'{{ column = "{column}" }}')
        same = ff.stage("s", 3, corr, filt, reader, ff.comp("ce"))
        if start_epoch:
            with pytest.raises(RecipeError, match=re.escape(
                    f"reads ledger column '{column}', which '{column.split('/')[1]}' ")
                    + r".* writes only from epoch 2 of stage 's' on \(counted from 0\)"):
                ff.plan(same, plugins=[ColumnReaderPlugin()])
        else:
            ff.plan(same, plugins=[ColumnReaderPlugin()])
        ff.plan(ff.stage("s", 3, corr, filt, ff.comp("ce")) + ff.stage("t", 1, reader,
                                                                       ff.comp("ce")),
                plugins=[ColumnReaderPlugin()])


def test_a_filter_whose_start_epoch_is_past_its_stage_is_a_warning_naming_its_columns(ff):
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m).rstrip()), level="WARNING")
    try:
        ff.plan(ff.stage("s", 3, ff.comp("instance_filter", "{ start_epoch = 3 }"),
                         ff.comp("ce")))
    finally:
        logger.remove(sink)
    assert [m for m in messages if "instance_filter" in m][0].endswith(
        "component 'instance_filter' (instance_filter) would write ff/instance_filter/score, "
        "select/instance_filter from epoch 3 of stage 's' on (counted from 0), and that stage "
        "has 3 epochs: its schedule never starts there")


def test_a_correction_at_the_stages_start_writes_there_whatever_its_start_epoch(ff):
    corr = ff.comp("label_correction", '{ when = "stage_start", start_epoch = 2 }')
    lc = ff.plan(ff.stage("s", 3, corr, ff.comp("ce"))).stages[0].components[0]
    assert lc.writes_at_start() == dict.fromkeys(
        ("base_target", "lc/label_correction/label", "lc/label_correction/confidence"),
        "on_stage_start")
    assert lc.late_writes() == {}


# -- one component alone (kdcore.testing.harness) ------------------------------------------------


def Net(d_in: int = 6, classes: int = 4) -> TinyNet:  # noqa: N802 (a model class in all but name)
    """A small MLP with dropout (what a frozen trunk must keep in eval mode)."""
    return TinyNet(d_in, classes, 8, dropout=0.5)


def component_harness(cls, params=None, n: int = 40):
    torch.manual_seed(0)
    x, y = torch.randn(n, 6), torch.randint(0, 4, (n,))
    clean = torch.where(torch.arange(n) % 4 == 0, (y + 1) % 4, y)
    return harness(cls, params, x=x, noisy_label=y, clean_label=clean,
                   models={"student": Net()}, train=("student",))


def _eval_logits(h):
    model = h.ctx.models["student"]
    model.eval()
    with torch.no_grad():
        return model(h.run.data.train.x)[0]


def test_instance_filter_writes_its_mask_and_scores_and_selects_the_batch_rows():
    h = component_harness(InstanceFilter, {"rate": 0.25, "labels": "noisy"}).setup()
    h.epoch_start(0)
    logits = _eval_logits(h)
    noisy = h.run.ledger["noisy_label"]
    score = F.cross_entropy(logits, noisy, reduction="none")
    keep = filter_mask(score, noisy, criterion="loss", rule="rate", rate=0.25, threshold=0,
                       per_class=True)
    name = "instancefilter"
    assert torch.equal(h.run.ledger[f"select/{name}"], keep)
    torch.testing.assert_close(h.run.ledger[f"ff/{name}/score"], score)
    assert h.run.ledger.producer(f"ff/{name}/score") == name
    assert h.metrics[f"ff/{name}/rate"] == 0.25
    rows = torch.tensor([3, 17, 0, 29])
    assert torch.equal(h.component.select(h.ctx, h.batch(rows)), keep[rows])
    oracle = component_harness(InstanceFilter, {"oracle_rate": True})
    oracle.run.ledger.add("clean_mask", torch.arange(40) < 30, producer="data", kind="mask")
    assert oracle.setup().component.current_rate(oracle.ctx) == pytest.approx(0.25)


def test_instance_filter_abstains_before_its_start_epoch():
    h = component_harness(InstanceFilter, {"start_epoch": 1}).setup()
    h.epoch_start(0)
    assert "select/instancefilter" not in h.run.ledger
    assert h.component.select(h.ctx, h.batch([0, 1])) is None
    h.epoch_start(1)
    assert h.component.select(h.ctx, h.batch([0, 1])) is not None


def test_label_correction_writes_the_base_target_tagged_with_its_name():
    h = component_harness(LabelCorrection, {"threshold": 0.0})
    h.setup()
    h.epoch_start(0)
    led = h.run.ledger
    pred = _eval_logits(h).argmax(1)
    assert torch.equal(led["base_target"].argmax(1), pred)
    assert led.producer("base_target") == "labelcorrection"
    assert torch.equal(led["lc/labelcorrection/label"], pred)
    moved = pred != led["noisy_label"]
    assert h.metrics["lc/labelcorrection/relabelled"] == pytest.approx(
        float(moved.double().mean()))
    # a batch starts from the corrected base_target; refine itself changes nothing
    batch = h.batch([2, 5])
    assert torch.equal(h.component.refine(h.ctx, batch, batch.targets), one_hot(pred[[2, 5]], 4))


def test_warmup_freezes_the_trunk_then_releases_it_at_the_stage_end():
    h = component_harness(Warmup, {"classifier_only_epochs": 2}).setup()
    model = h.ctx.models["student"]
    h.epoch_start(0)
    assert h.metrics["ff/warmup/classifier_only"] == 1.0
    assert not model.trunk[0].weight.requires_grad and model.classifier.weight.requires_grad
    model.train()
    model(torch.randn(3, 6))
    assert not model.trunk[2].training and model.training  # the pre-hook: dropout fixed
    h.component.on_stage_end(h.ctx)  # the stage ended while frozen
    model.train()
    model(torch.randn(3, 6))
    assert model.trunk[2].training  # no hook left to touch later stages
    assert not h.component.handles


def test_warmup_hands_over_after_its_epochs():
    h = component_harness(Warmup, {"epochs": 1}).setup()
    h.epoch_start(0)
    batch = h.batch([0, 1, 2])
    loss = h.component.transfer(h.ctx, batch)["student"]
    torch.testing.assert_close(loss, F.cross_entropy(batch.out("student").logits,
                                                     batch.noisy_label, reduction="none"))
    h.epoch_start(1)
    assert h.component.transfer(h.ctx, h.batch([0, 1, 2])) is None
