"""The training loop (kdcore.loop.Trainer): what a run calls in which order and with what, the
learning rate over stages, the epoch's train metrics, and what a backward hook takes over.

Each expectation is written from the contract in kdcore/hookspecs.py and docs/recipes.md, not
from what the loop printed."""

from __future__ import annotations

import math
import re

import attrs
import numpy as np
import pytest
import torch

from kdcore import Component, History, hookimpl
from kdcore.recipe import recipe_from_dict
from kdcore.runstate import component_seed
from kdcore.testing import component, run_tiny, stage, tiny_recipe
from tests.cli_helpers import logged

EVENTS: list[tuple] = []


@attrs.frozen
class RecorderParams:
    take_backward: bool = False
    declare_backward: bool = True


class Recorder(Component):
    """Takes part in every hook and changes nothing (its select abstains; its backward declines
    unless ``take_backward``, then does exactly what the engine would): a run with it trains
    as a run without it."""

    Params = RecorderParams
    writes = ("rec/{name}/seen",)

    def _log(self, hook, ctx, *extra):
        EVENTS.append((self.name, hook, ctx.stage.name, ctx.epoch, *extra))
        self.contexts.add(id(ctx))

    def setup(self, ctx):
        self.contexts = set()
        self.stage_name = ctx.stage.name  # what it carries to the next stage's namesake
        # a draw under the seed setup runs with (its stage's and its label's)
        self._log("setup", ctx, ctx.stage_step, ctx.steps_per_epoch, float(torch.rand(())))

    def on_stage_start(self, ctx):
        self._log("on_stage_start", ctx, ctx.stage_step, ctx.steps_per_epoch,
                  float(torch.rand((), generator=ctx.generator)))
        ctx.ledger.add(f"rec/{self.name}/seen", torch.zeros(ctx.ledger.size))

    def on_epoch_start(self, ctx):
        self._log("on_epoch_start", ctx, {r: ctx.lr(r) for r in ctx.stage.train})

    def select(self, ctx, batch):
        self._log("select", ctx, ctx.step, ctx.stage_step, ctx.steps_per_epoch, len(batch))
        return None

    def backward_roles(self):
        take = self.params.take_backward and self.params.declare_backward
        return tuple(self.models) if take else ()

    def backward(self, ctx, batch, role, loss):
        self._log("backward", ctx, role, ctx.model_version(role), len(batch))
        if self.params.take_backward:
            loss.backward()
            return True
        return False

    def after_step(self, ctx, batch):
        self._log("after_step", ctx, ctx.step, ctx.stage_step,
                  {r: ctx.model_version(r) for r in ctx.stage.train}, len(batch))

    def on_epoch_end(self, ctx, metrics):
        self._log("on_epoch_end", ctx, "val/" in "".join(metrics))

    def on_stage_end(self, ctx):
        self._log("on_stage_end", ctx, len(self.contexts))

    def state_dict(self):
        return {"stage": self.stage_name}

    def load_state_dict(self, state):
        EVENTS.append((self.name, "load_state_dict", state["stage"]))


class Watcher:
    """An observer plugin: every observer hook, with what it is handed."""

    @hookimpl
    def kdcore_run_start(self, ctx):
        # an observer's context: its own name, and the run's generator to draw from
        EVENTS.append(("obs", "run_start", ctx.name, type(ctx.generator).__name__))
        torch.rand(1, generator=ctx.generator)

    @hookimpl
    def kdcore_stage_start(self, ctx, stage):
        EVENTS.append(("obs", "stage_start", stage.name, ctx.stage.name, ctx.name))

    @hookimpl
    def kdcore_epoch_start(self, ctx, epoch):
        EVENTS.append(("obs", "epoch_start", ctx.stage.name, epoch, ctx.epoch))

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        EVENTS.append(("obs", "batch_end", ctx.stage.name, ctx.epoch, sorted(losses),
                       ctx.step))

    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        EVENTS.append(("obs", "epoch_end", ctx.stage.name, epoch, ctx.epoch,
                       "val/" in "".join(metrics)))

    @hookimpl
    def kdcore_stage_end(self, ctx, stage):
        EVENTS.append(("obs", "stage_end", stage.name, ctx.stage.name))

    @hookimpl
    def kdcore_run_end(self, ctx, summary):
        EVENTS.append(("obs", "run_end", sorted(summary), ctx.name))


class Components:
    """The test components of this module, as one plugin."""

    @hookimpl
    def kdcore_add_components(self):
        return {"recorder": Recorder, "modes": Modes, "undeclared": Undeclared,
                "nan_from": NanFrom, "wrong_rows": WrongRows, "stale_view": StaleView,
                "relabel": Relabel, "grow_from": GrowFrom}


