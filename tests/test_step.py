"""The batch step's combination rules, without a run: fake components, a fake context."""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch

from kdcore.component import Batch, Component, ComponentSpec
from kdcore.context import ModelOutput
from kdcore.errors import KdcoreError
from kdcore.failures import RunFailed
from kdcore.step import StepResult, combine, take_backward, without_gradient
from tests.cli_helpers import logged


class Fn(Component):
    """A component whose hooks are plain functions of the batch (``weigh`` for ``weight``,
    whose name the recipe's term factor takes)."""

    def __init__(self, name, models=("s",), terms=(), weight=1.0, **hooks):
        super().__init__(None, ComponentSpec(name, name, tuple(models), tuple(terms), weight))
        self.fns = hooks

    def refine(self, ctx, batch, targets):
        return self.fns["refine"](batch, targets)

    def select(self, ctx, batch):
        return self.fns["select"](batch)

    def weight(self, ctx, batch):
        return self.fns["weigh"](batch)

    def transfer(self, ctx, batch):
        return self.fns["transfer"](batch)


def batch4():
    def forward(role, x):
        return ModelOutput(x, x)

    return Batch(torch.arange(4), torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]),
                 forward=forward, num_classes=3, targets=torch.eye(3)[[0, 1, 2, 0]])


def test_refinements_chain_in_recipe_order_and_are_recorded_first():
    seen = []
    double = Fn("double", refine=lambda b, t: t * 2)
    plus = Fn("plus", refine=lambda b, t: t + 1)
    keep = Fn("keep", select=lambda b: b.targets[:, 0] > 2)  # sees the final targets
    result = combine(batch4(), refiners=[double, plus], selectors=[keep], weighters=[],
                     transfers=[], context=lambda c: None,
                     record=lambda p, kind: seen.append((p.column, p.producer, kind)))
    targets, producer = result.targets
    assert producer == "plus"
    assert torch.equal(targets, torch.eye(3)[[0, 1, 2, 0]] * 2 + 1)  # (t * 2) + 1, not (t + 1) * 2
    assert seen == [("target", "plus", "target"), ("select/keep", "keep", "mask")]
    assert result.masks[0].values.tolist() == [True, False, False, True]


def test_masks_and_weights_multiply_per_term_and_terms_add_with_their_weight():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    a = Fn("a", select=lambda b: torch.tensor([True, True, False, True]))
    only_kd = Fn("only_kd", terms=("kd",), select=lambda b: torch.tensor([1.0, 0.0, 1.0, 1.0]))
    w = Fn("w", weigh=lambda b: torch.tensor([0.5, 1.0, 1.0, 2.0]))
    ce = Fn("ce", transfer=lambda b: loss)
    kd = Fn("kd", weight=0.25, transfer=lambda b: loss * 10)
    r = combine(batch4(), refiners=[], selectors=[a, only_kd], weighters=[w],
                transfers=[ce, kd], context=lambda c: None)
    ce_term = (0.5 * 1 + 1 * 2 + 2 * 4) / 3           # mask a, weight w
    kd_term = (0.5 * 10 + 2 * 40) / 2                  # masks a * only_kd, weight w
    assert r.terms["s"]["ce"].item() == pytest.approx(ce_term)
    assert r.terms["s"]["kd"].item() == pytest.approx(kd_term)
    assert r.losses["s"].item() == pytest.approx(ce_term + 0.25 * kd_term)
    assert [p.column for p in r.losses_per_sample] == ["loss/ce", "loss/kd"]


def test_per_role_results_reach_their_own_role_and_column():
    sel = Fn("sel", models=("p", "q"),
             select=lambda b: {"p": torch.tensor([True, False, True, True]),
                               "q": torch.tensor([False, True, True, True])})
    mutual = Fn("mutual", models=("p", "q"),
                transfer=lambda b: {"p": torch.ones(4), "q": torch.arange(4.0)})
    r = combine(batch4(), refiners=[], selectors=[sel], weighters=[], transfers=[mutual],
                context=lambda c: None)
    assert [m.column for m in r.masks] == ["select/sel/p", "select/sel/q"]
    assert r.losses["p"].item() == pytest.approx(1.0)
    assert r.losses["q"].item() == pytest.approx((1 + 2 + 3) / 3)
    assert [p.column for p in r.losses_per_sample] == ["loss/mutual/p", "loss/mutual/q"]


