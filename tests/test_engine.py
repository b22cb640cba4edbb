"""The engine: component order and combination, ledger alignment, history contents."""

from __future__ import annotations

import math
import re

import attrs
import numpy as np
import pytest
import torch

from kdcore import Component, History, PluginHost, hookimpl, load_recipe, run_recipe
from kdcore.errors import TrainingDiverged
from kdcore.losses import one_hot


class IndexProbe(Component):
    """Checks, inside training, that everything a batch carries belongs to its indices."""

    def setup(self, ctx):
        self.checked = 0

    def select(self, ctx, batch):
        led = ctx.ledger
        assert torch.equal(batch.noisy_label, led["noisy_label"][batch.index])
        # refinements run before selections: the probe sees the shifted targets
        shifted = (led["noisy_label"][batch.index] + 1) % batch.num_classes
        assert torch.equal(batch.targets.argmax(1), shifted)
        self.checked += len(batch)
        return batch.index % 2 == 0  # a mask whose ledger column must equal index parity


class ShiftRefiner(Component):
    """Refines every target to the next class: detectable in the ledger by index."""

    def refine(self, ctx, batch, targets):
        return one_hot((batch.noisy_label + 1) % batch.num_classes, batch.num_classes)


@attrs.frozen
class ConstParams:
    value: float = 1.0


class ConstWeight(Component):
    Params = ConstParams

    def weight(self, ctx, batch):
        return torch.full((len(batch),), self.params.value)


class Probes:
    @hookimpl
    def kdcore_add_components(self):
        return {"index_probe": IndexProbe, "shift": ShiftRefiner, "const_weight": ConstWeight}


def _recipe(tiny_recipe, *sets):
    return load_recipe(tiny_recipe, list(sets))


def _host():
    return PluginHost(extra=[Probes()])


def test_kd_run_writes_history_and_summary(tiny_recipe, tmp_path):
    summary = run_recipe(_recipe(tiny_recipe), out=str(tmp_path / "run"), host=_host())
    assert set(summary) == {"teacher", "student"}
    with History(tmp_path / "run") as h:
        assert h.epochs() == [("teacher", 0), ("teacher", 1), ("student", 0), ("student", 1)]
        acc = h.metric("test/student/acc")
        assert np.isnan(acc[:2]).all() and (acc[2:] >= 0).all()
        assert 0 <= h.metric("label/acc")[0] <= 1
        # 40% symmetric noise, excluding the true class: the realised rate is exact
        assert abs(1 - h.data("clean_mask").mean() - 0.4) < 0.01
        assert h.column("loss/kd").shape[0] == 4
        assert "[[stages]]" in h.recipe
    assert (tmp_path / "run" / "models" / "teacher.pt").is_file()


def test_ledger_columns_stay_aligned_with_sample_indices(tiny_recipe, tmp_path):
    r = _recipe(tiny_recipe, "stages.teacher.epochs=1", "stages.student.epochs=1")
    stages = [attrs.evolve(r.stages[0], components=[
        *r.stages[0].components,
        attrs.evolve(r.stages[0].components[0], use="index_probe", name="probe"),
        attrs.evolve(r.stages[0].components[0], use="shift", name="shift"),
    ]), r.stages[1]]
    r = attrs.evolve(r, stages=stages)
    run_recipe(r, out=str(tmp_path / "run"), host=_host())
    with History(tmp_path / "run") as h:
        n = len(h.data("noisy_label"))
        parity = h.column("select/probe", 0)
        np.testing.assert_array_equal(parity, np.arange(n) % 2 == 0)
        target = h.column("target", 0).argmax(-1)
        np.testing.assert_array_equal(target, (h.data("noisy_label") + 1) % 10)
        assert h.producers("target")[0] == "shift"
        # the selection precision is measured against the true noise mask
        clean = h.data("clean_mask")
        expected = clean[np.arange(n) % 2 == 0].mean()
        assert h.metric("select/probe/precision")[0] == pytest.approx(expected)