def _two_stage_recipe(schedule=None, **rec_params):
    models = {
        "teacher": {"arch": "mlp", "params": {"hidden": [16]}, "optimizer": {"lr": 0.1},
                    **({"schedule": schedule} if schedule else {})},
        "student": {"arch": "mlp", "params": {"hidden": [8]}, "optimizer": {"lr": 0.05}},
    }
    return tiny_recipe(
        stage("warm", 2, ["teacher"], component("ce"),
              component("recorder", "rec", params=rec_params)),
        stage("main", 1, ["student"], component("ce"),
              component("recorder", "rec", params=rec_params)),
        models=models, train_subset=150, batch_size=64)


def _expected(n_train: int, bs: int) -> list[tuple]:
    """The documented order of one run of :func:`_two_stage_recipe`."""
    per_epoch = math.ceil(n_train / bs)

    def draw(stage_index: int, setup: bool) -> float:  # the component's documented seeds
        seed = component_seed(0, stage_index, "rec")
        if setup:
            return float(torch.rand((), generator=torch.Generator().manual_seed(seed + 1)))
        return float(torch.rand((), generator=torch.Generator().manual_seed(seed)))

    sizes = [min(bs, n_train - k * bs) for k in range(per_epoch)]
    lrs = {"warm": {"teacher": 0.1}, "main": {"student": 0.05}}
    train = {"warm": "teacher", "main": "student"}
    # every stage is set up before any training, and each hands its state to its namesake
    # in the next (a rehearsal of the boundary), then again at its own start
    out: list[tuple] = [("rec", "setup", "warm", 0, 0, per_epoch, draw(0, True)),
                        ("rec", "setup", "main", 0, 0, per_epoch, draw(1, True)),
                        ("rec", "load_state_dict", "warm")]
    # each plugin its own context, by name, with the run's generator
    out.append(("obs", "run_start", "Watcher-1", "Generator"))
    step = 0
    for index, (name, epochs) in enumerate((("warm", 2), ("main", 1))):
        role = train[name]
        out.append(("rec", "setup", name, 0, 0, per_epoch, draw(index, True)))
        if name == "main":
            out.append(("rec", "load_state_dict", "warm"))  # carried from the namesake
        out.append(("rec", "on_stage_start", name, 0, 0, per_epoch, draw(index, False)))
        out.append(("obs", "stage_start", name, name, "Watcher-1"))
        version = 0
        for epoch in range(epochs):
            out.append(("rec", "on_epoch_start", name, epoch, lrs[name]))
            out.append(("obs", "epoch_start", name, epoch, epoch))
            for k, size in enumerate(sizes):
                stage_step = epoch * per_epoch + k
                out.append(("rec", "select", name, epoch, step, stage_step, per_epoch, size))
                out.append(("rec", "backward", name, epoch, role, version, size))
                step, version = step + 1, version + 1
                out.append(("rec", "after_step", name, epoch, step, stage_step + 1,
                            {role: version}, size))
                out.append(("obs", "batch_end", name, epoch, [role], step))
            out.append(("rec", "on_epoch_end", name, epoch, True))
            out.append(("obs", "epoch_end", name, epoch, epoch, True))
        out.append(("rec", "on_stage_end", name, epochs - 1, 1))  # one context all stage long
        out.append(("obs", "stage_end", name, name))
    out.append(("obs", "run_end", ["student", "teacher"], "Watcher-1"))
    return out


def _run(tmp_path, recipe, name="run"):
    EVENTS.clear()
    run_tiny(recipe, tmp_path / name, plugins=[Components(), Watcher()])
    return list(EVENTS)


def test_a_run_calls_every_hook_in_the_documented_order_with_its_own_context(tmp_path):
    events = _run(tmp_path, _two_stage_recipe())
    with History(tmp_path / "run") as h:
        n_train = int(h.column("target").shape[1])
        assert set(h.producers("rec/rec/seen")) == {"rec"}  # the component's writes carry its name
    assert events == _expected(n_train, 64)


def test_a_component_that_takes_over_the_backward_pass_trains_as_the_engine_would(tmp_path):
    engine = _run(tmp_path, _two_stage_recipe(), "engine")
    taken = _run(tmp_path, _two_stage_recipe(take_backward=True), "taken")
    assert taken == engine  # the same hooks, steps and model versions
    with History(tmp_path / "engine") as a, History(tmp_path / "taken") as b:
        for name in ("train/teacher/loss", "train/student/loss", "val/student/acc"):
            np.testing.assert_array_equal(a.metric(name), b.metric(name))
        for column in ("logits/teacher", "logits/student", "loss/ce"):
            np.testing.assert_array_equal(a.column(column), b.column(column))


def test_a_backward_pass_taken_over_without_its_role_declared_stops_the_run(tmp_path):
    """``kdcore check`` refuses two takers of one role by their ``backward_roles()``; a
    component that takes a role it does not name would slip past that check."""
    from kdcore.errors import KdcoreError

    with pytest.raises(KdcoreError) as err:
        _run(tmp_path, _two_stage_recipe(take_backward=True, declare_backward=False))
    assert str(err.value) == (
        "component 'rec' (recorder) took over the backward pass of 'teacher', which its "
        "backward_roles() does not name (none); a component that takes over a backward pass "
        "declares the roles it takes (docs/plugins.md)")
    assert [e[1] for e in EVENTS if e[0] == "rec"].count("backward") == 1  # the first batch's