def test_a_terms_record_is_per_model_where_the_plan_says_so_else_where_it_serves_several():
    one = Fn("one", models=("p",), transfer=lambda b: torch.ones(4))
    two = Fn("two", models=("p", "q"), transfer=lambda b: torch.ones(4))
    learner = Fn("learner", models=("p", "q"), transfer=lambda b: {"q": torch.ones(4)})

    def columns(**kw):
        r = combine(batch4(), refiners=[], selectors=[], weighters=[],
                    transfers=[one, two, learner], context=lambda c: None, **kw)
        return [p.column for p in r.losses_per_sample]

    # without the plan's word: by what the batch's term was given for
    assert columns() == ["loss/one", "loss/two/p", "loss/two/q", "loss/learner"]
    # the plan's: one form per label for the whole run, whatever a batch returned
    assert columns(per_model_losses={"one", "learner"}) == [
        "loss/one/p", "loss/two", "loss/two", "loss/learner/q"]
    assert columns(per_model_losses=frozenset()) == [
        "loss/one", "loss/two", "loss/two", "loss/learner"]


def test_an_all_false_mask_gives_zero_not_nan_and_abstaining_hooks_change_nothing():
    none = Fn("none", select=lambda b: torch.zeros(4, dtype=torch.bool))
    quiet = Fn("quiet", weigh=lambda b: None)
    ce = Fn("ce", transfer=lambda b: torch.ones(4))
    r = combine(batch4(), refiners=[], selectors=[none], weighters=[quiet], transfers=[ce],
                context=lambda c: None)
    assert r.losses["s"].item() == 0.0 and r.weights == []


def test_role_epoch_counts_the_roles_training_over_stages():
    from kdcore.recipe import Recipe, StageConfig
    from kdcore.runstate import Run

    stages = [StageConfig("t", 3, ["teacher"]), StageConfig("warm", 2, ["student"]),
              StageConfig("frozen", 1, ["teacher"]), StageConfig("late", 4, ["student"])]
    run = Run(Recipe(stages=stages), None, torch.device("cpu"), [])
    run.models.update(teacher=torch.nn.Linear(1, 1), student=torch.nn.Linear(1, 1))
    run.stage, run.stage_index, run.epoch = stages[3], 3, 1
    assert run.role_epoch("student") == 2 + 1  # warm-up's two epochs, then this one
    assert run.role_epoch("teacher") == 3 + 1  # it does not train here: its epochs so far


def test_time_left_counts_the_stage_at_its_pace_and_later_stages_at_the_mean():
    from kdcore.epoch_line import time_left

    # stage 0 (2 epochs) took 10 s each, stage 1 has run 1 of 4 epochs at 30 s; stage 2 has 5
    seen = {0: [10.0, 10.0], 1: [30.0]}
    mean = (10 + 10 + 30) / 3
    expected = 3 * 30 + 5 * mean  # 173.3 s
    assert time_left([2, 4, 5], 1, 0, seen) == f"~{int(expected // 60)}m{round(expected) % 60:02d}s"
    assert time_left([2, 4, 5], 2, 4, seen) == "~0s"  # the last epoch of the run
    assert time_left([2], 0, 0, {}) == "?"
    assert time_left([400], 0, 0, {0: [60.0]}) == "~6h39m"
    # the stage's own mean over its epochs so far: 1 more at 15 s, then 2 at the mean, 15 s
    assert time_left([3, 2], 0, 1, {0: [10.0, 20.0]}) == "~45s"


@pytest.mark.parametrize(("seconds", "shown"), [
    (59.4, "~59s"), (60.0, "~1m00s"), (3599.0, "~59m59s"), (3600.0, "~1h00m"),
    (3661.0, "~1h01m")])
def test_time_left_is_seconds_under_a_minute_then_minutes_then_hours(seconds, shown):
    from kdcore.epoch_line import time_left

    assert time_left([2], 0, 0, {0: [seconds]}) == shown  # one epoch left at that pace