def test_masks_and_weights_combine_as_documented(tiny_recipe):
    from kdcore.component import ComponentSpec
    from kdcore.step import reduce_term

    def comp(name, models=("s",), terms=()):
        c = Component(None, ComponentSpec(name=name, use=name, models=models, terms=terms))
        return c

    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    term = comp("ce")
    masks = [(comp("sel"), "s", torch.tensor([True, True, False, True])),
             (comp("sel2", terms=("other",)), "s", torch.tensor([False] * 4))]
    weights = [(comp("w"), "s", torch.tensor([0.5, 1.0, 1.0, 2.0]))]
    value = reduce_term(term, "s", loss, masks, weights)
    # sel2 acts on another term; sel keeps samples 0, 1, 3; weights scale
    assert value.item() == pytest.approx((0.5 * 1 + 2 + 2 * 4) / 3)
    assert reduce_term(term, "s", loss, [], []).item() == pytest.approx(2.5)


def test_nan_loss_names_term_and_keeps_history(tiny_recipe, tmp_path):
    first_bad_step = []

    class Explode(Component):
        def transfer(self, ctx, batch):
            bad = ctx.epoch == 1
            if bad and not first_bad_step:
                first_bad_step.append(batch.step)
            z = batch.out(self.model).logits.sum(1)
            return z * float("nan") if bad else z * 0

    class P:
        @hookimpl
        def kdcore_add_components(self):
            return {"explode": Explode}

    r = _recipe(tiny_recipe)
    stage = attrs.evolve(r.stages[0], components=[
        *r.stages[0].components,
        attrs.evolve(r.stages[0].components[0], use="explode", name="boom")])
    r = attrs.evolve(r, stages=[stage, r.stages[1]])
    with pytest.raises(TrainingDiverged, match="term 'boom'.*component 'explode'") as err:
        run_recipe(r, out=str(tmp_path / "run"), host=PluginHost(extra=[P()]))
    # checked every few steps, reported at the exact one
    assert f"epoch 1, step {first_bad_step[0]}:" in str(err.value)
    with History(tmp_path / "run") as h:
        assert len(h) == 1  # epoch 0 completed and stays


class HardProbe(Component):
    """Records, per stage epoch, whether batches carried hard targets, and checks them."""

    seen: dict = {}
    writes = ("base_target",)

    def on_epoch_start(self, ctx):
        if self.spec.name == "relabel" and ctx.epoch == 1:  # epoch-level targets change
            led = ctx.ledger
            led.add("base_target", led["base_target"].roll(1, dims=1), kind="target")

    def transfer(self, ctx, batch):
        if self.spec.name == "probe":
            hard = batch.hard_targets
            HardProbe.seen.setdefault(ctx.epoch, set()).add(hard is not None)
            if hard is not None:
                assert torch.equal(one_hot(hard, batch.num_classes), batch.targets)
                batch.targets.mul_(0.5)  # an in-place edit voids them for later terms
                assert batch.hard_targets is None
        return None


def test_hard_targets_only_while_targets_are_the_one_hot_labels(tiny_recipe, tmp_path):
    class P:
        @hookimpl
        def kdcore_add_components(self):
            return {"hard_probe": HardProbe}

    r = _recipe(tiny_recipe, "stages.teacher.epochs=2", "stages.student.epochs=1")
    ce = r.stages[0].components[0]
    stage = attrs.evolve(r.stages[0], components=[
        attrs.evolve(ce, use="hard_probe", name="relabel"),
        attrs.evolve(ce, use="hard_probe", name="probe"), ce])
    r = attrs.evolve(r, stages=[stage, r.stages[1]])
    HardProbe.seen = {}
    run_recipe(r, out=str(tmp_path / "run"), host=PluginHost(extra=[P()]))
    assert HardProbe.seen == {0: {True}, 1: {False}}


def test_same_seed_same_result_different_seed_differs(tiny_recipe, tmp_path):
    a = run_recipe(_recipe(tiny_recipe), out=str(tmp_path / "a"))
    b = run_recipe(_recipe(tiny_recipe), out=str(tmp_path / "b"))
    run_recipe(_recipe(tiny_recipe, "run.seed=1"), out=str(tmp_path / "c"))
    assert a == b
    with History(tmp_path / "a") as ha, History(tmp_path / "c") as hc:
        assert not np.array_equal(ha.data("noisy_label"), hc.data("noisy_label"))