def test_the_learning_rate_follows_each_roles_schedule_over_the_stages_that_train_it(tmp_path):
    models = {
        "teacher": {"arch": "mlp", "params": {"hidden": [8]}, "optimizer": {"lr": 0.2},
                    "schedule": {"name": "cosine"}},
        "student": {"arch": "mlp", "params": {"hidden": [8]}, "optimizer": {"lr": 0.1},
                    "schedule": {"name": "multistep", "milestones": [1, 2], "gamma": 0.5}},
    }
    recipe = tiny_recipe(stage("t1", 2, ["teacher"], component("ce")),
                         stage("s", 3, ["student"], component("ce")),
                         stage("t2", 2, ["teacher"], component("ce")),
                         models=models, train_subset=100, batch_size=100)
    EVENTS.clear()
    run_tiny(recipe, tmp_path / "run")
    cosine = [0.2 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]  # 4 epochs in all
    nan = float("nan")
    with History(tmp_path / "run") as h:
        np.testing.assert_allclose(h.metric("lr/teacher"),
                                   [cosine[0], cosine[1], nan, nan, nan, cosine[2], cosine[3]])
        np.testing.assert_allclose(h.metric("lr/student"),
                                   [nan, nan, 0.1, 0.05, 0.025, nan, nan])


class Losses:
    """Every batch's total loss of each trained model, by (stage, epoch)."""

    def __init__(self):
        self.seen: dict[tuple[str, int], list[float]] = {}

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        for loss in losses.values():
            self.seen.setdefault((ctx.stage.name, ctx.epoch), []).append(float(loss.detach()))


@pytest.mark.parametrize(("subset", "batch_size"), [(150, 32), (60, 512)])
def test_train_metrics_are_each_epochs_mean_over_its_batches(tmp_path, subset, batch_size):
    """The model's loss and each term's (before its recipe weight) per epoch: the mean over the
    epoch's batches, also for an epoch of one batch."""
    recipe = tiny_recipe(stage("t", 2, ["teacher"], component("ce", weight=0.5)),
                         train_subset=subset, batch_size=batch_size)
    losses = Losses()
    run_tiny(recipe, tmp_path / "run", plugins=[losses])
    per_epoch = [np.mean(losses.seen[("t", e)]) for e in range(2)]
    with History(tmp_path / "run") as h:
        n_train = int(h.column("target").shape[1])
        np.testing.assert_allclose(h.metric("train/teacher/loss"), per_epoch, rtol=1e-6)
        np.testing.assert_allclose(h.metric("train/teacher/ce"), np.array(per_epoch) / 0.5,
                                   rtol=1e-6)
    assert len(losses.seen[("t", 0)]) == math.ceil(n_train / batch_size)


class Modes(Component):
    """Records, in each batch, whether each model is in training mode and has gradients."""

    seen: list[dict[str, tuple[bool, bool]]] = []

    def select(self, ctx, batch):
        Modes.seen.append({r: (m.training, all(p.requires_grad for p in m.parameters()))
                           for r, m in ctx.models.items()})
        return None



def test_only_the_stages_trained_models_are_in_training_mode_and_take_gradients(tmp_path):
    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce"), component("modes")),
                         stage("s", 1, ["student"], component("ce"), component("modes")),
                         train_subset=64, batch_size=64)
    Modes.seen = []
    run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    assert Modes.seen == [{"teacher": (True, True), "student": (False, False)},
                          {"teacher": (False, False), "student": (True, True)}]


@pytest.mark.parametrize("keep", ["best_val", "best_val_all"])
def test_each_epoch_and_the_best_epochs_restore_are_logged_as_one_line(tmp_path, keep):
    """(In a one-stage run the role's best over all its stages is the stage's best.)"""
    with logged() as lines:
        recipe = tiny_recipe(stage("t", 3, ["teacher"], component("ce"), keep=keep),
                             train_subset=100, batch_size=50)
        run_tiny(recipe, tmp_path / "run")
    with History(tmp_path / "run") as h:
        best = int(np.argmax(h.metric("val/teacher/acc")))
        losses = h.metric("train/teacher/loss")
    epoch_lines = [line for line in lines if line.startswith("t ")]
    assert [line.split(" | ")[:2] for line in epoch_lines] == [
        [f"t {e + 1}/3", f"teacher loss {losses[e]:.4f}"] for e in range(3)]
    assert [line.split(", ")[-2] for line in epoch_lines] == [
        f"run {e + 1}/3 epochs" for e in range(3)]
    assert lines[-1] == (f"stage 't': teacher restored to its best-validation epoch {best + 1} "
                         "(stage 't')")


class Undeclared(Component):
    def on_epoch_start(self, ctx):
        ctx.ledger.add("mine/undeclared", torch.zeros(ctx.ledger.size))

    def select(self, ctx, batch):
        return None