def test_the_epoch_line_names_each_trained_models_loss_each_evaluated_models_accuracies():
    from kdcore.epoch_line import epoch_line
    from kdcore.recipe import Recipe, StageConfig

    stages = [StageConfig("teacher", 2, ["teacher"]),
              StageConfig("kd", 3, ["student"], eval=["teacher", "student"])]
    metrics = {"train/student/loss": 0.123456, "val/teacher/acc": 0.5, "test/teacher/acc": 0.25,
               "val/student/acc": 0.75, "test/student/acc": 0.875, "label/acc": 0.6,
               "time/epoch": 12.34}
    line = epoch_line(Recipe(stages=stages), 1, 0, metrics, {0: [10.0, 10.0], 1: [12.34]})
    left = 2 * 12.34 + 0 * (10 + 10 + 12.34) / 3  # this stage's two more epochs
    assert line == ("kd 1/3 | student loss 0.1235 | teacher val 0.5000 test 0.2500 | student "
                    "val 0.7500 test 0.8750 | labels 0.6000 | 12.3s, run 3/5 epochs, "
                    f"~{left:.0f}s left")
    # the run's epochs so far count every epoch of the stages before and this one
    assert "12.3s, run 5/5 epochs, ? left" in epoch_line(Recipe(stages=stages), 1, 2, metrics,
                                                          {})
    # a trained model without its loss this epoch (a frozen stage's) is left out
    del metrics["train/student/loss"]
    assert " | student loss" not in epoch_line(Recipe(stages=stages), 1, 0, metrics, {})

class Ctx:
    """A stand-in context: which component it was made for."""

    def __init__(self, comp):
        self.comp = comp


def test_every_hook_gets_its_own_components_context_and_the_batch():
    got = []

    def note(kind, value):
        def hook(batch, *rest):
            got.append((kind, batch.index.shape[0]))
            return value(batch) if callable(value) else (rest[0] if rest else value)
        return hook

    comps = [Fn("r", refine=note("refine", None)),
             Fn("s", select=note("select", lambda b: b.index >= 0)),
             Fn("w", weigh=note("weight", lambda b: torch.ones(len(b)))),
             Fn("t", transfer=note("transfer", lambda b: b.x.sum(1)))]
    seen = {}
    for c in comps:  # record the ctx each hook receives
        for name in ("refine", "select", "weight", "transfer"):
            original = getattr(c, name)

            def wrapped(ctx, batch, *rest, _o=original, _c=c):
                seen[_c.name] = ctx
                return _o(ctx, batch, *rest)
            setattr(c, name, wrapped)
    combine(batch4(), refiners=comps[:1], selectors=comps[1:2], weighters=comps[2:3],
            transfers=comps[3:], context=Ctx)
    assert {name: ctx.comp.name for name, ctx in seen.items()} == {n: n for n in "rswt"}
    assert got == [("refine", 4), ("select", 4), ("weight", 4), ("transfer", 4)]


def test_the_last_of_three_refiners_names_the_targets():
    seen = []
    refiners = [Fn(n, refine=lambda b, t: t + 1) for n in ("a", "b", "c")]
    r = combine(batch4(), refiners=refiners, selectors=[], weighters=[], transfers=[],
                context=lambda c: None,
                record=lambda p, kind: seen.append((p.producer, kind, p.values)))
    expected = torch.eye(3)[[0, 1, 2, 0]] + 3
    assert r.targets[1] == "c" and [(p, k) for p, k, _ in seen] == [("c", "target")]
    assert torch.equal(seen[0][2], expected) and torch.equal(r.targets[0], expected)
    none = combine(batch4(), refiners=[], selectors=[], weighters=[], transfers=[],
                   context=lambda c: None)
    assert none.targets is None and none.losses == {} and none.masks == []


def test_weights_multiply_and_a_single_kept_sample_is_its_own_loss():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    one = Fn("one", select=lambda b: torch.tensor([False, False, True, False]))
    w1 = Fn("w1", weigh=lambda b: torch.full((len(b),), 2.0))
    w2 = Fn("w2", weigh=lambda b: torch.tensor([1.0, 1.0, 0.25, 1.0]))
    ce = Fn("ce", transfer=lambda b: loss)
    recorded = []
    r = combine(batch4(), refiners=[], selectors=[one], weighters=[w1, w2], transfers=[ce],
                context=lambda c: None,
                record=lambda p, kind: recorded.append((p.column, p.producer, kind)))
    assert r.losses["s"].item() == pytest.approx(3.0 * 2.0 * 0.25)  # / one kept sample
    assert recorded == [("select/one", "one", "mask"), ("weight/w1", "w1", "weight"),
                        ("weight/w2", "w2", "weight")]
    (p,) = r.losses_per_sample
    assert (p.column, p.producer) == ("loss/ce", "ce") and torch.equal(p.values, loss)


