"""Best-epoch keeping, the epoch metrics' guard and the ledger metrics, as units: what a stage
keeps and reports for each ``keep`` mode, written out by hand for a short history of epochs
(whole runs test them too, but only as far as a run happens to go; a mutation run,
``benchmarks/mutants.py kdcore-evaluation``, showed what they left)."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import torch

import kdcore
from kdcore.evaluation import BestKeeper, EpochMetrics, ledger_metrics
from kdcore.failures import RunFailed
from kdcore.ledger import Ledger
from kdcore.recipe import StageConfig

# (val, test, bacc) per epoch: the best validation is epoch 1; epoch 3 ties it (no replacement)
EPOCHS = [(0.5, 0.40, 0.35), (0.7, 0.60, 0.55), (0.6, 0.65, 0.60), (0.7, 0.66, 0.61)]


def _metrics(val: float, test: float, bacc: float) -> dict[str, float]:
    return {"val/m/acc": val, "test/m/acc": test, "test/m/bacc": bacc}


def _feed(keeper: BestKeeper, s: int, stage: StageConfig, epochs=EPOCHS, scale: float = 1.0):
    """One update per epoch; the model's weight is the epoch number times ``scale``, and so
    is every entry of its confusion matrix."""
    model = torch.nn.Linear(1, 1, bias=False)
    for epoch, values in enumerate(epochs):
        with torch.no_grad():
            model.weight.fill_(epoch * scale)
        keeper.update(s, stage, "m", epoch, _metrics(*values), model,
                      torch.full((2, 2), int(epoch * scale)))


def test_best_val_keeps_the_first_best_epochs_weights_and_reports_it():
    stage = StageConfig(name="a", epochs=4, train=["m"], keep="best_val")
    keeper = BestKeeper()
    _feed(keeper, 0, stage)
    name, epoch, state = keeper.kept_state(0, stage, "m")
    assert (name, epoch, float(state["weight"])) == ("a", 1, 1.0)
    assert int(keeper.kept_confusion(0, stage, "m")[0, 0]) == 1
    assert keeper.summary(0, stage, "m") == {
        "stage": "a", "best_val_epoch": 1, "val_acc": 0.7, "test_acc_at_best_val": 0.60,
        "test_bacc_at_best_val": 0.55, "last_test_acc": 0.66, "last_test_bacc": 0.61,
        "kept": "best_val"}


def test_last_keeps_no_weights_and_the_last_epochs_matrix():
    stage = StageConfig(name="a", epochs=4, train=["m"], keep="last")
    keeper = BestKeeper()
    _feed(keeper, 0, stage)
    assert keeper.kept_state(0, stage, "m") is None
    assert int(keeper.kept_confusion(0, stage, "m")[0, 0]) == 3
    summary = keeper.summary(0, stage, "m")
    assert summary["best_val_epoch"] == 1 and summary["kept"] == "last"


def test_best_val_all_spans_stages_and_each_stage_keeps_its_own_best():
    first = StageConfig(name="warm", epochs=4, train=["m"], keep="last")
    second = StageConfig(name="main", epochs=2, train=["m"], keep="best_val_all")
    keeper = BestKeeper(keep_all=frozenset({"m"}))
    _feed(keeper, 1, first)
    # the second stage never beats the first's best (0.7 at its epoch 1)
    _feed(keeper, 10, second, epochs=[(0.65, 0.9, 0.9), (0.68, 0.95, 0.93)], scale=10.0)
    name, epoch, state = keeper.kept_state(10, second, "m")
    assert (name, epoch, float(state["weight"])) == ("warm", 1, 1.0)
    summary = keeper.summary(10, second, "m")
    assert (summary["stage"], summary["best_val_epoch"], summary["last_test_acc"]) == (
        "warm", 1, 0.95)
    assert int(keeper.kept_confusion(10, second, "m")[0, 0]) == 1
    assert keeper.summary(10, StageConfig(name="main", epochs=2, keep="best_val"),
                          "m")["best_val_epoch"] == 1  # the stage's own best: its epoch 1
    assert set(keeper.best) == {"1/m", "10/m", "*/m"}
    assert keeper.summary(1, first, "m")["best_val_epoch"] == 1
    assert keeper.kept_state(0, StageConfig(name="x", epochs=1, keep="last"), "m") is None


def test_best_val_all_for_a_role_not_kept_over_stages_keeps_no_weights():
    stage = StageConfig(name="a", epochs=4, train=["m"], keep="best_val")
    keeper = BestKeeper()  # no role keeps best_val_all
    _feed(keeper, 0, stage)
    assert set(keeper.states) == {"0/m"}


def test_a_stages_kept_weights_are_released_at_its_end_and_best_val_all_stays():
    first = StageConfig(name="a", epochs=4, train=["m"], keep="best_val")
    second = StageConfig(name="b", epochs=2, train=["m"], keep="best_val_all")
    keeper = BestKeeper(keep_all=frozenset({"m"}))
    _feed(keeper, 0, first)
    _feed(keeper, 1, second, epochs=[(0.9, 0.9, 0.9)], scale=10.0)
    assert set(keeper.states) == {"0/m", "*/m"}  # stage 1 keeps best_val_all: "*/m" only
    keeper.release(1)  # a stage that kept nothing of its own: nothing to drop
    assert set(keeper.states) == {"0/m", "*/m"}
    keeper.release(0)
    assert set(keeper.states) == {"*/m"}
    assert keeper.kept_state(0, first, "m") is None
    assert keeper.summary(0, first, "m")["best_val_epoch"] == 1  # its record stays
    name, epoch, state = keeper.kept_state(1, second, "m")
    assert (name, epoch, float(state["weight"])) == ("b", 0, 0.0)
    keeper = BestKeeper()
    for s in (1, 10, 11):
        _feed(keeper, s, first, epochs=EPOCHS[:2])
    keeper.release(1)  # stage 1's alone, not 10's or 11's
    assert set(keeper.states) == {"10/m", "11/m"}


def test_without_validation_accuracy_no_best_epoch_is_reported():
    stage = StageConfig(name="a", epochs=2, train=["m"], keep="last")
    keeper = BestKeeper()
    _feed(keeper, 0, stage, epochs=[(math.nan, 0.3, 0.2), (math.nan, 0.4, 0.3)])
    summary = keeper.summary(0, stage, "m")
    assert summary == {"stage": "a", "best_val_epoch": None, "val_acc": None,
                       "test_acc_at_best_val": None, "test_bacc_at_best_val": None,
                       "last_test_acc": 0.4, "last_test_bacc": 0.3, "kept": "last"}


def test_state_dict_is_a_snapshot():
    stage = StageConfig(name="a", epochs=4, train=["m"], keep="best_val")
    keeper = BestKeeper()
    _feed(keeper, 0, stage, epochs=EPOCHS[:2])
    saved = keeper.state_dict()
    _feed(keeper, 0, stage, epochs=[(0.1, 0.2, 0.3)])  # no new best: the record is edited
    again = BestKeeper()
    again.load_state_dict(saved)
    summary = again.summary(0, stage, "m")
    assert (summary["best_val_epoch"], summary["last_test_acc"]) == (1, 0.60)


# -- EpochMetrics ---------------------------------------------------------------------------------


def test_epoch_metrics_add_numbers_and_refuse_replacing_or_tensors():
    metrics = EpochMetrics({"label/acc": 0.5})
    metrics["x/one"] = torch.tensor([2.5])
    assert metrics["x/one"] == 2.5 and type(metrics["x/one"]) is float
    with pytest.raises(RunFailed, match=r"^metric 'label/acc' is already this epoch's; a "
                       r"component adds its own under a new name, it does not replace one$"):
        metrics["label/acc"] = 0.7
    with pytest.raises(RunFailed, match=r"^metric 'x/two' is a tensor of shape \(2,\); a "
                       r"metric is one number$"):
        metrics["x/two"] = torch.tensor([1.0, 2.0])


@pytest.mark.parametrize(("name", "value", "message"), [
    ("", 1.0, "metric name '' is not a path of named parts (a/b/c)"),
    ("x//y", 1.0, "metric name 'x//y' is not a path of named parts (a/b/c)"),
    ("x/", 1.0, "metric name 'x/' is not a path of named parts (a/b/c)"),
    ("./x", 1.0, "metric name './x' is not a path of named parts (a/b/c)"),
    ("x/..", 1.0, "metric name 'x/..' is not a path of named parts (a/b/c)"),
    ("x\0y", 1.0, "metric name 'x\\x00y' is not a path of named parts (a/b/c)"),
    (5, 1.0, "metric name int 5 is not a string"),
    ("label", 1.0, "metrics 'label/acc' and 'label' cannot both be written: the history keeps "
                   "a name with '/' as a folder of metrics"),
    ("label/acc/high", 1.0, "metrics 'label/acc' and 'label/acc/high' cannot both be written: "
                            "the history keeps a name with '/' as a folder of metrics"),
    ("x", "abc", "metric 'x' is str 'abc'; a metric is one number"),
    ("x", None, "metric 'x' is NoneType None; a metric is one number"),
    ("x", 10 ** 400, "metric 'x' is int 1000000000000000000000000000000000000000000000000000000"
                     "00000; a metric is one number"),
])
def test_epoch_metrics_refuse_a_name_or_value_the_history_cannot_hold(name, value, message):
    """Each was a traceback from h5py or float() when the row was written (exit 1)."""
    metrics = EpochMetrics({"label/acc": 0.5})
    with pytest.raises(RunFailed) as err:
        metrics[name] = value
    assert str(err.value) == message
    with pytest.raises(RunFailed):  # as a component's log_metric reaches them
        metrics.take_logged({name: value})
    assert dict(metrics) == {"label/acc": 0.5}


def test_epoch_metrics_refuse_removing_one_and_take_logged_values_last_wins():
    metrics = EpochMetrics({"label/acc": 0.5, "x/a": 1.0})
    for remove in (lambda: metrics.pop("label/acc"), lambda: metrics.__delitem__("x/a"),
                   metrics.popitem, metrics.clear):
        with pytest.raises(RunFailed) as err:
            remove()
        assert str(err.value) == ("a component adds metrics; it does not remove one (the "
                                  "history row and the best-epoch keeping read them)")
    assert dict(EpochMetrics(k=1.0)) == {"k": 1.0}
    metrics.update(x_kw=2.0)
    assert metrics["x_kw"] == 2.0
    with pytest.raises(RunFailed, match="^metric 'x/a' is already"):
        metrics.update({"x/b": 2.0, "x/a": 3.0})  # dict's own update bypassed the check
    logged = {"mine/p": 0.25, "mine/q": np.float32(0.5)}
    metrics.take_logged(logged)
    assert logged == {} and metrics["mine/p"] == 0.25 and type(metrics["mine/q"]) is float
    metrics.take_logged({"mine/p": 0.75})  # logged again later in the epoch: the last value
    assert metrics["mine/p"] == 0.75
    with pytest.raises(RunFailed, match="^metric 'mine/p' is str 'high'; a metric is one "):
        metrics.take_logged({"mine/p": "high"})
    with pytest.raises(RunFailed, match="^metric 'label/acc' is already"):
        metrics.take_logged({"label/acc": 0.9})


# -- ledger_metrics -------------------------------------------------------------------------------


def test_ledger_metrics_read_masks_and_weights_by_their_prefix_and_kind():
    led = Ledger(4)
    clean = torch.tensor([True, True, False, False])
    led.add("clean_mask", clean, producer="data", kind="mask")
    led.add("clean_label", torch.tensor([0, 1, 0, 1]), producer="data", kind="label")
    led.add("target", torch.eye(2)[[0, 1, 1, 1]], producer="x", kind="target")
    led.add("select/a", torch.tensor([True, True, False, True]), producer="a", kind="mask")
    led.add("weight/w", torch.tensor([0.9, 0.8, 0.1, 0.7]), producer="w", kind="weight")
    led.add("other/mask", torch.tensor([True, False, True, False]), producer="o", kind="mask")
    led.add("weight/v", torch.tensor([0.1, 0.2, 0.3, 0.4]), producer="v", kind="value")
    led.add("weight/two", torch.ones(4, 2), producer="t", kind="weight")
    out = ledger_metrics(led)
    assert out["label/acc"] == 0.75 and out["label/noisy_acc"] == 0.5
    assert out["select/a/precision"] == pytest.approx(2 / 3)
    # right labels: rows 0, 1, 3; AUC of the weights for telling them from row 2: all above
    assert out["weight/w/auc"] == 1.0
    assert not any(k.startswith(("other/", "weight/v", "weight/two")) for k in out)
    skipped = ledger_metrics(led, skip={"select/a", "other/mask"})  # not this epoch's
    assert "weight/w/auc" in skipped and not any(k.startswith("select/") for k in skipped)
    assert ledger_metrics(led, skip={"weight/w"}).keys() == out.keys() - {"weight/w/auc"}
    empty = Ledger(0)
    for name, kind in (("clean_mask", "mask"), ("clean_label", "label")):
        empty.add(name, torch.zeros(0, dtype=torch.long), producer="data", kind=kind)
    empty.add("target", torch.zeros(0, 2), producer="x", kind="target")
    assert math.isnan(ledger_metrics(empty)["label/acc"])


def test_confusion_on_test_predicts_with_the_runs_predict():
    from kdcore.builtin.components import CrossEntropy
    from kdcore.data.base import ArrayDataset
    from kdcore.evaluation import confusion_on_test
    from kdcore.testing import TinyNet, harness

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 6, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    model = TinyNet(6, 3)
    h = harness(CrossEntropy, {}, x=x, noisy_label=y, models={"student": model})
    data = attrs.evolve(h.run.data, test=ArrayDataset(x, y, 3))

    def flipped(m, batch):  # a run's own predict: here, the least likely class
        return -m(batch)[0]

    with torch.no_grad():
        pred = (-model(x)[0]).argmax(1)
    want = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(y.tolist(), pred.tolist()):
        want[t, p] += 1
    assert torch.equal(confusion_on_test(model, data, 7, flipped), want)


# -- a component's and an observer's numbers reach the epoch's row ------------------------------

class _LogsEverywhere(kdcore.Component):
    def on_epoch_start(self, ctx):
        ctx.log_metric("mine/start", 1.0)
        ctx.log_metric("mine/again", 1.0)

    def on_epoch_end(self, ctx, metrics):
        ctx.log_metric("mine/end", 2.0 + ctx.epoch)
        ctx.log_metric("mine/again", 3.0)  # the last value logged in the epoch wins


class _Observer:
    def __init__(self):
        self.seen = []

    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"logs_everywhere": _LogsEverywhere}

    @kdcore.hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        self.seen.append({k: v for k, v in metrics.items() if k.startswith("mine/")})
        ctx.log_metric("observed/epoch", float(epoch))


@pytest.mark.slow
def test_numbers_logged_in_on_epoch_end_and_by_observers_reach_the_row(tmp_path):
    """What a component logged with ctx.log_metric in on_epoch_end (the natural place for an
    epoch's summary) was dropped without a word, as was an observer's."""
    from kdcore.history import History
    from kdcore.testing import component, run_tiny, stage, tiny_recipe

    observer = _Observer()
    data = tiny_recipe(stage("student", 2, ["student"], component("ce"),
                             component("logs_everywhere")))
    del data["models"]["teacher"]
    run_tiny(data, tmp_path / "run", plugins=[observer])
    assert observer.seen == [{"mine/start": 1.0, "mine/again": 3.0, "mine/end": 2.0 + e}
                             for e in (0, 1)]
    with History(tmp_path / "run") as h:
        assert h.metric("mine/start").tolist() == [1.0, 1.0]
        assert h.metric("mine/again").tolist() == [3.0, 3.0]
        assert h.metric("mine/end").tolist() == [2.0, 3.0]
        assert h.metric("observed/epoch").tolist() == [0.0, 1.0]


def test_a_runs_checkpoint_after_its_best_val_stages_holds_none_of_their_weights(tmp_path):
    """Each best_val stage's kept copy of the student had stayed in memory and in every later
    checkpoint to the run's end: two stages, two copies, at the third stage's start."""
    from kdcore.testing import component, run_tiny, stage, tiny_recipe

    recipe = tiny_recipe(*(stage(name, 1, ["student"], component("ce"), keep="best_val")
                           for name in ("a", "b")), stage("c", 1, ["teacher"], component("ce")))
    run_tiny(recipe, tmp_path / "run")
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["position"]["stage"] == 2 and saved["best"]["states"] == {}
    assert {"0/student", "1/student"} <= set(saved["best"]["best"])  # their records stay