def test_a_component_that_writes_a_column_it_did_not_declare_stops_the_run(tmp_path):
    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce"), component("undeclared")),
                         train_subset=64, batch_size=64)
    with pytest.raises(RuntimeError) as err:
        run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    assert str(err.value) == (
        "component 'undeclared' wrote ledger column 'mine/undeclared', which it does not "
        "declare (declared: select/undeclared, select/undeclared/teacher); add it to the "
        "class's `writes`")


class Order:
    """Each batch's sample indices, by epoch."""

    def __init__(self):
        self.seen: dict[int, list[torch.Tensor]] = {}

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        self.seen.setdefault(ctx.epoch, []).append(batch.index.clone())


def test_the_batch_order_is_a_permutation_drawn_from_the_runs_seed_each_epoch(tmp_path):
    """The order is part of what a seed reproduces (benchmarks/engine_costs.py's plain loop
    draws the same): ``randperm`` of the training split from a generator seeded ``seed + 2``,
    one draw per epoch, cut into batches."""
    recipe = tiny_recipe(stage("t", 2, ["teacher"], component("ce")), seed=7,
                         train_subset=100, batch_size=32)
    order = Order()
    run_tiny(recipe, tmp_path / "run", plugins=[order])
    n = sum(len(i) for i in order.seen[0])
    gen = torch.Generator().manual_seed(7 + 2)
    for epoch in range(2):
        perm = torch.randperm(n, generator=gen)
        assert [i.tolist() for i in order.seen[epoch]] == [
            perm[k:k + 32].tolist() for k in range(0, n, 32)]


def test_checkpoints_come_after_the_first_epoch_then_when_due_and_at_each_stage_start(
        tmp_path, monkeypatch):
    from kdcore.checkpointing import Checkpointer

    saved: list[tuple[int, int, int | None]] = []
    original = Checkpointer.save

    def save(self, trainer, stage_index, epoch, history_rows=None):
        saved.append((stage_index, epoch, history_rows))
        return original(self, trainer, stage_index, epoch, history_rows)

    monkeypatch.setattr(Checkpointer, "save", save)
    stages = (stage("a", 2, ["teacher"], component("ce")),
              stage("b", 3, ["student"], component("ce")))
    run_tiny(tiny_recipe(*stages, train_subset=64, batch_size=64), tmp_path / "every")
    # every epoch but a stage's last (the next stage's start is saved instead), none at the end
    assert saved == [(0, 1, 1), (1, 0, None), (1, 1, 3), (1, 2, 4)]
    saved.clear()
    run_tiny(tiny_recipe(*stages, train_subset=64, batch_size=64,
                         run={"checkpoint_interval_s": 3600}), tmp_path / "hourly")
    assert saved == [(0, 1, 1), (1, 0, None)]  # after the run's first epoch, then stage starts


def test_the_progress_bar_names_the_stage_and_epoch_and_counts_the_batches(tmp_path, capsys):
    from kdcore import load_recipe, run_recipe
    from kdcore.testing import write_recipe

    path = write_recipe(tiny_recipe(stage("warm", 2, ["teacher"], component("ce")),
                                    train_subset=100, batch_size=32), tmp_path / "r.toml")
    run_recipe(load_recipe(path), out=str(tmp_path / "run"), progress=True)
    err = capsys.readouterr().err
    bars = [part for part in err.split("\r") if part.strip()]
    # one bar per epoch, out of the epoch's 4 batches, cleared when the epoch ends (its line
    # in the log replaces it), so nothing is left on the terminal
    names = [b.split(":")[0] for b in bars]  # a slow machine may redraw a bar mid-epoch
    assert sorted(set(names)) == ["warm 1/2", "warm 2/2"] and names == sorted(names), err
    assert all(re.search(r"\| [0-4]/4 \[", b) for b in bars), err
    assert "\n" not in err and err.endswith("\r"), err
    run_recipe(load_recipe(path), out=str(tmp_path / "quiet"), progress=False)
    assert "warm 1/2" not in capsys.readouterr().err


def test_the_epochs_time_is_the_time_it_took(tmp_path):
    import time

    t0 = time.perf_counter()
    run_tiny(tiny_recipe(stage("t", 2, ["teacher"], component("ce")), train_subset=64),
             tmp_path / "run")
    wall = time.perf_counter() - t0
    with History(tmp_path / "run") as h:
        times = h.metric("time/epoch")
    assert len(times) == 2 and all(0 < t < wall for t in times)


def test_two_models_trained_in_one_stage_each_train_as_if_alone(tmp_path):
    """Their losses add into one backward pass; each model's gradient is its own term's."""
    both = stage("s", 2, ["teacher", "student"], component("ce", "ce_t", models=["teacher"]),
                 component("ce", "ce_s", models=["student"]))
    for name, st in (("both", both),
                     ("teacher", stage("s", 2, ["teacher"], component("ce", "ce_t"))),
                     ("student", stage("s", 2, ["student"], component("ce", "ce_s",
                                                                     models=["student"])))):
        run_tiny(tiny_recipe(st, train_subset=100, batch_size=32), tmp_path / name)
    with History(tmp_path / "both") as h:
        for role in ("teacher", "student"):
            with History(tmp_path / role) as alone:
                np.testing.assert_allclose(h.column(f"logits/{role}"),
                                           alone.column(f"logits/{role}"), rtol=1e-5,
                                           atol=1e-6)