def test_features_service_is_shared_and_ordered(tiny_recipe, tmp_path):
    seen = {}

    class Feat(Component):
        def on_epoch_start(self, ctx):
            a = ctx.features("teacher")
            b = ctx.features("teacher")
            seen["same"] = a is b
            seen["n"] = a.features.shape[0] == len(ctx.data.train)
            x = ctx.data.inputs(ctx.data.train, torch.arange(5))
            with torch.no_grad():
                ctx.models["teacher"].eval()
                seen["rows"] = torch.allclose(ctx.models["teacher"](x)[0], a.logits[:5],
                                              atol=1e-5)
                ctx.models["teacher"].train()

    class P:
        @hookimpl
        def kdcore_add_components(self):
            return {"feat": Feat}

    r = _recipe(tiny_recipe, "stages.teacher.epochs=1", "stages.student.epochs=1")
    stage = attrs.evolve(r.stages[0], components=[
        attrs.evolve(r.stages[0].components[0], use="feat", name="feat"),
        *r.stages[0].components])
    run_recipe(attrs.evolve(r, stages=[stage, r.stages[1]]), out=str(tmp_path / "r"),
               host=PluginHost(extra=[P()]))
    assert seen == {"same": True, "n": True, "rows": True}


def test_best_val_keeps_the_best_epoch(tiny_recipe, tmp_path):
    r = _recipe(tiny_recipe, "stages.teacher.epochs=4")
    summary = run_recipe(r, out=str(tmp_path / "r"))
    with History(tmp_path / "r") as h:
        val = h.metric("val/teacher/acc")[:4]
        assert summary["teacher"]["best_val_epoch"] == int(np.argmax(val))
        assert summary["teacher"]["val_acc"] == pytest.approx(val.max())


def test_loaders_reach_the_runs_registries_and_runs_record_data(tiny_recipe, tmp_path):
    import kdcore

    class P:
        """A dataset registered only in-process that wraps another one, and a /data array."""

        @hookimpl
        def kdcore_add_datasets(self):
            def inner():
                return kdcore.active_host().datasets.get("digits")()

            def wrapper():  # finds "inner" only through the run's host
                return kdcore.active_host().datasets.get("inner")()

            return {"inner": inner, "wrapper": wrapper}

        @hookimpl
        def kdcore_run_start(self, ctx):
            ctx.record_data("probe/order", torch.arange(len(ctx.data.train)) * 2)

    r = _recipe(tiny_recipe, 'data.dataset="wrapper"', "stages.teacher.epochs=1",
                "stages.student.epochs=1")
    run_recipe(r, out=str(tmp_path / "run"), host=PluginHost(extra=[P()]))
    with History(tmp_path / "run") as h:
        assert "probe/order" in h.data_names()
        n = len(h.data("noisy_label"))
        np.testing.assert_array_equal(h.data("probe/order"), np.arange(n) * 2)
    assert "inner" not in kdcore.active_host().datasets  # outside a run: the installed plugins


class _FolderLater:
    """Records ``g/a`` at the first epoch's end and ``g`` at the third's: a folder of an
    earlier record, which ``add_data`` replaced (deleting ``g/a``) when a resume came between."""

    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        if epoch in (0, 2):
            ctx.record_data("g/a" if epoch == 0 else "g", torch.ones(2))


@pytest.mark.parametrize("resumed", [False, True])
def test_a_record_that_would_replace_a_folder_of_earlier_ones_is_refused_across_a_resume(
        tmp_path, resumed):
    from kdcore.failures import RunFailed
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import InterruptAt, Interrupted, component, stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(stage("s", 3, ["student"], component("ce")),
                                          run={"checkpoint_interval_s": 0}))
    out = str(tmp_path / "run")
    if resumed:  # killed in the third epoch, after the second's checkpoint
        with pytest.raises(Interrupted):
            run_recipe(recipe, out=out, host=PluginHost(extra=[_FolderLater(),
                                                               InterruptAt(epoch=2, batch=1)]))
    with pytest.raises(RunFailed, match=re.escape(
            "plugin '_FolderLater-0': record_data's names 'g/a' and 'g' cannot both be kept")):
        run_recipe(recipe, out=out, resume=resumed, host=PluginHost(extra=[_FolderLater()]))
    with History(tmp_path / "run") as h:
        np.testing.assert_array_equal(h.data("g/a"), np.ones(2))