def test_abstaining_hooks_do_not_stop_the_ones_after_them():
    quiet_sel = Fn("quiet", select=lambda b: None)
    keep2 = Fn("keep2", select=lambda b: torch.tensor([True, True, False, False]))
    silent = Fn("silent", transfer=lambda b: None)
    ce = Fn("ce", transfer=lambda b: torch.tensor([1.0, 3.0, 5.0, 7.0]))
    r = combine(batch4(), refiners=[], selectors=[quiet_sel, keep2], weighters=[],
                transfers=[silent, ce], context=lambda c: None)
    assert r.losses["s"].item() == pytest.approx(2.0)  # keep2 applied, ce counted
    assert [m.column for m in r.masks] == ["select/keep2"]


def test_an_abstaining_hook_is_reported_for_each_column_it_could_have_written():
    """A selector or weighter that returns None abstains on every column it could write (its
    shared one and one per model); a mapping abstains on the models it leaves out. Nothing is
    reported for a hook that returns a value for every model."""
    roles = ("p", "q")
    quiet = Fn("quiet", models=roles, select=lambda b: None)
    only_p = Fn("only_p", models=roles, select=lambda b: {"p": torch.ones(4)})
    full = Fn("full", models=roles, weigh=lambda b: {r: torch.ones(4) for r in roles})
    shared = Fn("shared", models=roles, weigh=lambda b: torch.ones(4))
    off = Fn("off", models=("q",), weigh=lambda b: None)
    mutual = Fn("mutual", models=roles, transfer=lambda b: {r: torch.ones(4) for r in roles})
    said = []
    combine(batch4(), refiners=[], selectors=[quiet, only_p], weighters=[full, shared, off],
            transfers=[mutual], context=lambda c: None,
            abstain=lambda column, producer: said.append((column, producer)))
    assert said == [("select/quiet", "quiet"), ("select/quiet/p", "quiet"),
                    ("select/quiet/q", "quiet"), ("select/only_p/q", "only_p"),
                    ("weight/off", "off"), ("weight/off/q", "off")]


@pytest.mark.parametrize(("declared", "returns", "message"), [
    (False, "mapping", "component 'm' (m) select returned one value per model, but its class "
                       "declares per_model_results = False"),
    (True, "tensor", "component 'm' (m) select returned one value, but its class declares "
                     "per_model_results = True"),
    (True, "mapping", None), (False, "tensor", None), (None, "mapping", None),
    (None, "tensor", None),
])
def test_a_hook_returns_the_form_its_class_declares(declared, returns, message):
    # the plan checked the column's readers against the declared form
    roles = ("p", "q")
    value = {r: torch.ones(4) for r in roles} if returns == "mapping" else torch.ones(4)
    comp = Fn("m", models=roles, select=lambda b: value)
    comp.per_model_results = declared
    call = functools.partial(combine, batch4(), refiners=[], selectors=[comp], weighters=[],
                             transfers=[], context=lambda c: None)
    if message is None:
        call()
    else:
        with pytest.raises(RunFailed) as info:
            call()
        assert str(info.value) == message


def test_a_shared_mask_applies_to_every_served_model_and_is_recorded_once():
    roles = ("p", "q", "o")
    both = Fn("both", models=roles, select=lambda b: torch.tensor([True, False, False, True]))
    mutual = Fn("mutual", models=roles,
                transfer=lambda b: {r: torch.tensor([1.0, 2.0, 4.0, 8.0]) * (i + 1)
                                    for i, r in enumerate(roles)})
    recorded = []
    r = combine(batch4(), refiners=[], selectors=[both], weighters=[], transfers=[mutual],
                context=lambda c: None, record=lambda p, kind: recorded.append(p.column))
    # samples 0 and 3 only: (1 + 8) / 2 per unit (the whole batch would give 15 / 4)
    assert [r.losses[x].item() for x in roles] == pytest.approx([4.5, 9.0, 13.5])
    assert recorded == ["select/both"]


def _ledger(**columns):
    from kdcore.ledger import Ledger

    ledger = Ledger(2)
    for name, values in columns.items():
        ledger.add(name.replace("__", "/"), torch.tensor(values), producer="x")
    return ledger