class NanFrom(Component):
    """A zero term that turns NaN from optimiser step 35 of the run on."""

    def transfer(self, ctx, batch):
        z = batch.out(self.model).logits.sum(1) * 0
        return z * float("nan") if ctx.step >= 35 else z



def test_a_loss_that_turns_nan_between_two_checks_is_named_at_its_step(tmp_path):
    """Losses are checked every 32 steps and at the epoch's end; the message names the first
    step whose loss was not finite, not the first step of its window."""
    from kdcore.errors import TrainingDiverged

    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce"),
                               component("nan_from", "boom")),
                         train_subset=300, batch_size=4)  # more than 64 steps in the epoch
    with pytest.raises(TrainingDiverged) as err:
        run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    said = str(err.value)
    assert re.fullmatch(
        r"loss of model 'teacher' is not finite at stage 't' epoch 0, step 35: term 'boom' "
        r"\(component 'nan_from'\); its last finite loss, at step 34, had ce = [0-9.]+, "
        r"boom = 0; the history and the last checkpoint hold every completed epoch", said), said


class GrowFrom(Component):
    """A constant term of ``10 ** (10 step)``, infinite in float32 from step 4 on; it keeps
    the CE of each step's batch as torch computes it."""

    ce: dict[int, float] = {}

    def transfer(self, ctx, batch):
        logits = batch.out(self.model).logits
        GrowFrom.ce[ctx.step] = float(torch.nn.functional.cross_entropy(logits.detach(),
                                                                         batch.targets))
        return logits.sum(1) * 0 + torch.tensor(10.0 ** (10 * ctx.step), dtype=torch.float32)


def _diverged(tmp_path, *components):
    """The message of the divergence that a teacher stage of ``ce`` and ``components`` ends
    with (:class:`GrowFrom`'s record of the CE cleared first)."""
    from kdcore.errors import TrainingDiverged

    GrowFrom.ce.clear()
    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce"), *components),
                         train_subset=300, batch_size=16)
    with pytest.raises(TrainingDiverged) as err:
        run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    return str(err.value)


def test_a_loss_that_grew_to_infinity_names_every_term_and_the_values_before(tmp_path):
    """Every term that is not finite is named, and the model's last finite loss shows which
    term grew, with its weight: the first term named was not always the cause (an LSHL2_S
    feature term that grew to 6.6e13 made the next step's CE NaN too, and only 'ce' was
    named)."""
    said = _diverged(tmp_path, component("grow_from", "grow", weight=3.0),
                     component("grow_from", "grow2"))
    found = re.fullmatch(
        r"loss of model 'teacher' is not finite at stage 't' epoch 0, step 4: terms 'grow' "
        r"\(component 'grow_from'\), 'grow2' \(component 'grow_from'\); its last finite "
        r"loss, at step 3, had ce = ([0-9.]+), grow = 1e\+30 \(weight 3\), grow2 = 1e\+30; "
        r"the history and the last checkpoint hold every completed epoch", said)
    assert found, said
    assert float(found.group(1)) == pytest.approx(GrowFrom.ce[3], rel=2e-3)  # 3 digits


@pytest.mark.parametrize(("weights", "step", "before"), [
    # 3e38 + 3e38 at the first step: no finite loss before it
    ((3e38, 3e38), 0, ""),
    ((1e38,), 1, "; its last finite loss, at step 0, had ce = ([0-9.]+), grow0 = 1 "
                 r"\(weight 1e\+38\)"),
])
def test_a_sum_that_overflows_says_so_and_what_came_before(tmp_path, weights, step, before):
    said = _diverged(tmp_path, *(component("grow_from", f"grow{i}", weight=weight)
                                 for i, weight in enumerate(weights)))
    found = re.fullmatch(
        f"loss of model 'teacher' is not finite at stage 't' epoch 0, step {step}: every term "
        r"is finite, their sum times the components' weights is not \(a weight too large\?\)"
        f"{before}; the history and the last checkpoint hold every completed epoch", said)
    assert found, said
    if before:
        assert float(found.group(1)) == pytest.approx(GrowFrom.ce[0], rel=2e-3)