@pytest.mark.slow
def test_best_val_all_restores_the_roles_best_epoch_from_an_earlier_stage(tmp_path):
    """A warm-up that learns, then a stage that unlearns (uniform targets): keep =
    "best_val_all" restores the warm-up's best epoch, and the saved weights score it."""
    from kdcore.evaluation import evaluate
    from kdcore.plan import build_plan
    from kdcore.prepare import load_weights_into, prepare_run
    from kdcore.testing import component, run_tiny, stage, tiny_recipe

    data = tiny_recipe(
        stage("warm", 4, ["student"], component("ce")),
        stage("unlearn", 3, ["student"], component("label_smoothing", params={"epsilon": 1.0}),
              component("ce"), keep="best_val_all"),
        models={"student": {"arch": "mlp", "params": {"hidden": [32]},
                            "optimizer": {"lr": 0.5}}})
    summary = run_tiny(data, tmp_path / "run")["student"]
    with History(tmp_path / "run") as h:
        val = h.metric("val/student/acc")
        best = int(np.argmax(val))
        assert h.epochs()[best][0] == "warm" and val[best] > val[-1]  # the set-up holds
    assert (summary["stage"], summary["best_val_epoch"]) == ("warm", best)
    assert summary["val_acc"] == pytest.approx(val[best]) and summary["kept"] == "best_val_all"
    recipe = load_recipe(tmp_path / "run.toml")
    run = prepare_run(build_plan(recipe, PluginHost()), PluginHost(), tmp_path)
    load_weights_into(run.models["student"], torch.load(tmp_path / "run/models/student.pt"),
                      "student", "models/student.pt")
    scored = evaluate(run.models, ["student"], run.data, 1024)
    assert scored["val/student/acc"] == pytest.approx(val[best])


@pytest.mark.slow
def test_a_term_serving_one_model_then_two_records_per_model_in_every_stage(tmp_path):
    """CE on the teacher, then on the teacher and a student: ``loss/ce`` and a later
    ``loss/ce/<role>`` had stopped the run at the second stage's first epoch end (h5py:
    'Incompatible object (Dataset) already exists')."""
    from kdcore.testing import component, run_tiny, stage, teacher_stage, tiny_recipe

    run_tiny(tiny_recipe(teacher_stage(1), stage("both", 1, ["teacher", "student"],
                                                 component("ce"))), tmp_path / "run")
    with History(tmp_path / "run") as h:
        assert [c for c in h.column_names() if c.startswith("loss/")] == [
            "loss/ce/student", "loss/ce/teacher"]
        teacher, student = h.column("loss/ce/teacher"), h.column("loss/ce/student")
        assert np.isfinite(teacher).all() and np.isfinite(student[1]).all()
        assert np.isnan(student[0]).all()  # the student trained in the second stage only
        assert h.producers("loss/ce/teacher") == ["ce", "ce"]


def test_a_later_stage_that_cannot_be_set_up_stops_the_run_before_any_stage_trains(
        tmp_path):
    """LP's k is refused in its set-up. Before, a run set a stage's components up only when
    the stage began: the teacher stage trained whole, then the run stopped."""
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe

    from .cli_helpers import invoke, one_line_error

    recipe = write_recipe(tiny_recipe(teacher_stage(2), stage(
        "lp", 1, ["student"], component("teacher_lp", params={"k": 1000}), component("ce"))),
        tmp_path / "late.toml")
    one_line_error(invoke("run", recipe, "--out", tmp_path / "run", "--quiet"),
                   "k = 1000 neighbours needs more than 1000 training samples")
    with History(tmp_path / "run") as h:
        assert h.epochs() == []  # no teacher epoch trained
    assert not (tmp_path / "run" / "models" / "teacher.pt").exists()