def test_check_outputs_takes_masks_at_0_and_1_weights_at_0_and_distributions():
    from kdcore.step import check_outputs

    sel, wei, ref = Fn("sel"), Fn("wei"), Fn("ref")
    check_outputs(_ledger(select__sel=[0.0, 1.0], weight__wei=[0.0, 7.0],
                          target=[[1.0, 0.0], [0.25, 0.75]]), [ref], [sel], [wei])
    check_outputs(_ledger(select__sel=[0, 1], weight__wei=[0, 3]), [ref], [sel], [wei])
    check_outputs(_ledger(select__sel=[True, False], weight__wei=[True, True]), [ref], [sel],
                  [wei])
    # targets a refiner did not make (none in the stage) are not the stage's to check
    check_outputs(_ledger(target=[[3.0, 0.0], [0.0, 0.0]]), [], [sel], [wei])


@pytest.mark.parametrize(("columns", "message"), [
    ({"select__sel": [0.5, 1.5]}, "component 'sel' (sel) select returned values outside "
                                  "[0, 1] (from 0.5 to 1.5); a select must lie there"),
    ({"select__sel__s": [-0.5, 1.0]}, "component 'sel' (sel) select returned values outside "
                                      "[0, 1] (from -0.5 to 1); a select must lie there"),
    ({"weight__wei": [-1.0, 2.0]}, "component 'wei' (wei) weight returned values outside "
                                   "[0, inf) (from -1 to 2); a weight must lie there"),
    # integers are checked as floats are; an infinite weight is outside too
    ({"weight__wei": [-1, 2]}, "component 'wei' (wei) weight returned values outside "
                               "[0, inf) (from -1 to 2); a weight must lie there"),
    ({"select__sel": [0, 2]}, "component 'sel' (sel) select returned values outside "
                              "[0, 1] (from 0 to 2); a select must lie there"),
    ({"weight__wei": [1.0, math.inf]}, "component 'wei' (wei) weight returned values outside "
                                       "[0, inf) (from 1 to inf); a weight must lie there"),
    ({"target": [[1.5, -0.5], [0.0, 1.0]]},  # rows sum to 1: the negative entry alone
     "component 'ref' (ref) refine made targets that are not distributions (entries from "
     "-0.5, rows summing to 1 .. 1); each row must be non-negative and sum to 1"),
    ({"target": [[1.0, 0.5], [0.0, 1.0]]}, "(entries from 0, rows summing to 1 .. 1.5)"),
    # NaN fails both bounds; the message names it rather than "from nan to nan"
    ({"select__sel": [1.0, math.nan]}, "component 'sel' (sel) select returned NaN; a select "
                                       "must lie in [0, 1]"),
    ({"weight__wei__s": [math.nan, 2.0]}, "component 'wei' (wei) weight returned NaN; a weight "
                                          "must lie in [0, inf)"),
    ({"target": [[math.nan, 0.5], [0.0, 1.0]]}, "component 'ref' (ref) refine made targets "
                                                "that hold NaN; each row must be non-negative "
                                                "and sum to 1"),
])
def test_check_outputs_refuses_what_breaks_the_contract(columns, message):
    from kdcore.failures import RunFailed
    from kdcore.step import check_outputs

    with pytest.raises(RunFailed, match=re.escape(message) + "$" if "component" in message
                       else re.escape(message)):
        check_outputs(_ledger(**columns), [Fn("ref")], [Fn("sel")], [Fn("wei")])


def test_hook_columns_are_the_select_and_weight_hooks_columns_shared_and_per_role():
    from kdcore.step import hook_columns

    sel, wei = Fn("sel", models=("a", "b")), Fn("wei")
    assert hook_columns([sel], [wei]) == {"select/sel", "select/sel/a", "select/sel/b",
                                          "weight/wei", "weight/wei/s"}
    assert hook_columns([], [sel]) == {"weight/sel", "weight/sel/a", "weight/sel/b"}
    assert hook_columns([], []) == frozenset()


def test_a_value_for_a_model_not_served_names_the_ones_served():
    from kdcore.failures import RunFailed

    sel = Fn("sel", models=("a", "b"), select=lambda b: {"c": torch.ones(len(b))})
    with pytest.raises(RunFailed, match=re.escape(
            "component 'sel' (sel) select returned a value for model 'c', which it does not "
            "serve (it serves a, b)") + "$"):
        combine(batch4(), refiners=[], selectors=[sel], weighters=[], transfers=[],
                context=lambda c: None)