def test_every_stage_is_set_up_and_handed_over_before_training_and_an_eval_stage_has_no_steps(
        tmp_path):
    recipe = tiny_recipe(
        stage("a", 1, ["teacher"], component("ce"), component("recorder", "rec")),
        stage("b", 1, ["student"], component("ce", models=["student"]),
              component("recorder", "rec", models=["student"])),
        stage("c", 1, [], component("recorder", "rec", models=["student"]), eval=["student"]),
        train_subset=64, batch_size=64)
    events = _run(tmp_path, recipe)
    # each stage in turn, each handing its state to the next (a rehearsal of the boundaries)
    assert [e[:3] for e in events[:7]] == [("rec", "setup", "a"), ("rec", "setup", "b"),
                                           ("rec", "load_state_dict", "a"),
                                           ("rec", "setup", "c"),
                                           ("rec", "load_state_dict", "b"),
                                           ("obs", "run_start", "Watcher-1"),
                                           ("rec", "setup", "a")]
    (start_c,) = [e for e in events if e[1] == "on_stage_start" and e[2] == "c"]
    assert start_c[3:6] == (0, 0, 0)  # epoch 0, step 0, no steps in a stage that trains none
    assert not [e for e in events if e[1] == "select" and e[2] == "c"]


@pytest.mark.parametrize(("stage_name", "epoch", "batch"), [("warm", 1, 1), ("main", 0, 0)])
def test_a_run_resumed_in_process_ends_as_the_uninterrupted_one(tmp_path, stage_name, epoch,
                                                                batch):
    """Stopped inside the first stage's second epoch, or in the second stage's first batch
    (its checkpoint is the stage boundary's), then resumed: the same history, and every hook
    after the checkpoint called as in the uninterrupted run."""
    from kdcore.testing import InterruptAt, Interrupted, assert_same_history

    whole = _run(tmp_path, _two_stage_recipe(), "whole")
    EVENTS.clear()
    with pytest.raises(Interrupted):
        run_tiny(_two_stage_recipe(), tmp_path / "cut",
                 plugins=[Components(), Watcher(), InterruptAt(epoch, batch, stage_name)])
    EVENTS.clear()
    run_tiny(_two_stage_recipe(), tmp_path / "cut", plugins=[Components(), Watcher()],
             resume=True)
    # (model versions are the process's own count of weight changes, so left out)
    kept = ("select", "batch_end", "on_epoch_start", "on_epoch_end")
    resumed = [e for e in EVENTS if e[1] in kept]
    tail = [e for e in whole if e[1] in kept][-len(resumed):]
    assert resumed == tail and resumed
    assert_same_history(tmp_path / "whole", tmp_path / "cut")


class Inputs:
    """The training split's inputs, and each batch's rows and model inputs, in order."""

    def __init__(self):
        self.train_x: torch.Tensor | None = None
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    @hookimpl
    def kdcore_run_start(self, ctx):
        self.train_x = ctx.data.train.x.clone()

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        self.batches.append((batch.index.clone(), batch.x.clone()))


def test_training_batches_are_augmented_in_order_from_the_runs_seed(tmp_path):
    """``data.augment``'s chain runs on each training batch as it comes, every draw from one
    generator seeded ``seed + 3`` (a seed reproduces the augmented inputs too)."""
    from kdcore.data.augment import cutout, random_crop_flip

    chain = [{"name": "crop_flip", "params": {"padding": 2}},
             {"name": "cutout", "params": {"size": 3}}]
    recipe = tiny_recipe(
        stage("s", 2, ["student"], component("ce", models=["student"])),
        models={"student": {"arch": "cnn", "params": {"channels": [4], "hidden": 8}}},
        data={"params": {"flatten": False}, "augment": chain}, seed=5, train_subset=100,
        batch_size=32)
    seen = Inputs()
    run_tiny(recipe, tmp_path / "run", plugins=[seen])
    gen = torch.Generator().manual_seed(5 + 3)
    assert len(seen.batches) == 2 * math.ceil(len(seen.train_x) / 32)
    for index, x in seen.batches:
        raw = seen.train_x[index]
        want = cutout(random_crop_flip(raw, gen, padding=2), gen, size=3)
        assert torch.equal(x, want) and not torch.equal(x, raw)


def _rows_not_reduced(logits):
    return logits  # (B, C): a per-sample loss must give one value per row


class WrongRows(Component):
    """A term whose per-sample rows have the wrong shape (its mean still trains)."""

    def transfer(self, ctx, batch):
        from kdcore.terms import PerSampleLoss

        return PerSampleLoss(_rows_not_reduced, batch.out(self.model).logits * 0)


@pytest.mark.parametrize("observed", [False, True])
def test_a_per_sample_loss_of_the_wrong_shape_is_named_by_its_component_and_column(
        tmp_path, observed):
    """Its rows are evaluated for the record at the epoch's end, or in the batch when an
    observer is handed the batch's values; either way the message names both."""
    from kdcore.errors import KdcoreError

    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce"),
                               component("wrong_rows", "odd")), train_subset=64)
    plugins = [Components()] + ([Order()] if observed else [])
    with pytest.raises(KdcoreError) as err:
        run_tiny(recipe, tmp_path / "run", plugins=plugins)
    assert str(err.value).startswith("component 'odd', column 'loss/odd': ")