class LedgerInSetup(Component):
    """Breaks setup's contract: writes a column while it builds its state."""

    writes = ("probe/{name}",)

    def setup(self, ctx):
        ctx.ledger.add(f"probe/{self.name}", torch.zeros(ctx.ledger.size))

    def select(self, ctx, batch):
        return None


class ContractBreakers:
    """The components below that break a hook's contract, as one in-process plugin."""

    @hookimpl
    def kdcore_add_components(self):
        return {"ledger_in_setup": LedgerInSetup, "bad_select": BadSelect,
                "bad_weight": BadWeight, "bad_refine": BadRefine,
                "metric_writer": MetricWriter}


def _run_one_stage(out, use, label, **params):
    """One epoch of the student with component ``use`` (``params``) beside ce."""
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(stage("s", 1, ["student"], component(
        use, label, params=params), component("ce")), models={"student": {"arch": "mlp"}}))
    return run_recipe(recipe, out=str(out), host=PluginHost(extra=[ContractBreakers()]))


def test_setup_that_writes_the_ledger_is_refused_in_a_run_and_in_the_harness(tmp_path):
    """setup runs again on resume and before the first stage trains: a column it wrote would
    differ between a run and its resumed twin, so the ledger is read-only there."""
    from kdcore.testing import harness

    message = ("component 'ledger_in_setup' wrote ledger column 'probe/ledger_in_setup' in "
               "setup, which must not write the ledger")
    with pytest.raises(RuntimeError, match=message):
        _run_one_stage(tmp_path / "run", "ledger_in_setup", "ledger_in_setup")
    with pytest.raises(RuntimeError, match=message):
        harness(LedgerInSetup, {}, x=torch.zeros(6, 2), noisy_label=torch.arange(6) % 2,
                num_classes=2, name="ledger_in_setup").setup()


def test_a_trained_model_without_a_loss_term_is_refused_by_the_plan():
    """It trained nothing (its optimiser only decayed the weights), and the log read like a
    normal run."""
    from kdcore import RecipeError
    from kdcore.plan import build_plan
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe

    frozen_term = stage("s", 1, ["student"], component("ce", models=["teacher"]))
    with pytest.raises(RecipeError, match="stage 's' trains 'student', but none of its "
                                          "components gives 'student' a loss term") as err:
        build_plan(recipe_from_dict(tiny_recipe(teacher_stage(1), frozen_term)), PluginHost())
    assert err.value.key == "stages[1].train"
    build_plan(recipe_from_dict(tiny_recipe(teacher_stage(1), stage(
        "s", 1, ["student"], component("ce")))), PluginHost())


def test_a_loss_that_overflows_only_in_the_weighted_sum_says_so(tiny_recipe, tmp_path):
    """Each term was finite, so the message named term '?'."""
    r = _recipe(tiny_recipe, "stages.teacher.components.ce.weight=3e38",
                "stages.teacher.components.0.name=\"ce1\"")
    stage = attrs.evolve(r.stages[0], components=[
        *r.stages[0].components, attrs.evolve(r.stages[0].components[0], name="ce2")])
    r = attrs.evolve(r, stages=[stage, r.stages[1]])
    with pytest.raises(TrainingDiverged, match=r"step 0: every term is finite, their sum "
                                               r"times the components' weights is not"):
        run_recipe(r, out=str(tmp_path / "run"), host=_host())


@attrs.frozen
class BadParams:
    mode: str = "ok"


class BadSelect(Component):
    """Returns a mask of the shape, role or values ``mode`` names."""

    Params = BadParams

    def select(self, ctx, batch):
        ones = torch.ones(len(batch))
        return {"2d": ones[:, None], "scalar": torch.tensor(1.0), "list": [1.0] * len(batch),
                "role": {"nope": ones}, "neg": -ones, "big": 5 * ones, "nan": ones * math.nan,
                "complex": ones.to(torch.complex64), "meta": ones.to("meta"),
                "int": 2 * ones.long(), "soft": (batch.index % 4) / 4, "ok": ones}[self.params.mode]