@pytest.mark.parametrize(("hook", "value", "said"), [
    ("select", torch.ones(4, 1), "a tensor of shape (4, 1); expected one value per sample, "
                                 "shape (4,)"),
    ("weigh", [1.0] * 4, "a list; expected one value per sample, shape (4,)"),
    ("refine", torch.ones(4, 2), "a tensor of shape (4, 2); expected targets of shape (4, 3)"),
    ("refine", [[1.0, 0.0, 0.0]] * 4, "a list; expected targets of shape (4, 3)"),
], ids=["select-shape", "weight-list", "refine-shape", "refine-list"])
def test_a_mask_weight_or_target_of_the_wrong_shape_or_type_is_refused_naming_it(
        hook, value, said):
    from kdcore.failures import RunFailed

    kinds = {"select": "selectors", "weigh": "weighters", "refine": "refiners"}
    lists = {"refiners": [], "selectors": [], "weighters": [], "transfers": []}
    lists[kinds[hook]] = [Fn("c", **{hook: (lambda b, *_: value)})]
    with pytest.raises(RunFailed) as err:
        combine(batch4(), context=lambda c: None, **lists)
    name = "weight" if hook == "weigh" else hook
    assert str(err.value) == f"component 'c' (c) {name} returned {said}"


@pytest.mark.parametrize(("hook", "value", "said"), [
    ("select", torch.ones(4, dtype=torch.complex64),
     "complex numbers (torch.complex64); expected real ones"),
    ("weigh", torch.ones(4, dtype=torch.complex128),
     "complex numbers (torch.complex128); expected real ones"),
    ("select", torch.ones(4, device="meta"),
     "a tensor on device 'meta'; expected it on the run's device 'cpu'"),
    ("weigh", torch.ones(4, device="meta"),
     "a tensor on device 'meta'; expected it on the run's device 'cpu'"),
    ("refine", torch.ones(4, 3, dtype=torch.complex64),
     "complex numbers (torch.complex64); expected real ones"),
    ("refine", torch.ones(4, 3, device="meta"),
     "a tensor on device 'meta'; expected it on the run's device 'cpu'"),
], ids=["select-complex", "weight-complex", "select-meta", "weight-meta", "refine-complex",
        "refine-meta"])
def test_a_mask_weight_or_target_of_no_real_number_or_on_another_device_is_refused(
        hook, value, said):
    """A complex mask was a ValueError traceback from the ledger, and a meta one (or refined
    targets on it) torch's 'Cannot copy out of meta tensor'; per role alike."""
    from kdcore.failures import RunFailed

    kinds = {"select": "selectors", "weigh": "weighters", "refine": "refiners"}
    for per_role in (False, True):
        if hook == "refine" and per_role:
            continue
        returned = {"s": value} if per_role else value
        comp = Fn("c", **{hook: (lambda b, *_, v=returned: v)})
        lists = {"refiners": [], "selectors": [], "weighters": [], "transfers": []}
        lists[kinds[hook]] = [comp]
        with pytest.raises(RunFailed) as err:
            combine(batch4(), context=lambda c: None, **lists)
        name = "weight" if hook == "weigh" else hook
        assert str(err.value) == f"component 'c' (c) {name} returned {said}"
    right = torch.ones(4, 3) / 3 if hook == "refine" else torch.ones(4)  # the same, real: fine
    comp = Fn("c", **{hook: (lambda b, *_, v=right: v)})
    lists = {"refiners": [], "selectors": [], "weighters": [], "transfers": []}
    lists[kinds[hook]] = [comp]
    combine(batch4(), context=lambda c: None, **lists)


@pytest.mark.parametrize(("term", "described"), [
    (torch.ones(4, 2), "a tensor of shape (4, 2)"),
    (torch.ones(3), "a tensor of shape (3,)"),
    (torch.ones(1, 1), "a tensor of shape (1, 1)"),
    ("loss", "a str"),
    ([1.0, 1.0, 1.0, 1.0], "a list"),
])
def test_a_transfer_term_that_is_no_loss_of_the_batch_is_refused_naming_it(term, described):
    """A (4, 2) term was averaged over its second axis too (or failed against a mask), a
    string was an AttributeError traceback."""
    from kdcore.failures import RunFailed

    for terms in (term, {"s": term}):
        kd = Fn("kd", transfer=lambda b, terms=terms: terms)
        with pytest.raises(RunFailed) as err:
            combine(batch4(), refiners=[], selectors=[], weighters=[], transfers=[kd],
                    context=lambda c: None)
        assert str(err.value) == (f"component 'kd' (kd) transfer returned {described}; "
                                  "expected a loss: a scalar, or one value per sample, "
                                  "shape (4,)")