class StaleView(Component):
    """Asks for the teacher's whole-split outputs: while it trains, at each epoch's end (so
    they are cached for its last weights); in the next stage, compares them with a fresh
    forward pass of the teacher as the run holds it then."""

    checks: list[tuple[bool, bool]] = []

    def on_epoch_end(self, ctx, metrics):
        if ctx.trains("teacher"):
            ctx.features("teacher")

    def after_step(self, ctx, batch):
        # the teacher's last step ruins it: its best epoch is an earlier one
        if ctx.trains("teacher") and ctx.epoch == 2 and ctx.stage_step == 3 * ctx.steps_per_epoch:
            with torch.no_grad():
                for p in ctx.models["teacher"].parameters():
                    p.zero_()

    def on_stage_start(self, ctx):
        if not ctx.trains("teacher"):
            cached = ctx.features("teacher").logits
            fresh = ctx.forward("teacher", ctx.data.train.x).logits
            StaleView.checks.append((torch.allclose(cached, fresh),
                                     bool(fresh.abs().sum() > 0)))


def test_a_roles_outputs_after_its_best_epoch_is_restored_are_the_restored_weights(tmp_path):
    StaleView.checks.clear()
    recipe = tiny_recipe(
        stage("t", 3, ["teacher"], component("ce"), component("stale_view", "view"),
              keep="best_val"),
        stage("s", 1, ["student"], component("ce", models=["student"]),
              component("stale_view", "view", models=["student"])),
        train_subset=96, batch_size=32)
    run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    assert StaleView.checks == [(True, True)]  # restored (not the zeroed last weights), fresh


def test_the_time_left_counts_the_stages_own_epochs_at_their_own_mean_time(tmp_path,
                                                                          monkeypatch):
    """A later stage's remaining epochs are estimated from its own epochs' times, not from
    every epoch's (here each epoch takes longer than the one before)."""
    import types

    from kdcore import loop
    from kdcore.epoch_line import time_left

    calls = iter(range(10_000))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(
        perf_counter=lambda: 30.0 * next(calls) ** 2))
    with logged() as lines:
        recipe = tiny_recipe(stage("a", 2, ["teacher"], component("ce")),
                             stage("b", 3, ["student"], component("ce", models=["student"])),
                             train_subset=64)
        run_tiny(recipe, tmp_path / "run")
    with History(tmp_path / "run") as h:
        times = h.metric("time/epoch")
    assert len(set(times)) == 5  # each epoch its own time
    seen: dict[int, list[float]] = {}
    want = []
    for row, (s, e) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]):
        seen.setdefault(s, []).append(float(times[row]))
        want.append(f"{time_left([2, 3], s, e, seen)} left")
    got = [line.rsplit(", ", 1)[-1] for line in lines if line.startswith(("a ", "b "))]
    assert got == want


def test_the_epoch_line_shows_an_empty_splits_accuracy_as_missing():
    from kdcore.epoch_line import epoch_line

    recipe = recipe_from_dict(tiny_recipe(stage("s", 2, ["student"], component("ce"))))
    metrics = {"train/student/loss": 0.5, "val/student/acc": math.nan,
               "test/student/acc": 0.25, "label/acc": 0.6, "time/epoch": 1.0}
    # data.val_fraction = 0: the line had read "student val nan"
    assert epoch_line(recipe, 0, 0, metrics, {0: [1.0]}) == (
        "s 1/2 | student loss 0.5000 | student val - test 0.2500 | labels 0.6000 | 1.0s, run "
        "1/2 epochs, ~1s left")


class Relabel(Component):
    """An epoch-level label refiner: at each epoch's end, base_target becomes the one-hot of
    the next class over (a change a batch-level refiner would not see)."""

    writes = ("base_target",)

    def on_epoch_end(self, ctx, metrics):
        base = ctx.ledger["base_target"]
        ctx.ledger.add("base_target", base.roll(1, dims=1).clone(), kind="target")


def test_without_a_batch_refiner_each_epochs_target_is_the_base_target_it_trained_on(
        tmp_path):
    recipe = tiny_recipe(stage("t", 3, ["teacher"], component("ce"),
                               component("relabel", "shift")), train_subset=64)
    run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    with History(tmp_path / "run") as h:
        target, base = h.column("target"), h.column("base_target")
    assert target.shape[0] == 3
    for epoch in range(1, 3):  # trained on the base target the previous epoch's end left
        np.testing.assert_array_equal(target[epoch], base[epoch - 1])
    np.testing.assert_array_equal(target[0], np.roll(base[0], -1, axis=1))


def test_a_trained_role_that_no_stage_evaluates_gets_no_test_confusion_matrix(tmp_path):
    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce"), eval=[]),
                         stage("s", 1, ["student"], component("ce", models=["student"])),
                         train_subset=64)
    run_tiny(recipe, tmp_path / "run")
    with History(tmp_path / "run") as h:
        assert [n for n in h.data_names() if n.startswith("test_confusion/")] == [
            "test_confusion/s/student"]