class BadWeight(Component):
    Params = BadParams

    def weight(self, ctx, batch):
        ones = torch.ones(len(batch))
        return {"neg": -ones, "nan": ones * math.nan, "int": -ones.long(), "inf": ones * math.inf,
                "ok": ones}[self.params.mode]


class BadRefine(Component):
    Params = BadParams

    def refine(self, ctx, batch, targets):
        return {"neg": targets - 0.5, "unnorm": targets * 3, "shape": targets[:, :2],
                "nan": targets * math.nan, "complex": targets.to(torch.complex64),
                "meta": targets.to("meta"), "ok": targets}[self.params.mode]


@pytest.mark.parametrize(("use", "mode", "message"), [
    ("bad_select", "2d", "select returned a tensor of shape (64, 1); expected one value per "
                         "sample, shape (64,)"),
    ("bad_select", "scalar", "select returned a tensor of shape (); expected"),
    ("bad_select", "list", "select returned a list; expected"),
    ("bad_select", "role", "select returned a value for model 'nope', which it does not serve "
                           "(it serves student)"),
    ("bad_select", "neg", "select returned values outside [0, 1] (from -1 to -1)"),
    ("bad_select", "big", "select returned values outside [0, 1] (from 5 to 5)"),
    ("bad_weight", "neg", "weight returned values outside [0, inf) (from -1 to -1)"),
    ("bad_select", "nan", "select returned NaN; a select must lie in [0, 1]"),
    ("bad_weight", "nan", "weight returned NaN; a weight must lie in [0, inf)"),
    ("bad_select", "int", "select returned values outside [0, 1] (from 2 to 2)"),
    ("bad_weight", "int", "weight returned values outside [0, inf) (from -1 to -1)"),
    ("bad_weight", "inf", "weight returned values outside [0, inf) (from inf to inf)"),
    ("bad_select", "complex", "select returned complex numbers (torch.complex64); expected real "
                              "ones"),
    ("bad_select", "meta", "select returned a tensor on device 'meta'; expected it on the run's "
                           "device 'cpu'"),
    ("bad_refine", "complex", "refine returned complex numbers (torch.complex64); expected real "
                              "ones"),
    ("bad_refine", "meta", "refine returned a tensor on device 'meta'; expected it on the run's "
                           "device 'cpu'"),
    ("bad_refine", "nan", "refine made targets that hold NaN; each row must be non-negative "
                          "and sum to 1"),
    ("bad_refine", "neg", "refine made targets that are not distributions (entries from -0.5, "
                          "rows summing to -4 .. -4)"),
    ("bad_refine", "unnorm", "refine made targets that are not distributions (entries from 0, "
                             "rows summing to 3 .. 3)"),
    ("bad_refine", "shape", "refine returned a tensor of shape (64, 2); expected targets of "
                            "shape (64, 10)"),
])
def test_a_batch_hook_that_returns_what_the_contract_does_not_allow_stops_the_run(
        tmp_path, use, mode, message):
    """Each was accepted: a (B, 1) mask made each term a sum, a mask of -1 gradient ascent,
    a mask for a role not served was ignored, targets of -0.5 were trained on; an integer
    weight of -1 was never checked, an infinite weight's divergence was blamed on the term,
    and complex or meta tensors ended in a traceback."""
    from kdcore.failures import RunFailed

    with pytest.raises(RunFailed, match=re.escape(f"component 'bad' ({use}) {message}")):
        _run_one_stage(tmp_path / "run", use, "bad", mode=mode)
    _run_one_stage(tmp_path / "ok", use, "bad", mode="ok")