@pytest.mark.parametrize("term", [
    torch.ones(4, dtype=torch.long), torch.tensor(1), torch.ones(4, dtype=torch.bool),
    torch.ones(4, dtype=torch.complex64)], ids=lambda t: f"{t.dtype}{tuple(t.shape)}")
def test_a_transfer_term_that_is_no_floating_point_loss_is_refused_naming_its_dtype(term):
    """An integer or boolean term was autograd's 'mean(): could not infer output dtype', a
    complex one its 'grad can be implicitly created only for real scalar outputs', both
    blamed on no component."""
    from kdcore.failures import RunFailed

    for terms in (term, {"s": term}):
        kd = Fn("kd", transfer=lambda b, terms=terms: terms)
        with pytest.raises(RunFailed) as err:
            combine(batch4(), refiners=[], selectors=[], weighters=[], transfers=[kd],
                    context=lambda c: None)
        assert str(err.value) == (
            f"component 'kd' (kd) transfer returned a loss of dtype {term.dtype}; expected "
            "floating point (a mean and a backward pass of integers, booleans or complex "
            "numbers are not defined)")


@pytest.mark.parametrize("shape", [(), (4,)])
def test_a_transfer_term_on_another_device_than_the_runs_is_refused_naming_both(shape):
    """A meta-device term was a traceback ('Cannot copy out of meta tensor') when the engine
    read it; one on another real device fails in the sum or the backward pass."""
    from kdcore.failures import RunFailed

    term = torch.ones(shape, device="meta")
    for terms in (term, {"s": term}):
        kd = Fn("kd", transfer=lambda b, terms=terms: terms)
        with pytest.raises(RunFailed) as err:
            combine(batch4(), refiners=[], selectors=[], weighters=[], transfers=[kd],
                    context=lambda c: None)
        assert str(err.value) == ("component 'kd' (kd) transfer returned a tensor on device "
                                  "'meta'; expected it on the run's device 'cpu'")


def test_a_transfer_term_may_be_a_scalar_or_one_value_per_sample():
    for term, expected in ((torch.tensor(2.5), 2.5), (torch.tensor([1.0, 2.0, 3.0, 6.0]), 3.0),
                           (torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float16), 3.0)):
        kd = Fn("kd", transfer=lambda b, term=term: term)
        result = combine(batch4(), refiners=[], selectors=[], weighters=[], transfers=[kd],
                         context=lambda c: None)
        assert float(result.losses["s"]) == expected


def test_a_transfer_term_for_a_model_not_served_names_the_ones_served():
    from kdcore.failures import RunFailed
    from kdcore.terms import PerSampleLoss

    for term in (torch.ones(4), PerSampleLoss.__new__(PerSampleLoss)):
        kd = Fn("kd", models=("a",), transfer=lambda b, term=term: {"a": torch.ones(4),
                                                                    "t": term})
        with pytest.raises(RunFailed) as err:
            combine(batch4(), refiners=[], selectors=[], weighters=[], transfers=[kd],
                    context=lambda c: None)
        assert str(err.value) == ("component 'kd' (kd) transfer returned a value for model "
                                  "'t', which it does not serve (it serves a)")


def _result(**losses):
    out = StepResult()
    for role, (value, terms) in losses.items():
        out.losses[role] = value
        out.terms[role] = {t: value.detach() for t in terms}
    return out


