"""The F&F components' options one by one, against NumPy transcriptions of their documented rules
(written after a mutation run, ``benchmarks/mutants.py kdcore-ff``, found them untested: the
soft targets and ``base = "previous"`` of ``label_correction``, a teacher as the judging model,
the threshold rule's boundary, the schedule's offset, the ncifar label count and the metrics)."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from kdcore.testing import TinyNet, harness
from kdcore_ff import InstanceFilter, LabelCorrection, Warmup
from kdcore_ff.components import correct_labels, filter_mask
from kdcore_ff.ncifar import OPEN_CLASS_NAME

N, D, C = 40, 6, 4


def _np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _np_logits(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """The model's eval-mode logits, as the components' epoch-start pass computes them."""
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)[0].double().numpy()
    model.train(was)
    return out


def _harness(cls, params=None, *, classes: int = C, teacher: bool = False, open_set=False):
    """``cls`` over 40 random samples, a student (and a teacher) of ``classes`` outputs; with
    ``open_set`` the last class is the ncifar sentinel (no sample is labelled with it)."""
    torch.manual_seed(0)
    x = torch.randn(N, D)
    real = classes - 1 if open_set else classes
    y = torch.randint(0, real, (N,))
    clean = torch.where(torch.arange(N) % 4 == 0, (y + 1) % real, y)
    if open_set:
        clean = torch.where(torch.arange(N) % 5 == 1, torch.tensor(real), clean)
    models = {"student": TinyNet(D, classes, 8)}
    if teacher:
        models["teacher"] = TinyNet(D, classes, 8)
    h = harness(cls, params, x=x, noisy_label=y, clean_label=clean, num_classes=classes,
                models=models, train=("student",))
    if open_set:
        names = (*map(str, range(real)), OPEN_CLASS_NAME)
        h.run.data = attrs.evolve(h.run.data, class_names=names)
    return h


def _np_correct(logits: np.ndarray, start: np.ndarray, k: int, threshold: float, target: str):
    probs = _np_softmax(logits[:, :k])
    pred, conf = probs.argmax(1), probs.max(1)
    change = (pred != start.argmax(1)) & (conf >= threshold)
    rows = np.zeros_like(start)
    if target == "hard":
        rows[np.arange(len(pred)), pred] = 1.0
    else:
        rows[:, :k] = probs
    return np.where(change[:, None], rows, start), change, probs


# -- label_correction ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["hard", "soft"])
@pytest.mark.parametrize("base", ["noisy", "previous"])
def test_correction_targets_and_base(target, base):
    h = _harness(LabelCorrection, {"threshold": 0.3, "target": target, "base": base}).setup()
    led = h.run.ledger
    previous = np.roll(np.eye(C, dtype=np.float32), 1, axis=0)[led["noisy_label"].numpy()]
    led.add("base_target", torch.from_numpy(previous), producer="x", kind="target",
            snapshot=False)
    h.epoch_start(0)
    start = np.eye(C)[led["noisy_label"].numpy()] if base == "noisy" else previous
    want, change, probs = _np_correct(_np_logits(h.ctx.models["student"], h.run.data.train.x),
                                      start, C, 0.3, target)
    assert 0 < change.sum() < N  # some samples moved, some kept their start
    np.testing.assert_allclose(led["base_target"].numpy(), want, atol=1e-6)
    column = led.column("base_target")
    assert (column.kind, column.snapshot, column.producer) == ("target", False,
                                                                "labelcorrection")
    np.testing.assert_array_equal(led["lc/labelcorrection/label"].numpy(), want.argmax(1))
    assert led.column("lc/labelcorrection/label").kind == "label"
    np.testing.assert_allclose(led["lc/labelcorrection/confidence"].numpy(), probs.max(1),
                               atol=1e-6)
    assert h.metrics["lc/labelcorrection/changed"] == pytest.approx(change.mean())


@pytest.mark.parametrize("target", ["hard", "soft"])
def test_correction_on_ncifar_data_ignores_the_sentinel(target):
    h = _harness(LabelCorrection, {"threshold": 0.0, "target": target}, classes=5,
                 open_set=True).setup()
    led = h.run.ledger
    model = h.ctx.models["student"]
    with torch.no_grad():  # the sentinel's logit the largest: it must still never be a label
        model.classifier.bias[4] = 10.0
    logits = _np_logits(model, h.run.data.train.x)
    assert (logits.argmax(1) == 4).all()
    h.epoch_start(0)
    want, change, _ = _np_correct(logits, np.eye(5)[led["noisy_label"].numpy()], 4, 0.0, target)
    assert change.any()
    np.testing.assert_allclose(led["base_target"].numpy(), want, atol=1e-6)
    assert (led["base_target"][:, 4] == 0).all()


def test_correction_uses_the_named_model():
    h = _harness(LabelCorrection, {"threshold": 0.0, "model": "teacher"}, teacher=True).setup()
    h.epoch_start(0)
    logits = _np_logits(h.ctx.models["teacher"], h.run.data.train.x)
    assert (logits.argmax(1) != _np_logits(h.ctx.models["student"],
                                           h.run.data.train.x).argmax(1)).any()
    np.testing.assert_array_equal(h.run.ledger["lc/labelcorrection/label"].numpy(),
                                  logits.argmax(1))


def test_correction_schedule_counts_every_from_the_start_epoch():
    h = _harness(LabelCorrection, {"threshold": 0.0, "start_epoch": 1, "every": 3}).setup()
    done = []
    for epoch in range(8):
        h.run.epoch_metrics = {}
        h.epoch_start(epoch)
        done.append("lc/labelcorrection/changed" in h.metrics)
    assert [e for e, d in enumerate(done) if d] == [1, 4, 7]


def test_correction_threshold_is_inclusive():
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # probabilities exactly 0.5
    change, pred, _ = correct_labels(logits, torch.tensor([1, 0]), num_labels=2, threshold=0.5)
    assert pred.tolist() == [0, 0] and change.tolist() == [True, False]


def test_correction_metrics_by_kind_of_noise():
    h = _harness(LabelCorrection, {"threshold": 0.0}, classes=5, open_set=True).setup()
    led = h.run.ledger
    h.epoch_start(0)
    label = led["lc/labelcorrection/label"].numpy()
    noisy, clean = led["noisy_label"].numpy(), led["clean_label"].numpy()
    status = np.where(clean == 4, 2, np.where(noisy != clean, 1, 0))
    moved = label != noisy
    assert {0, 1, 2} <= set(status.tolist()) and moved.any() and (~moved).any()
    m = h.metrics
    assert m["lc/labelcorrection/closed_fixed"] == pytest.approx(
        (label == clean)[status == 1].mean())
    assert m["lc/labelcorrection/clean_broken"] == pytest.approx(moved[status == 0].mean())
    assert m["lc/labelcorrection/open_relabelled"] == pytest.approx(moved[status == 2].mean())
    # without open-set samples, no open metric
    plain = _harness(LabelCorrection, {"threshold": 0.0}).setup()
    plain.epoch_start(0)
    assert "lc/labelcorrection/open_relabelled" not in plain.metrics


def test_a_component_serving_two_models_must_name_one():
    with pytest.raises(ValueError, match=r"^component 'labelcorrection' serves \['student', "
                       r"'teacher'\]: set params.model to the role whose predictions it uses$"):
        torch.manual_seed(0)
        harness(LabelCorrection, {}, x=torch.randn(4, D), noisy_label=torch.tensor([0, 1, 2, 3]),
                models={"student": TinyNet(D, C), "teacher": TinyNet(D, C)},
                train=("student", "teacher"))


# -- instance_filter ----------------------------------------------------------------------------


def _np_filter(score: np.ndarray, classes: np.ndarray, rate: float, loss: bool) -> np.ndarray:
    bad = score if loss else -score
    keep = np.ones(len(score), dtype=bool)
    for c in np.unique(classes):
        rows = np.flatnonzero(classes == c)
        drop = round(rate * len(rows))
        keep[rows[np.argsort(-bad[rows], kind="stable")[:drop]]] = False
    return keep


def test_filter_scores_with_the_named_model_against_the_chosen_labels():
    h = _harness(InstanceFilter, {"model": "teacher", "labels": "noisy", "rate": 0.25},
                 teacher=True).setup()
    led = h.run.ledger
    # base_target differs from the noisy labels: "noisy" must not read it
    led.add("base_target", torch.roll(torch.eye(C), 1, 0)[led["noisy_label"]], producer="x",
            kind="target", snapshot=False)
    h.epoch_start(0)
    logits = _np_logits(h.ctx.models["teacher"], h.run.data.train.x)
    noisy = led["noisy_label"].numpy()
    score = -np.log(_np_softmax(logits)[np.arange(N), noisy])
    np.testing.assert_allclose(led["ff/instancefilter/score"].numpy(), score, rtol=1e-5)
    assert led.column("ff/instancefilter/score").kind == "value"
    keep = _np_filter(score, noisy, 0.25, loss=True)
    np.testing.assert_array_equal(led["select/instancefilter"].numpy(), keep)
    assert h.metrics["ff/instancefilter/dropped"] == pytest.approx((~keep).mean())
    assert h.metrics["ff/instancefilter/rate"] == 0.25


def test_filter_threshold_rule_through_the_component():
    h = _harness(InstanceFilter, {"rule": "threshold", "criterion": "confidence",
                                  "threshold": 0.3}).setup()
    h.epoch_start(0)
    led = h.run.ledger
    probs = _np_softmax(_np_logits(h.ctx.models["student"], h.run.data.train.x))
    conf = probs[np.arange(N), led["noisy_label"].numpy()]
    keep = conf >= 0.3
    assert keep.any() and (~keep).any()
    np.testing.assert_array_equal(led["select/instancefilter"].numpy(), keep)
    assert np.isnan(h.metrics["ff/instancefilter/rate"])
    assert h.metrics["ff/instancefilter/dropped"] == pytest.approx((~keep).mean())


def test_filter_threshold_keeps_a_score_equal_to_it():
    score = torch.tensor([0.5, 0.4, 0.6])
    cls = torch.zeros(3, dtype=torch.long)
    loss = filter_mask(score, cls, criterion="loss", rule="threshold", rate=0, threshold=0.5,
                       per_class=False)
    conf = filter_mask(score, cls, criterion="confidence", rule="threshold", rate=0,
                       threshold=0.5, per_class=False)
    assert loss.tolist() == [True, True, False] and conf.tolist() == [True, False, True]


def test_filter_rate_rule_matches_the_numpy_rule_with_many_ties():
    gen = torch.Generator().manual_seed(3)
    score = torch.randint(0, 4, (200,), generator=gen).double()  # ties everywhere
    cls = torch.randint(0, 3, (200,), generator=gen)
    for loss in (True, False):
        keep = filter_mask(score, cls, criterion="loss" if loss else "confidence", rule="rate",
                           rate=0.3, threshold=0, per_class=True)
        np.testing.assert_array_equal(keep.numpy(),
                                      _np_filter(score.numpy(), cls.numpy(), 0.3, loss))


# -- ff_warmup ----------------------------------------------------------------------------------


def test_warmup_on_targets_is_the_soft_cross_entropy_of_the_batch_targets():
    h = _harness(Warmup, {"labels": "targets"}).setup()
    led = h.run.ledger
    soft = torch.softmax(torch.randn(N, C, generator=torch.Generator().manual_seed(1)), 1)
    led.add("base_target", soft, producer="x", kind="target", snapshot=False)
    h.epoch_start(0)
    batch = h.batch([1, 7, 30])
    loss = h.component.transfer(h.ctx, batch)["student"]
    z = batch.out("student").logits.detach().double().numpy()
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    want = -(soft[[1, 7, 30]].double().numpy() * logp).sum(1)
    np.testing.assert_allclose(loss.detach().double().numpy(), want, rtol=1e-5)
    assert loss.requires_grad


def test_warmup_thaws_the_trunk_in_train_mode_and_freezes_again_in_a_new_stage():
    h = _harness(Warmup, {"classifier_only_epochs": 1}).setup()
    model = h.ctx.models["student"]
    h.epoch_start(0)
    assert not model.trunk[0].weight.requires_grad
    model.eval()
    h.epoch_start(1)  # thawed: trainable, and back in train mode
    assert model.trunk[0].weight.requires_grad and model.training
    h.component.on_stage_end(h.ctx)
    h.setup()  # the same instance at the start of another stage
    h.epoch_start(0)
    assert not model.trunk[0].weight.requires_grad
    assert h.component.handles