def test_a_selectors_soft_scores_are_what_the_history_keeps(tmp_path):
    """Stored as bool, a score of 0.25 read back as True: the history showed the sample fully
    selected where its loss had counted a quarter. Readers of the masks take the scores."""
    import kdcore

    _run_one_stage(tmp_path / "run", "bad_select", "bad", mode="soft")
    with History(tmp_path / "run") as h:
        mask = h.column("select/bad", 0)
        assert mask.dtype == np.float16 and h.column_kind("select/bad") == "mask"
        np.testing.assert_array_equal(mask, (np.arange(len(mask)) % 4) / 4)
        clean = h.data("clean_mask").astype(bool)
        scores = mask.astype(np.float64)  # each sample counts by its score
        assert h.metric("select/bad/fraction")[0] == pytest.approx(scores.mean())
        assert h.metric("select/bad/precision")[0] == pytest.approx(
            scores[clean].sum() / scores.sum())
        assert h.metric("select/bad/recall")[0] == pytest.approx(
            scores[clean].sum() / clean.sum())
    issues = kdcore.label_issues(tmp_path / "run")
    excluded = issues.times_excluded.astype(bool)  # a score of 0 leaves a sample out
    assert excluded.any() and (np.asarray(issues.index)[excluded] % 4 == 0).all()
    assert (np.asarray(issues.index)[~excluded] % 4 != 0).all()  # 0.25 and up count


@attrs.frozen
class UntilParams:
    until: int = 1


class SelectUntil(Component):
    """Selects the even rows until epoch ``until``, then abstains: every sample counts."""

    Params = UntilParams

    def select(self, ctx, batch):
        return None if ctx.epoch >= self.params.until else batch.index % 2 == 0


def test_an_epoch_row_holds_only_the_masks_and_records_that_epoch_wrote(tmp_path):
    """A selector that had stopped, or one of an earlier stage, was written into every later
    row as its last mask, with its name as producer: the history, its metrics and
    label-issues' exclusions said half the samples were left out where all had counted. The
    teacher's logits were likewise repeated through the student's stages."""
    import kdcore
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(
        teacher_stage(1),
        stage("a", 3, ["student"], component("select_until", "sel", params={"until": 1}),
              component("ce")),
        stage("b", 1, ["student"], component("ce"))))
    plugins = PluginHost(extra=[Probes(), SelectUntilPlugin()])
    run_recipe(recipe, out=str(tmp_path / "run"), host=plugins)
    with History(tmp_path / "run") as h:
        assert [s for s, _ in h.epochs()] == ["teacher", "a", "a", "a", "b"]
        assert h.producers("select/sel") == ["", "sel", "", "", ""]
        mask = h.column("select/sel")
        assert mask[1].tolist() == (np.arange(mask.shape[1]) % 2 == 0).tolist()
        assert not mask[[0, 2, 3, 4]].any()  # the fill value where no hook wrote it
        fraction = h.metric("select/sel/fraction")
        assert fraction[1] == 0.5 and np.isnan(fraction[[0, 2, 3, 4]]).all()
        assert h.producers("logits/teacher") == ["teacher", "", "", "", ""]
        assert np.isnan(h.column("logits/teacher")[1:]).all()
        assert h.producers("logits/student") == ["", "student", "student", "student", "student"]
        assert h.producers("loss/ce") == ["ce"] * 5
    issues = kdcore.label_issues(tmp_path / "run")
    assert issues.times_excluded.max() == 1  # once: the only epoch that selected


class SelectSometimes(Component):
    """Selects the even rows on even steps and abstains on odd ones, keeping each epoch's
    abstained rows (class-level: the plan builds the instance)."""

    abstained: dict[int, list[torch.Tensor]] = {}

    def select(self, ctx, batch):
        if ctx.step % 2:
            SelectSometimes.abstained.setdefault(ctx.epoch, []).append(batch.index.clone())
            return None
        return batch.index % 2 == 0


class TermSometimes(Component):
    """A cross-entropy term on even steps, none on odd ones (their rows kept as for
    :class:`SelectSometimes`)."""

    abstained: dict[tuple[str, int], list[torch.Tensor]] = {}

    def transfer(self, ctx, batch):
        if ctx.step % 2:
            key = (ctx.stage.name, ctx.epoch)
            TermSometimes.abstained.setdefault(key, []).append(batch.index.clone())
            return None
        logits = batch.out(self.models[0]).logits
        return torch.nn.functional.cross_entropy(logits, batch.targets, reduction="none")


class SelectUntilPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"select_until": SelectUntil, "select_sometimes": SelectSometimes,
                "term_sometimes": TermSometimes}