def test_a_loss_without_gradient_stops_the_run_only_when_nothing_can_learn():
    """A stage whose only term was computed from detached tensors (relational_kd with
    detach_student) stopped with torch's "element 0 of tensors does not require grad"; beside
    a model that learned, the other trained on weight decay alone, silently."""

    learning = torch.ones((), requires_grad=True) * 2
    frozen = torch.tensor(1.0)
    with pytest.raises(KdcoreError) as err:
        without_gradient("student", _result(student=(frozen, ["rel", "kd"])), ["student"], set())
    assert str(err.value) == (
        "model 'student' got a loss without gradient (its terms: rel, kd; each was computed "
        "from detached tensors), so it cannot learn; give it a term with a gradient (ce, say)")
    both = _result(student=(frozen, ["rel"]), peer=(frozen, ["rel"]))
    with pytest.raises(KdcoreError, match=r"\(its terms: rel; each was computed from detached "
                                          r"tensors\), as did every model the stage trains, so "
                                          r"none can learn; give them a term"):
        without_gradient("peer", both, ["student", "peer"], set())
    with logged("WARNING") as lines:
        warned: set[str] = set()
        one = _result(student=(frozen, ["rel"]), peer=(learning, ["ce"]))
        for _ in range(3):
            without_gradient("student", one, ["student", "peer"], warned)
    assert lines == ["model 'student' got a loss without gradient (its terms: rel; each was "
                     "computed from detached tensors): it learns nothing from such a batch "
                     "(said once)"]
    assert warned == {"student"}


class Taker(Component):
    """Takes the backward pass of the roles in ``takes``, declaring those in ``declares``."""

    def __init__(self, name, takes=(), declares=()):
        super().__init__(None, ComponentSpec(name, "taker", ("s", "t"), (), 1.0))
        self.takes, self.declares, self.offered, self.batches = takes, declares, [], []

    def backward(self, ctx, batch, role, loss):
        self.offered.append((ctx, role, float(loss)))
        self.batches.append(batch)
        return role in self.takes

    def backward_roles(self):
        return self.declares


def test_the_first_component_that_takes_a_backward_pass_wins_and_must_have_declared_it():
    none, first = Taker("none"), Taker("a", ("s",), ("s",))
    second = Taker("b", ("s", "t"), ("s", "t"))
    takers = [none, first, second]
    loss, batch = torch.tensor(2.5), batch4()
    assert take_backward(takers, lambda c: f"ctx-{c.name}", batch, "s", loss) is True
    assert none.offered == [("ctx-none", "s", 2.5)] and first.offered == [("ctx-a", "s", 2.5)]
    assert none.batches == first.batches == [batch]
    assert second.offered == []  # the first taker in recipe order wins: the rest are not asked
    assert take_backward(takers, lambda c: None, batch4(), "t", loss) is True
    assert [r for _, r, _ in second.offered] == ["t"]
    assert take_backward([none], lambda c: None, batch4(), "s", loss) is False
    assert take_backward([], lambda c: None, batch4(), "s", loss) is False
    for declares, named in (((), "none"), (("t", "u"), "t, u")):
        with pytest.raises(KdcoreError) as err:
            take_backward([Taker("c", ("s",), declares)], lambda c: None, batch4(), "s", loss)
        assert str(err.value) == (
            f"component 'c' (taker) took over the backward pass of 's', which its "
            f"backward_roles() does not name ({named}); a component that takes over a backward "
            "pass declares the roles it takes (docs/plugins.md)")


class Says(Component):
    """Answers the backward offer with ``said``."""

    def __init__(self, said):
        super().__init__(None, ComponentSpec("c", "says", ("s",), (), 1.0))
        self.said = said

    def backward(self, ctx, batch, role, loss):
        return self.said

    def backward_roles(self):
        return ("s",)


@pytest.mark.parametrize(("said", "described"), [
    ("no", "a str"), (["s"], "a list"), ({"s": True}, "a dict"),
    (torch.ones(2, dtype=torch.bool), "a tensor of shape (2,)"),
    (torch.tensor(1.0), "a tensor of shape ()")])
def test_a_backward_answer_that_is_not_true_or_false_is_refused(said, described):
    """"no" was true: the engine left the model's backward pass to a component that had not
    run it, and the model never trained; a two-element tensor was a traceback."""
    from kdcore.failures import RunFailed

    with pytest.raises(RunFailed) as err:
        take_backward([Says(said)], lambda c: None, batch4(), "s", torch.tensor(1.0))
    assert str(err.value) == (f"component 'c' (says) backward returned {described}; expected "
                              "True (it ran the backward pass of 's' itself) or False")


@pytest.mark.parametrize(("said", "taken"), [
    (True, True), (False, False), (None, False), (torch.tensor(True), True),
    (torch.tensor([False]), False)])
def test_a_backward_answer_may_be_a_bool_none_or_a_one_element_bool_tensor(said, taken):
    assert take_backward([Says(said)], lambda c: None, batch4(), "s", torch.tensor(1.0)) is taken