def test_a_checkpoint_whose_records_hold_no_confusion_matrix_still_ends_with_one(tmp_path,
                                                                            monkeypatch):
    """A checkpoint of a kdcore that kept no matrices with its best-epoch records: the stage's
    matrix is computed at its end from the weights it keeps, the one an uninterrupted run
    records."""
    from kdcore import loop
    from kdcore.checkpoint import CHECKPOINT, load, save
    from kdcore.testing import InterruptAt, Interrupted, assert_same_history

    recipe = tiny_recipe(stage("warm", 3, ["teacher"], component("ce"), keep="best_val"),
                         stage("main", 1, ["student"], component("ce", models=["student"])),
                         train_subset=150, batch_size=64)
    run_tiny(recipe, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run_tiny(recipe, tmp_path / "cut", plugins=[InterruptAt(2, 0, "warm")])
    state = load(tmp_path / "cut" / CHECKPOINT)
    records = state["best"]["best"].values()
    assert records and all(r["test_confusion"] is not None for r in records)
    for record in records:
        del record["test_confusion"], record["last_test_confusion"]
    save(state, tmp_path / "cut" / CHECKPOINT)
    computed: list[torch.nn.Module] = []
    original = loop.confusion_on_test

    def spy(model, *args):
        computed.append(model)
        return original(model, *args)

    monkeypatch.setattr(loop, "confusion_on_test", spy)
    run_tiny(recipe, tmp_path / "cut", resume=True)
    assert len(computed) == 1  # the teacher's, at the end of the resumed stage
    assert_same_history(tmp_path / "whole", tmp_path / "cut")


class DetachedTerm(Component):
    """A term computed from detached outputs only (as relational_kd with detach_student)."""

    def transfer(self, ctx, batch):
        return batch.out(self.model).logits.detach().logsumexp(1)


class DetachedTermPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"detached": DetachedTerm}


@pytest.mark.slow
def test_a_stage_whose_terms_have_no_gradient_stops_in_one_line_and_a_second_model_is_warned(
        tmp_path):
    from kdcore import KdcoreError

    peer = {"arch": "mlp", "params": {"hidden": [8]}, "optimizer": {"lr": 0.1}}
    models = {"student": peer, "peer": peer}
    alone = tiny_recipe(stage("s", 1, ["student"], component("detached")), models=models,
                        train_subset=100)
    with pytest.raises(KdcoreError, match=r"^model 'student' got a loss without gradient \(its "
                                          r"terms: detached; .* so it cannot learn"):
        run_tiny(alone, tmp_path / "alone", plugins=[DetachedTermPlugin()])
    beside = tiny_recipe(stage("s", 2, ["student", "peer"],
                               component("detached", models=["student"]),
                               component("ce", models=["peer"])), models=models,
                         train_subset=100)
    with logged("WARNING") as lines:
        run_tiny(beside, tmp_path / "beside", plugins=[DetachedTermPlugin()])
    assert [line for line in lines if "without gradient" in line] == [
        "model 'student' got a loss without gradient (its terms: detached; each was computed "
        "from detached tensors): it learns nothing from such a batch (said once)"]


@attrs.frozen
class SizedParams:
    size: int = 1


class Sized(Component):
    """A state whose shape its parameters fix; one of another size does not fit."""

    Params = SizedParams

    def setup(self, ctx):
        self.table = torch.zeros(self.params.size)

    def transfer(self, ctx, batch):
        return torch.nn.functional.cross_entropy(batch.out(self.model).logits, batch.noisy_label,
                                                 reduction="none")

    def state_dict(self):
        return {"table": self.table}

    def load_state_dict(self, state):
        if state["table"].shape != self.table.shape:
            from kdcore import RecipeError
            raise RecipeError(f"component '{self.name}' cannot continue a table of "
                              f"{len(state['table'])}")
        self.table = state["table"]


class SizedPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"sized": Sized}


SIZED = SizedPlugin()  # for --plugin MODULE:OBJ


@pytest.mark.slow
def test_a_carried_state_that_does_not_fit_is_refused_before_anything_trains(tmp_path):
    """MLC's network carried into a stage that built it with another size stopped the run at
    the stage boundary, after the first stage had trained (and `check` had accepted it)."""
    from click.testing import CliRunner

    from kdcore import RecipeError
    from kdcore.cli import main
    from kdcore.testing import write_recipe

    def recipe(size):
        return tiny_recipe(stage("a", 1, ["student"], component("sized", "s")),
                           stage("b", 1, ["student"], component("sized", "s",
                                                               params={"size": size})),
                           train_subset=100)

    path = write_recipe(recipe(2), tmp_path / "r.toml")
    result = CliRunner().invoke(main, ["check", str(path), "--plugin", f"{__name__}:SIZED"])
    assert result.exit_code == 2
    assert result.stderr == "kdcore: error: component 's' cannot continue a table of 1\n"
    EVENTS.clear()
    with pytest.raises(RecipeError, match="cannot continue a table of 1"):
        run_tiny(recipe(2), tmp_path / "run", plugins=[SIZED, Watcher()])
    assert not [e for e in EVENTS if e[1] == "batch_end"]  # nothing trained
    run_tiny(recipe(1), tmp_path / "fits", plugins=[SIZED])