def test_the_rows_of_the_batches_a_selector_abstained_on_hold_one(tmp_path):
    """They kept what the column held before (False at first): the history, the fraction
    selected and label-issues' exclusions said that samples which had trained in full
    (abstention counts every sample) had been left out."""
    import kdcore
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    SelectSometimes.abstained = {}
    recipe = recipe_from_dict(tiny_recipe(
        stage("a", 2, ["student"], component("select_sometimes", "sel"), component("ce")),
        models={"student": {"arch": "mlp"}}))
    run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[SelectUntilPlugin()]))
    with History(tmp_path / "run") as h:
        mask = h.column("select/sel")
        fraction = h.metric("select/sel/fraction")
    excluded = np.zeros(mask.shape[1], dtype=int)
    for epoch in (0, 1):
        truth = np.arange(mask.shape[1]) % 2 == 0  # the ledger row is the sample's index
        truth[torch.cat(SelectSometimes.abstained[epoch]).numpy()] = True
        assert 0 < (~truth).sum() < truth.sum()  # both kinds of batch in the epoch
        np.testing.assert_array_equal(mask[epoch], truth)
        assert fraction[epoch] == pytest.approx(truth.mean())
        excluded += ~truth
    issues = kdcore.label_issues(tmp_path / "run")
    np.testing.assert_array_equal(issues.times_excluded, excluded[np.asarray(issues.index)])


def test_the_rows_of_the_batches_a_term_or_model_was_not_computed_on_are_nan(tmp_path):
    """They kept the last epoch's loss and logits, or 0 in the first epoch: the history said
    a sample had a loss of 0 where no term had computed one."""
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    TermSometimes.abstained = {}
    recipe = recipe_from_dict(tiny_recipe(
        stage("a", 2, ["student"], component("term_sometimes", "t")),
        stage("b", 1, ["student"], component("term_sometimes", "t"), component("ce")),
        models={"student": {"arch": "mlp"}}))
    run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[SelectUntilPlugin()]))
    with History(tmp_path / "run") as h:
        loss, logits, ce = h.column("loss/t"), h.column("logits/student"), h.column("loss/ce")
    for epoch, key in enumerate([("a", 0), ("a", 1), ("b", 0)]):
        missing = np.zeros(loss.shape[1], dtype=bool)
        missing[torch.cat(TermSometimes.abstained[key]).numpy()] = True
        assert 0 < missing.sum() < len(missing)
        np.testing.assert_array_equal(np.isnan(loss[epoch]), missing)
        assert (loss[epoch][~missing] > 0).all()
        # the model is computed on every batch of stage b (ce), on half of stage a's
        np.testing.assert_array_equal(np.isnan(logits[epoch]).any(1), missing & (epoch < 2))
    assert np.isfinite(ce[2]).all()


class MetricWriter(Component):
    Params = BadParams

    def on_epoch_end(self, ctx, metrics):
        name, value = {"clobber": ("label/acc", 0.123), "tensor": ("mine/v", torch.ones(2)),
                       "ok": ("mine/v", torch.tensor(2.5))}[self.params.mode]
        metrics[name] = value

    def transfer(self, ctx, batch):
        return None


@pytest.mark.parametrize(("mode", "message"), [
    ("clobber", "metric 'label/acc' is already this epoch's; a component adds its own under a "
                "new name, it does not replace one"),
    ("tensor", "metric 'mine/v' is a tensor of shape (2,); a metric is one number"),
])
def test_on_epoch_end_adds_metrics_and_replaces_none(tmp_path, mode, message):
    """A component had overwritten the engine's label/acc (0.8 became 0.123 in the history),
    and a two-element tensor was stored as its first element."""
    from kdcore.failures import RunFailed

    with pytest.raises(RunFailed, match=re.escape(message)):
        _run_one_stage(tmp_path / "run", "metric_writer", "mw", mode=mode)
    _run_one_stage(tmp_path / "ok", "metric_writer", "mw", mode="ok")
    with History(tmp_path / "ok") as h:
        assert h.metric("mine/v").tolist() == [2.5]
