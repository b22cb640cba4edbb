"""kdcore.testing's component harness, what every plugin's unit tests stand on: the run, data,
ledger, context and component it builds, its batches and hooks, and TinyNet; and the pieces of
the component contract a harness test reaches (Batch, BatchStore, the declared roles and
columns)."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

from kdcore import Component, KdcoreError, PluginHost, RecipeError, Role
from kdcore.builtin.components import AllSamples, CrossEntropy, HintonKD, LabelSmoothing
from kdcore.component import Batch, ComponentSpec
from kdcore.context import BatchStore, ColumnName, ModelOutput
from kdcore.hookspecs import hookimpl
from kdcore.recipe import ComponentConfig, ModelConfig, OptimizerConfig, Recipe, StageConfig
from kdcore.testing import (
    TinyNet,
    component,
    component_seed,
    harness,
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
)

X = torch.arange(20.0).reshape(5, 4)
NOISY = torch.tensor([0, 1, 2, 1, 0])
CLEAN = torch.tensor([0, 1, 1, 1, 2])


class _Writer(Component):
    """Writes a column of its own, in a hook or (wrongly) at set-up."""

    writes = ("mine/{name}",)
    description = "writes"
    seen: list = []

    def setup(self, ctx):
        _Writer.seen.append(("setup", ctx.epoch))
        if getattr(ctx, "write_in_setup", False):
            ctx.ledger.add(f"mine/{self.name}", torch.zeros(5))

    def on_stage_start(self, ctx):
        _Writer.seen.append(("stage", ctx.stage.name))

    def on_epoch_start(self, ctx):
        _Writer.seen.append(("epoch", ctx.epoch))


def test_the_run_data_and_ledger_it_builds():
    h = harness(CrossEntropy, x=X, noisy_label=NOISY, clean_label=CLEAN)
    run, data, ledger = h.run, h.run.data, h.run.ledger
    assert run.recipe.stages == [StageConfig(name="stage", epochs=1, train=["student"],
                                             components=[ComponentConfig(
                                                 use="crossentropy", name="crossentropy",
                                                 models=["student"])])]
    assert run.run_dir == Path(".") and run.device == torch.device("cpu")
    assert run.augmentations == []
    assert data.num_classes == 3 and data.class_names == ("0", "1", "2")
    assert torch.equal(data.train.x, X) and torch.equal(data.train.y, CLEAN)
    assert data.train.num_classes == 3
    assert torch.equal(data.train_noisy, NOISY) and torch.equal(data.train_source,
                                                                torch.arange(5))
    assert data.noise_rate == pytest.approx(2 / 5)
    assert torch.equal(data.transition, torch.eye(3)) and data.device == torch.device("cpu")
    for split in (data.val, data.test, data.gold):
        assert split.x.shape == (0, 4) and split.y.shape == (0,) and split.num_classes == 3
    assert data.val_noisy.shape == (0,)
    expected = {"noisy_label": (NOISY, "data", "label", False),
                "clean_label": (CLEAN, "data", "label", False),
                "clean_mask": (NOISY == CLEAN, "data", "mask", False),
                "base_target": (torch.eye(3)[NOISY], "labels", "target", False),
                "target": (torch.eye(3)[NOISY], "labels", "target", True)}
    assert sorted(name for name, _ in ledger.items()) == sorted(expected)
    for name, (values, producer, kind, snapshot) in expected.items():
        column = ledger.column(name)
        assert torch.equal(column.data, values), name
        assert (column.producer, column.kind, column.snapshot) == (producer, kind, snapshot)
    h.ctx.record_data("anything", torch.ones(2))  # no history: dropped
    assert h.ctx.stage.name == "stage" and h.ctx.epoch == 0


def test_defaults_clean_labels_classes_and_models():
    h = harness(CrossEntropy, x=X, noisy_label=NOISY)
    assert torch.equal(h.run.data.train.y, NOISY) and h.run.data.noise_rate == 0.0
    assert h.run.data.num_classes == 3  # the largest label + 1
    # the clean labels count too, and an explicit number wins
    assert harness(CrossEntropy, x=X, noisy_label=NOISY,
                   clean_label=torch.tensor([0, 1, 4, 1, 0])).run.data.num_classes == 5
    assert harness(CrossEntropy, x=X, noisy_label=NOISY,
                   num_classes=7).run.ledger["target"].shape == (5, 7)
    net = TinyNet(4, 3)
    assert harness(CrossEntropy, x=X, noisy_label=NOISY, models={"peer": net}
                   ).run.models == {"peer": net}


def test_the_component_its_spec_params_and_context():
    h = harness(HintonKD, {"temperature": 2.0}, x=X, noisy_label=NOISY, train=("a", "b"),
                serves=("b",), name="kd", terms=("ce",), weight=0.5, seed=3)
    assert isinstance(h.component, HintonKD) and h.component.params.temperature == 2.0
    assert h.component.spec == ComponentSpec("kd", "kd", ("b",), ("ce",), 0.5)
    assert h.run.stage.train == ["a", "b"]
    assert h.ctx.generator.initial_seed() == 3
    expected = torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.randint(0, 1000, (4,), generator=h.ctx.generator), expected)
    plain = harness(LabelSmoothing, x=X, noisy_label=NOISY)
    assert plain.component.spec == ComponentSpec("labelsmoothing", "labelsmoothing",
                                                 ("student",), (), 1.0)
    assert plain.ctx.generator.initial_seed() == 0
    with pytest.raises(RecipeError) as err:
        harness(LabelSmoothing, {"epsilon": 2.0}, x=X, noisy_label=NOISY)
    assert err.value.key == "params.epsilon"


def test_the_context_writes_the_declared_columns_only():
    h = harness(_Writer, x=X, noisy_label=NOISY, name="w")
    h.ctx.ledger.add("mine/w", torch.ones(5))
    assert h.run.ledger.producer("mine/w") == "w"
    with pytest.raises(RuntimeError, match=r"wrote ledger column 'other', which it does not "
                                           r"declare \(declared: mine/w\)"):
        h.ctx.ledger.add("other", torch.ones(5))


def test_setup_runs_with_the_ledger_frozen_then_the_stage_start_and_epochs():
    _Writer.seen = []
    h = harness(_Writer, x=X, noisy_label=NOISY, name="w")
    assert h.setup() is h
    h.epoch_start(2)
    h.epoch_start()
    assert _Writer.seen == [("setup", 0), ("stage", "stage"), ("epoch", 2), ("epoch", 0)]
    assert h.run.epoch == 0
    h.ctx.write_in_setup = True
    with pytest.raises(RuntimeError, match="wrote ledger column 'mine/w' in setup, which must "
                                           "not write the ledger"):
        h.setup()
    assert "mine/w" not in h.run.ledger



class _Adapter(Component):
    """Adds a head to its model in ``adapt_models``, as F&F's SSL and LSH's connector do, and
    notes what it finds at each hook."""

    description = "adapts"
    seen: list = []

    def adapt_models(self, ctx):
        _Adapter.seen.append("adapt")
        model = ctx.models["student"]
        if not hasattr(model, "head"):  # again on resume: the same head, kept
            model.add_module("head", nn.Linear(2, 2))

    def setup(self, ctx):
        optimizer = ctx.optimizers.get("student")
        trained = None if optimizer is None else {id(p) for g in optimizer.param_groups
                                                  for p in g["params"]}
        head = ctx.models["student"].head
        _Adapter.seen.append(("setup", trained is not None and id(head.weight) in trained))


def test_setup_adapts_the_models_once_then_builds_the_optimisers_and_modes_as_a_run():
    """A run calls ``adapt_models`` before any optimiser exists (what it adds is trained),
    puts the stage's trained models in training mode with gradients and the others in
    evaluation mode without, and builds each trained role's optimiser from the recipe before
    ``setup``; the harness had done none of it (F&F's SSL component raised AttributeError,
    MLC found no SGD optimiser)."""
    _Adapter.seen = []
    teacher, student = TinyNet(4, 3), TinyNet(4, 3)
    h = harness(_Adapter, x=X, noisy_label=NOISY, models={"teacher": teacher,
                                                          "student": student})
    h.setup()
    assert _Adapter.seen == ["adapt", ("setup", True)]
    optimizer = h.run.optimizers["student"]
    assert isinstance(optimizer, torch.optim.SGD) and set(h.run.optimizers) == {"student"}
    assert optimizer.defaults["lr"] == 0.05 and h.ctx.lr("student") == 0.05  # recipe default
    assert student.training and not teacher.training
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    h.setup()  # the next stage's start: no second adaptation, the same optimiser
    assert _Adapter.seen == ["adapt", ("setup", True), ("setup", True)]
    assert h.run.optimizers["student"] is optimizer


def test_setup_keeps_what_the_architecture_froze_frozen_as_a_run():
    student = TinyNet(4, 3)
    frozen = next(student.parameters())
    frozen.requires_grad_(False)  # a backbone the architecture keeps fixed
    h = harness(_Adapter, x=X, noisy_label=NOISY, models={"student": student})
    h.setup()
    h.setup()
    assert [p.requires_grad for p in student.parameters()] == [
        p is not frozen for p in student.parameters()]


def test_the_optimiser_settings_are_a_recipes_and_a_given_optimiser_is_kept():
    h = harness(_Adapter, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)},
                optimizer={"name": "adam", "lr": 0.01})
    assert h.ctx.recipe.models["student"].optimizer.name == "adam"
    h.setup()
    assert isinstance(h.run.optimizers["student"], torch.optim.Adam)
    assert h.ctx.lr("student") == 0.01
    for bad, why in (({"lr": -1.0}, r"^optimizer\.lr: .*-1"), ("adam", "^optimizer: got 'adam', "
                     "expected a table"), ({"name": "lion"}, r"^optimizer\.name: got 'lion'")):
        with pytest.raises(RecipeError, match=why):
            harness(_Adapter, x=X, noisy_label=NOISY, optimizer=bad)
    student = TinyNet(4, 3)
    mine = torch.optim.SGD(student.parameters(), lr=0.3)
    h = harness(_Adapter, x=X, noisy_label=NOISY, models={"student": student})
    h.run.optimizers["student"] = mine
    h.setup()
    assert h.run.optimizers["student"] is mine



def test_a_recipe_the_test_sets_gives_the_optimiser_or_else_the_harness_settings():
    """A test that sets ``h.run.recipe`` (to place the component after earlier stages) gets
    the optimiser that recipe names for the role, as a run would; a recipe without the role
    falls back on the settings ``harness`` was given."""
    for models, expected, lr in (({"student": ModelConfig(optimizer=OptimizerConfig(
            name="adamw", lr=0.2))}, torch.optim.AdamW, 0.2), ({}, torch.optim.Adam, 0.01)):
        h = harness(_Adapter, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)},
                    optimizer={"name": "adam", "lr": 0.01})
        h.run.recipe = Recipe(models=models, stages=[h.run.stage])
        h.setup()
        assert type(h.run.optimizers["student"]) is expected
        assert h.ctx.lr("student") == lr

class _Stand(nn.Module):
    def forward(self, x):
        return x, x


def test_a_stand_in_model_without_parameters_gets_no_optimiser():
    h = harness(CrossEntropy, x=X, noisy_label=NOISY, models={"student": _Stand()})
    h.setup()
    assert h.run.optimizers == {}
    h = harness(CrossEntropy, x=X, noisy_label=NOISY, train=("student", "peer"),
                models={"student": _Stand(), "peer": TinyNet(4, 3)})
    h.setup()  # the roles after it still get theirs
    assert list(h.run.optimizers) == ["peer"]


ALONE = {"mlc": "needs a clean gold split", "kdmlc_student": "needs exactly one mlc"}


@pytest.mark.parametrize("use", sorted(PluginHost().components.names()))
def test_every_installed_component_runs_in_the_harness_with_its_defaults(use):
    """Each component's hooks over two epochs of three batches, as a stage of it alone trains
    the student (or student and peer, for one that needs two models), each batch a whole
    training step (its backward pass, optimiser step and ``after_step``), then the stage's
    end: what a third party's unit test of it would do first. One that cannot stand alone
    says why in a RecipeError."""
    cls = PluginHost().components.get(use)
    gen = torch.Generator().manual_seed(0)
    x, clean = torch.randn(96, 6, generator=gen), torch.randint(0, 4, (96,), generator=gen)
    noisy = torch.where(torch.rand(96, generator=gen) < 0.3,
                        torch.randint(0, 4, (96,), generator=gen), clean)

    def two_epochs(train):
        torch.manual_seed(1)
        models = {r: TinyNet(6, 4) for r in ("teacher", "student", "peer")}
        h = harness(cls, x=x, noisy_label=noisy, clean_label=clean, models=models, train=train,
                    batch_size=32, epochs=2)
        h.setup()
        for epoch in range(2):
            h.epoch_start(epoch)
            for b in range(3):
                h.train(h.batch(range(32 * b, 32 * b + 32)))
            h.epoch_end()
        h.stage_end()
        assert h.ctx.step == 6 and all(h.ctx.model_version(r) == 6 for r in train)

    if use in ALONE:
        with pytest.raises(RecipeError, match=ALONE[use]):
            two_epochs(["student"])
        return
    try:
        two_epochs(["student"])
    except (ValueError, RecipeError) as one:  # made for two models, or for one
        assert "serve" in str(one) or "peer" in str(one)
        two_epochs(["student", "peer"])


def test_batches_as_the_engine_builds_them():
    h = harness(CrossEntropy, x=X, noisy_label=NOISY)
    h.run.step = 7
    whole = h.batch()
    assert torch.equal(whole.index, torch.arange(5)) and torch.equal(whole.x, X)
    some = h.batch([3, 1])
    assert torch.equal(some.x, X[[3, 1]]) and torch.equal(some.noisy_label, NOISY[[3, 1]])
    assert some.num_classes == 3 and some.step == 7 and len(some) == 2
    assert torch.equal(some.targets, torch.eye(3)[NOISY[[3, 1]]])
    assert some.hard_targets is None  # the harness does not promise one-hot targets
    other = torch.zeros(2, 4)
    assert h.batch([3, 1], x=other).x is other


def test_a_batch_keeps_what_it_is_given():
    idx, x, y = torch.tensor([2, 0]), torch.ones(2, 4), torch.tensor([1, 0])
    b = Batch(idx, x, y, forward=None, num_classes=3)
    assert b.step == 0 and b.num_classes == 3 and b.noisy_label is y
    with pytest.raises(ValueError, match="built without targets"):
        _ = b.targets
    # explicit targets with their hard labels: the labels hold until the targets change
    t = torch.eye(3)[y]
    b = Batch(idx, x, y, forward=None, num_classes=3, targets=t, hard_targets=y)
    assert b.targets is t and b.hard_targets is y
    t.mul_(1.0)  # an in-place edit moves the version: the labels no longer describe them
    assert b.hard_targets is None
    b = Batch(idx, x, y, forward=None, num_classes=3, targets=torch.eye(3)[y], hard_targets=y)
    b.targets = torch.full((2, 3), 1 / 3)
    assert b.hard_targets is None


def test_a_batch_runs_each_model_once_and_says_which_ran():
    calls = []

    def forward(role, x):
        calls.append(role)
        return ModelOutput(x.sum(1, keepdim=True), x)

    b = Batch(torch.tensor([0, 1]), torch.ones(2, 3), torch.tensor([0, 0]), forward=forward,
              num_classes=2)
    assert b.computed("student") is None
    out = b.out("student")
    assert b.out("student") is out and b.computed("student") is out and calls == ["student"]
    assert b.computed("teacher") is None


def test_the_batch_store():
    b = Batch(torch.tensor([0]), torch.ones(1, 2), torch.tensor([0]), forward=None,
              num_classes=2)
    store = b.store
    assert isinstance(store, BatchStore) and b.store is store
    assert ("mix", "lam") not in store and store.get("mix", "lam") is None
    assert store.get("mix", "lam", 0.5) == 0.5
    store.put("mix", "lam", 0.3)
    assert ("mix", "lam") in store and store.get("mix", "lam", 0.5) == 0.3
    assert store.require("mix", "lam") == 0.3 and store.get("other", "lam") is None
    with pytest.raises(KeyError) as err:
        store.require("mixup", "lam")
    assert err.value.args[0] == ("no batch value 'lam' from 'mixup' (is that component placed "
                                 "before this one in the stage?)")


def test_declared_roles_columns_and_kinds():
    # classes made here, not at import: the fields of a Params class are found once per class
    # and kept, so a class seen before would not exercise the search again
    @attrs.frozen
    class RoleParams:
        teacher: Role = Role("teacher")
        peers: tuple[Role, ...] = ()
        spare: Role | None = None
        label: str = "x"
        names: tuple[str, ...] = ("y",)

    class UsesRoles(Component):
        Params = RoleParams

    comp = UsesRoles(RoleParams(Role("mentor"), (Role("p1"), Role("p2")), Role("s")),
                     ComponentSpec("u", "u", ("student",)))
    assert comp.roles() == ("mentor", "p1", "p2", "s")  # typed Role: alone, in a tuple, optional
    smooth = LabelSmoothing(LabelSmoothing.Params(), ComponentSpec("ls", "label_smoothing",
                                                                   ("student",)))
    assert smooth.written_columns() == ("target",)
    assert smooth.written_column_kinds() == {"target": "target"}
    select = AllSamples(AllSamples.Params(), ComponentSpec("all", "all_samples", ("a", "b")))
    assert select.written_column_kinds() == {"select/all": "mask", "select/all/a": "mask",
                                             "select/all/b": "mask"}

    class Weigher(Component):
        def weight(self, ctx, batch):
            return None

    weigh = Weigher(Weigher.Params(), ComponentSpec("w", "w", ("a",)))
    assert weigh.written_column_kinds() == {"weight/w": "weight", "weight/w/a": "weight"}
    # the base hook leaves the backward pass to the engine
    assert weigh.backward(None, None, "a", torch.tensor(0.0)) is False


def test_the_column_reader_declares_it_reads_at_each_epoch_start():
    """Undeclared, a reader of a selector's mask of its own stage passed ``check`` and the run
    stopped at the stage's first epoch start."""
    from kdcore.testing import ColumnReader

    spec = ComponentSpec("r", "column_reader", ("student",))
    reader = ColumnReader(ColumnReader.Params(ColumnName("select/s")), spec)
    assert reader.reads() == ("select/s",)
    assert reader.reads_at_start() == {"select/s": "on_epoch_start"}
    assert reader.reads_in_batch() == {}  # it has no batch hook
    assert ColumnReader(ColumnReader.Params(), spec).reads_at_start() == {}


def test_tinynet_layers():
    plain = TinyNet()
    assert [type(m) for m in plain.trunk] == [nn.Linear, nn.ReLU]
    assert (plain.trunk[0].in_features, plain.trunk[0].out_features) == (6, 8)
    assert (plain.classifier.in_features, plain.classifier.out_features) == (8, 4)
    full = TinyNet(3, 2, 5, activation="tanh", batch_norm=True, dropout=0.25)
    assert [type(m) for m in full.trunk] == [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout]
    assert full.trunk[1].num_features == 5 and full.trunk[3].p == 0.25
    logits, features = full.eval()(torch.ones(2, 3))
    assert logits.shape == (2, 2) and features.shape == (2, 5)


@attrs.frozen
class _ScoresParams:
    scores: tuple[float, ...] = ()  # per training row; () abstains
    abstain_on: int = -1  # a training row whose batches it abstains on


class _Scores(Component):
    """Selects by the scores its parameters give per training row (none: abstains), from
    epoch 1 on."""

    Params = _ScoresParams
    description = "given scores"

    def select(self, ctx, batch):
        if ctx.epoch < 1 or not self.params.scores or bool(
                (batch.index == self.params.abstain_on).any()):
            return None
        return torch.tensor(self.params.scores)[batch.index]

    def on_epoch_end(self, ctx, metrics):
        metrics[f"s/{self.name}/epoch"] = float(ctx.epoch)


class _Weights(_Scores):
    """Weights as :class:`_Scores` selects."""

    select = Component.select

    def weight(self, ctx, batch):
        return _Scores.select(self, ctx, batch)


class _Doubles(Component):
    """Refines the targets to twice themselves."""

    description = "doubles"

    def refine(self, ctx, batch, targets):
        return 2 * targets


def test_a_step_writes_what_the_hooks_return_and_holds_it_to_a_runs_checks():
    from kdcore.failures import RunFailed

    h = harness(_Scores, {"scores": (1.0, 0.25, 0.0, 1.0, 0.5), "abstain_on": 3}, x=X,
                noisy_label=NOISY, name="s")
    h.epoch_start(1)
    assert h.step(h.batch([3, 2])).masks == []  # abstains before its first write
    result = h.step(h.batch([4, 1]))
    assert [(p.column, p.producer, p.values.tolist()) for p in result.masks] == [
        ("select/s", "s", [0.5, 0.25])]
    assert result.targets is None and result.weights == [] and result.losses == {}
    assert h.run.ledger["select/s"].tolist() == [0.0, 0.25, 0.0, 0.0, 0.5]  # created at 0
    assert h.run.ledger.producer("select/s") == "s" and h.run.ledger.producer("target") == "labels"
    assert h.epoch_end({"m": 1.0}) == {"m": 1.0, "s/s/epoch": 1.0}
    # the rows it abstained on before its first write, 1, as a run's epoch end leaves them
    assert h.run.ledger["select/s"].tolist() == [0.0, 0.25, 1.0, 1.0, 0.5]
    h.epoch_start(2)
    h.step(h.batch([3, 1]))  # abstains the whole epoch: its rows are left as they were
    assert h.epoch_end() == {"s/s/epoch": 2.0}
    assert h.run.ledger["select/s"].tolist() == [0.0, 0.25, 1.0, 1.0, 0.5]
    h.epoch_start(3)
    h.step(h.batch([4]))
    h.step(h.batch([3, 1]))  # written this epoch already: 1 at once
    assert h.run.ledger["select/s"].tolist() == [0.0, 1.0, 1.0, 1.0, 0.5]
    h.epoch_end()
    assert h.step(h.batch([2])).masks[0].values.tolist() == [0.0]  # steps on after an end
    for cls, params, said in (
            (_Scores, {"scores": (1.0, 1.5, 0.0, 1.0, 0.5)}, "select returned values outside "
             "[0, 1] (from 0 to 1.5); a select must lie there"),
            (_Weights, {"scores": (1.0, -2.0, 0.0, 1.0, 0.5)}, "weight returned values outside "
             "[0, inf) (from -2 to 1); a weight must lie there"),
            (_Doubles, {}, "refine made targets that are not distributions (entries from 0, "
             "rows summing to 1 .. 2); each row must be non-negative and sum to 1")):
        bad = harness(cls, params, x=X, noisy_label=NOISY, name="s")
        bad.epoch_start(1)
        with pytest.raises(RunFailed) as info:  # found at the epoch's end in a run
            bad.step(bad.batch([0, 1]))
        assert str(info.value) == f"component 's' (s) {said}"
    weights = harness(_Weights, {"scores": (1.0, 3.0, 0.0, 1.0, 0.5)}, x=X,
                      noisy_label=NOISY, name="w")
    weights.epoch_start(1)
    assert [p.values.tolist() for p in weights.step(weights.batch([1, 0])).weights] == [
        [3.0, 1.0]]
    assert weights.run.ledger["weight/w"].tolist() == [1.0, 3.0, 0.0, 0.0, 0.0]


def test_a_step_of_a_transfer_and_a_refiner_as_a_run_takes_them():
    h = harness(CrossEntropy, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)})
    batch = h.batch([0, 2, 3])
    result = h.step(batch)
    logits = batch.out("student").logits
    expected = torch.nn.functional.cross_entropy(logits, NOISY[[0, 2, 3]])
    torch.testing.assert_close(result.losses["student"], expected)
    assert list(result.terms["student"]) == ["crossentropy"]
    smooth = harness(LabelSmoothing, {"epsilon": 0.3}, x=X, noisy_label=NOISY, name="ls")
    out = smooth.step(smooth.batch([1]))
    assert out.targets is not None and out.targets[1] == "ls"
    torch.testing.assert_close(smooth.run.ledger["target"][1],
                               torch.tensor([0.1, 0.8, 0.1]))  # (1 - 0.3) one-hot + 0.3 / 3
    assert smooth.run.ledger.producer("target") == "ls"


def test_a_steps_loss_records_take_the_column_a_run_of_the_component_would():
    """A term serving two models records per model, ``loss/<name>/<role>``, even in a batch it
    gave one of them only (a run decides the form once per label, so the history can keep it)."""

    class FirstOnly(Component):
        def transfer(self, ctx, batch):
            return {"a": torch.zeros(len(batch))}

    models = {"a": TinyNet(4, 3), "b": TinyNet(4, 3)}
    two = harness(FirstOnly, x=X, noisy_label=NOISY, models=models, name="t", train=["a", "b"])
    assert [p.column for p in two.step(two.batch([0, 1])).losses_per_sample] == ["loss/t/a"]
    one = harness(FirstOnly, x=X, noisy_label=NOISY, models=models, name="t", train=["a"])
    assert [p.column for p in one.step(one.batch([0, 1])).losses_per_sample] == ["loss/t"]


# -- a whole training step, the stage's counters and its end ---------------------------------


class _Noted(Component):
    """CE that notes each ``after_step`` and ``on_stage_end`` with the counters it finds."""

    description = "notes"
    seen: list = []

    def transfer(self, ctx, batch):
        return {"student": torch.nn.functional.cross_entropy(
            batch.out("student").logits, batch.noisy_label, reduction="none")}

    def after_step(self, ctx, batch):
        _Noted.seen.append(("after_step", ctx.step, ctx.stage_step, batch.index.tolist(),
                            ctx.model_version("student")))

    def on_stage_end(self, ctx):
        _Noted.seen.append(("stage_end", ctx.epoch))


def test_train_takes_a_runs_step_then_moves_the_counters_and_calls_after_step():
    """``train`` is a run's whole step: gradients zeroed, the hooks, the backward pass, the
    optimiser step, the counters, ``after_step``; the weights move as plain SGD would move a
    copy of the model on the same loss (momentum and weight decay included, over two
    steps)."""
    _Noted.seen = []
    torch.manual_seed(0)
    net = TinyNet(4, 3)
    ref = TinyNet(4, 3)
    ref.load_state_dict(net.state_dict())
    net.unused = nn.Parameter(torch.ones(2))  # in no loss: a run's SGD leaves it be
    h = harness(_Noted, x=X, noisy_label=NOISY, models={"student": net}, batch_size=2,
                optimizer={"lr": 0.2, "momentum": 0.9, "weight_decay": 1e-3}, name="n")
    with pytest.raises(ValueError, match=r"^Harness.train: no optimiser for student; call "
                                         r"setup\(\) first"):
        h.train(h.batch([0]))
    two = harness(_Noted, x=X, noisy_label=NOISY, train=("student", "peer"),
                  serves=("student",))
    with pytest.raises(ValueError, match=r"^Harness.train: no optimiser for student, peer;"):
        two.train(two.batch([0]))
    h.setup()
    for p in (net.classifier.weight, net.unused):  # stale gradients: gone, not zeros
        p.grad = torch.ones_like(p)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
    for rows in ([0, 3], [4, 1]):
        result = h.train(h.batch(rows))
        sgd.zero_grad()
        expected = torch.nn.functional.cross_entropy(ref(X[rows])[0], NOISY[rows])
        expected.backward()
        sgd.step()
        torch.testing.assert_close(result.losses["student"], expected, rtol=0, atol=0)
    theirs = dict(ref.named_parameters())
    for name, mine in net.named_parameters():
        if name != "unused":
            torch.testing.assert_close(mine, theirs[name], rtol=0, atol=0)
    assert torch.equal(net.unused, torch.ones(2)) and net.unused.grad is None
    assert _Noted.seen == [("after_step", 1, 1, [0, 3], 1), ("after_step", 2, 2, [4, 1], 2)]
    assert (h.ctx.step, h.ctx.stage_step) == (2, 2)
    h.stage_end()
    assert _Noted.seen[-1] == ("stage_end", 0)


class _TakesBackward(Component):
    """Takes the student's backward pass: twice the loss, and, with ``steps``, its own SGD
    step (marked, so the engine's optimiser does not step again)."""

    @attrs.frozen
    class Params:
        steps: bool = False

    description = "takes the backward pass"

    def transfer(self, ctx, batch):
        return {"student": torch.nn.functional.cross_entropy(
            batch.out("student").logits, batch.noisy_label, reduction="none")}

    def backward_roles(self):
        return ("student",)

    def backward(self, ctx, batch, role, loss):
        (2 * loss).backward()
        if self.params.steps:
            with torch.no_grad():
                for p in ctx.models[role].parameters():
                    p -= 1.0 * p.grad
            ctx.mark_stepped(role)
        return True


@pytest.mark.parametrize("steps", [False, True])
def test_train_lets_a_component_take_the_backward_pass_and_the_step(steps):
    torch.manual_seed(0)
    net = TinyNet(4, 3)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    h = harness(_TakesBackward, {"steps": steps}, x=X, noisy_label=NOISY,
                models={"student": net}, optimizer={"lr": 0.1, "weight_decay": 0}).setup()
    h.train(h.batch([0, 1, 2]))
    ref = TinyNet(4, 3)
    ref.load_state_dict(start)
    (2 * torch.nn.functional.cross_entropy(ref(X[[0, 1, 2]])[0], NOISY[[0, 1, 2]])).backward()
    lr = 1.0 if steps else 0.1  # its own step, or the engine's SGD: one step either way
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, start[name] - lr * q.grad, rtol=0, atol=1e-7)
    assert h.ctx.model_version("student") == 1 and not h.run.stepped


class _Detached(Component):
    description = "a loss without gradient"

    def transfer(self, ctx, batch):
        return {"student": batch.out("student").logits.detach().sum(1)}


def test_train_refuses_a_stage_whose_losses_have_no_gradient_as_a_run_does():
    from kdcore.errors import KdcoreError

    h = harness(_Detached, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)}).setup()
    with pytest.raises(KdcoreError, match="model 'student' got a loss without gradient .* so it "
                                          "cannot learn"):
        h.train(h.batch([0, 1]))


@pytest.mark.parametrize(("n", "batch_size", "train", "per_epoch"), [
    (70, None, ("student",), 2),  # the recipe's default batch, 64: 64 and 6
    (10, 4, ("student",), 3),  # 4, 4, 2
    (10, 3, ("student",), 3),  # 3, 3, 4: a last batch of one joins the one before
    (9, 3, ("student",), 3),
    (10, 3, (), 0),  # a stage that trains nothing takes no steps
])
def test_steps_per_epoch_and_each_epochs_first_step_are_a_runs(n, batch_size, train, per_epoch):
    x, y = torch.randn(n, 4), torch.arange(n) % 3
    h = harness(_Noted, x=x, noisy_label=y, batch_size=batch_size, train=train, epochs=4,
                serves=("student",))
    assert h.ctx.steps_per_epoch == per_epoch and h.ctx.stage.epochs == 4
    assert h.ctx.recipe.data.batch_size == (batch_size or 64)
    h.epoch_start(3)
    assert (h.ctx.epoch, h.ctx.step, h.ctx.stage_step) == (3, 3 * per_epoch, 3 * per_epoch)
    for bad, why in (({"batch_size": 0}, r"^data\.batch_size: "), ({"epochs": -1},
                                                                   r"^stages\.epochs: ")):
        with pytest.raises(RecipeError, match=why):
            harness(_Noted, x=x, noisy_label=y, **bad)


def test_each_epoch_starts_at_the_rate_the_recipes_schedule_sets():
    import math

    h = harness(_Noted, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)}, epochs=4,
                optimizer={"lr": 0.4}, schedule={"name": "cosine"}).setup()
    for epoch in (0, 1, 3):
        h.epoch_start(epoch)
        assert h.ctx.lr("student") == pytest.approx(0.2 * (1 + math.cos(math.pi * epoch / 4)))
    steps = harness(_Noted, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)},
                    epochs=3, optimizer={"lr": 1.0},
                    schedule={"name": "multistep", "milestones": [1, 2], "gamma": 0.5}).setup()
    steps.epoch_start(2)
    assert steps.ctx.lr("student") == 0.25
    with pytest.raises(RecipeError, match=r"^schedule\.name: got 'warm'"):
        harness(_Noted, x=X, noisy_label=NOISY, schedule={"name": "warm"})
    bare = harness(_Noted, x=X, noisy_label=NOISY, models={"student": _Stand()})
    bare.setup()
    bare.epoch_start(1)  # no optimiser to set a rate on: nothing to do
    assert bare.ctx.epoch == 1


class _Capture:
    """An observer keeping the run's data, and, as stage 's' starts, its models, optimisers'
    states and torch's random state, and its models as the run ends."""

    @hookimpl
    def kdcore_run_start(self, ctx):
        self.data = ctx.data

    @hookimpl
    def kdcore_epoch_start(self, ctx, epoch):
        if epoch == 0 and ctx.stage.name == "s":  # the stage under test, as it starts
            self.rng = torch.get_rng_state()  # what the first batch finds (mixup's coefficient)
            self.start = {r: copy.deepcopy(m) for r, m in ctx.models.items()}
            self.optimizers = {r: copy.deepcopy(o.state_dict())
                               for r, o in ctx.optimizers.items()}

    @hookimpl
    def kdcore_run_end(self, ctx, summary):
        self.end = {r: copy.deepcopy(m.state_dict()) for r, m in ctx.models.items()}


BY_ITSELF, BESIDE_CE = ({"models": ["student"]}, {"models": ["student"], "beside": ["ce"]})
# how each installed component is placed in stage 's': the models it serves and the stage
# trains, the components after it, a gold split
PLACED = {
    **dict.fromkeys(["ce", "ff_warmup", "hinton_kd", "l2", "lsh", "lshl2", "lshl2_s",
                     "mixup_ce", "mixup_kd", "relational_kd", "ssl_pretrain"], BY_ITSELF),
    "dml": {"models": ["student", "peer"]}, "smkd": {"models": ["student", "peer"]},
    "all_samples": BESIDE_CE, "awe": BESIDE_CE, "initial_lp": BESIDE_CE,
    "instance_filter": BESIDE_CE, "label_correction": BESIDE_CE, "label_smoothing": BESIDE_CE,
    "mutual_lp": BESIDE_CE, "small_loss": BESIDE_CE, "teacher_lp": BESIDE_CE,
    "almkd": {**BESIDE_CE, "gold": 5}, "mlc": {**BESIDE_CE, "gold": 5},
    # MLC trains the teacher beside the student, which it corrects the labels of
    "kdmlc_student": {"models": ["student"], "train": ["teacher", "student"],
                      "beside": [{"use": "mlc", "models": ["teacher"]}], "gold": 5},
}


def _trained_alike(tmp_path, use, placed, plugins=()):
    """Train stage 's' (``use`` placed as ``placed`` says, after a teacher's stage) by a run
    and through the harness over the run's own data, initial weights, optimiser states and
    batches, seeded as the run seeds each component; the largest difference of each trained
    model's weight from the run's ("<role> <name>")."""
    serves = placed["models"]
    train = placed.get("train", serves)
    beside = [{"use": b} if isinstance(b, str) else b for b in placed.get("beside", [])]
    optimizer = {"lr": 0.1, "momentum": 0.5, "weight_decay": 1e-3}
    # a schedule over the stage, but for a teacher trained in the stage before as well
    schedule = {"name": "constant" if "teacher" in train else "cosine"}
    models = {role: {"arch": "mlp", "params": {"hidden": [16 + 8 * i]}, "optimizer": optimizer,
                     "schedule": {"name": "constant"} if role == "teacher" else schedule}
              for i, role in enumerate(["teacher", "student", "peer"])}
    recipe = tiny_recipe(teacher_stage(1), stage("s", 2, train, component(use, models=serves),
                                                 *beside),
                         models=models, batch_size=64, seed=3, gold_per_class=placed.get("gold", 0))
    seen = _Capture()
    run_tiny(recipe, tmp_path / "run", plugins=[seen, *plugins])
    data = seen.data
    h = harness(PluginHost(extra=list(plugins)).components.get(use), x=data.train.x,
                noisy_label=data.train_noisy, models=seen.start, train=train, serves=serves,
                batch_size=64, epochs=2, optimizer=optimizer, schedule=schedule, name=use,
                seed=component_seed(3, 1, use),
                beside=[{**b, "seed": component_seed(3, 1, b.get("name", b["use"]))}
                        for b in beside], plugins=plugins)
    h.run.data = data  # its validation and gold splits too
    h.setup()
    for role, state in seen.optimizers.items():  # the teacher's momentum, carried over
        if role in h.run.optimizers:
            h.run.optimizers[role].load_state_dict(state)
    order = torch.Generator().manual_seed(3 + 2)  # the loop's batch order (kdcore.loop)
    torch.randperm(len(data.train), generator=order)  # the teacher's epoch
    torch.set_rng_state(seen.rng)
    assert len(h.fit(order)) == 2
    assert h.ctx.step == 2 * h.ctx.steps_per_epoch == 10  # 300 digits less 10% validation
    differ = {}
    for role in train:
        mine = h.run.models[role].state_dict()
        assert mine.keys() == seen.end[role].keys()
        differ.update({f"{role} {name}": float((mine[name].double() - value.double()).abs().max())
                       for name, value in seen.end[role].items()})
    return differ


@pytest.mark.slow
@pytest.mark.parametrize(("use", "placed"), [
    # a selection acting on its own term only (own_terms_only), beside a term it leaves be
    ("lshl2_s", {"models": ["student"], "beside": ["ce"]}),
    ("lshl2_s", {"models": ["student", "peer"], "beside": ["dml"]}),
])
def test_a_composition_trained_through_the_harness_ends_where_a_run_of_it_ends(tmp_path, use,
                                                                              placed):
    differ = _trained_alike(tmp_path, use, placed)
    assert differ and set(differ.values()) == {0.0}, {k: v for k, v in differ.items() if v}


@pytest.mark.slow
@pytest.mark.parametrize("use", sorted(PluginHost().components.names()))
def test_a_component_trained_through_the_harness_ends_where_a_run_of_it_ends(tmp_path, use):
    """Every installed component in a stage, alone or before the component it needs (a ``ce``
    beside a selection, an ``mlc`` beside KDMLC's student), once as ``kdcore run`` trains it
    and once through the harness: the models' weights end bit for bit equal (the optimiser
    settings, the schedule's rates, each component's random draws, a backward pass taken
    over, the steps)."""
    assert use in PLACED, f"say in PLACED how a stage trains with '{use}'"
    differ = _trained_alike(tmp_path, use, PLACED[use])
    assert differ and set(differ.values()) == {0.0}, {k: v for k, v in differ.items() if v}


class _RandomScale(Component):
    """CE scaled by a number drawn at set-up (torch's generator) and one drawn each batch (its
    own): what a harness seeded as a run draws alike."""

    description = "CE at random scales"

    def setup(self, ctx):
        self.scale = 1 + float(torch.rand(()))

    def transfer(self, ctx, batch):
        jitter = 1 + torch.rand((), generator=ctx.generator)
        return {r: self.scale * jitter * torch.nn.functional.cross_entropy(
            batch.out(r).logits, batch.noisy_label, reduction="none") for r in self.models}


class _RandomScalePlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"random_scale": _RandomScale}


@pytest.mark.slow
@pytest.mark.parametrize("placed", [BY_ITSELF, {"models": ["student"], "beside": [
    {"use": "label_smoothing"}, {"use": "random_scale", "name": "second"}]}])
def test_a_component_drawing_at_set_up_draws_in_the_harness_what_it_draws_in_a_run(tmp_path,
                                                                                   placed):
    """Alone, and beside a refiner and a second of its kind, each seeded by its own name."""
    differ = _trained_alike(tmp_path, "random_scale", placed, plugins=[_RandomScalePlugin()])
    assert differ and set(differ.values()) == {0.0}, {k: v for k, v in differ.items() if v}


class _Draws(Component):
    """Draws in ``setup`` from torch's generator and from its own, as a network's
    initialisation and a component's sampling would."""

    description = "draws"

    def setup(self, ctx):
        self.drawn = (torch.rand(3).tolist(), torch.rand(2, generator=ctx.generator).tolist())


def test_setup_draws_what_a_run_of_the_component_would_and_leaves_the_tests_random_state():
    torch.manual_seed(11)
    before = torch.get_rng_state()
    h = harness(_Draws, x=X, noisy_label=NOISY, seed=41).setup()
    assert torch.equal(torch.get_rng_state(), before)  # the test's own draws are as they were
    drawn = [torch.rand(n, generator=torch.Generator().manual_seed(s)).tolist()
             for n, s in ((3, 42), (2, 41))]
    assert h.component.drawn == tuple(drawn)


def test_an_optimiser_the_test_sets_keeps_its_rate_at_each_epoch():
    """The schedule sets the rate of the optimisers ``setup`` built only: one the test set
    before ``setup``, or in place of a built one after it, keeps the rate it was given."""
    student, peer = TinyNet(4, 3), TinyNet(4, 3)
    h = harness(_Noted, x=X, noisy_label=NOISY, models={"student": student, "peer": peer},
                train=("student", "peer"), serves=("student",), optimizer={"lr": 1.0},
                schedule={"name": "multistep", "milestones": [1]}, epochs=2)
    h.run.optimizers["student"] = torch.optim.SGD(student.parameters(), lr=0.3)
    h.setup()
    h.epoch_start(1)
    assert (h.ctx.lr("student"), h.ctx.lr("peer")) == (0.3, pytest.approx(0.1))
    h.run.optimizers["peer"] = torch.optim.SGD(peer.parameters(), lr=0.7)
    h.epoch_start(0)
    assert (h.ctx.lr("student"), h.ctx.lr("peer")) == (0.3, 0.7)


class _Recorder(Component):
    """Notes each hook it gets, with its own name and the name its context writes under."""

    description = "records"
    seen: list = []

    def _note(self, hook, ctx):
        _Recorder.seen.append((hook, self.name, ctx.name))

    def setup(self, ctx):
        self._note("setup", ctx)

    def on_stage_start(self, ctx):
        self._note("stage_start", ctx)

    def on_epoch_start(self, ctx):
        self._note("epoch_start", ctx)

    def select(self, ctx, batch):
        self._note("select", ctx)
        return torch.ones(len(batch))

    def after_step(self, ctx, batch):
        self._note("after_step", ctx)

    def on_epoch_end(self, ctx, metrics):
        self._note("epoch_end", ctx)

    def on_stage_end(self, ctx):
        self._note("stage_end", ctx)


def test_components_beside_take_every_hook_after_it_in_recipe_order_each_in_its_context():
    _Recorder.seen = []
    h = harness(_Recorder, {}, x=X, noisy_label=NOISY, models={"student": TinyNet(4, 3)},
                name="a", beside=[{"use": _Recorder, "name": "b"}, {"use": "ce"}],
                optimizer={"lr": 0.1})
    assert [c.name for c in h.placed] == ["a", "b", "ce"] and h.beside == h.placed[1:]
    assert isinstance(h.beside[1], CrossEntropy) and h.contexts["a"] is h.ctx
    assert [(e.use, e.label, e.models) for e in h.ctx.stage.components] == [
        ("a", "a", ["student"]), ("b", "b", ["student"]), ("ce", "ce", ["student"])]
    h.setup()
    h.epoch_start(0)
    result = h.train(h.batch([0, 1]))
    h.epoch_end()
    h.stage_end()
    assert _Recorder.seen == [(hook, n, n) for hook in ("setup", "stage_start", "epoch_start",
                                                       "select", "after_step", "epoch_end",
                                                       "stage_end") for n in "ab"]
    assert [m.column for m in result.masks] == ["select/a", "select/b"]
    assert list(result.terms["student"]) == ["ce"] and h.ctx.model_version("student") == 1


@pytest.mark.parametrize(("beside", "why"), [
    ([{"use": "ce", "wieght": 2}], r"^harness: beside\[0\] has no key 'wieght' \(it takes "
                                   r"enabled, models, name, params, seed, terms, use, "
                                   r"weight\)$"),
    ([{"name": "x"}], r"^harness: beside\[0\] names no component; give its 'use'$"),
    ([{"use": "ce", "name": "r"}], r"^harness: the stage's components need distinct names, "
                                   r"got \['r', 'r'\]$"),
    ([{"use": "ce"}, {"use": "ce"}], r"distinct names, got \['r', 'ce', 'ce'\]$"),
    ([{"use": "c_e"}], r"^unknown component 'c_e' \(did you mean 'ce'\?\); known: "),
    ([{"use": "ce", "params": {"x": 1}}], r"^beside\[0\]\.params"),
])
def test_a_beside_entry_that_no_recipe_would_take_is_refused(beside, why):
    with pytest.raises((ValueError, KdcoreError), match=why):
        harness(_Recorder, x=X, noisy_label=NOISY, name="r", beside=beside)


def test_a_beside_entry_names_a_component_of_an_in_process_plugin():
    h = harness(CrossEntropy, x=X, noisy_label=NOISY, beside=[{"use": "random_scale"}],
                plugins=[_RandomScalePlugin()], models={"student": TinyNet(4, 3)})
    assert isinstance(h.beside[0], _RandomScale) and h.beside[0].name == "random_scale"


def test_a_beside_entry_is_placed_as_its_recipe_entry_says():
    h = harness(_Recorder, x=X, noisy_label=NOISY, name="r", train=("student", "peer"),
                beside=[{"use": "ce", "name": "ce2", "models": ["peer"], "terms": ["x"],
                         "weight": 2.5, "params": {}, "seed": 7},
                        {"use": _Recorder},
                        {"use": "label_smoothing", "params": {"epsilon": 0.2}},
                        component("ce", "off", enabled=False)])  # left out, as in a run
    ce, rec, smooth = h.beside
    assert (ce.name, ce.spec.use, ce.spec.models, ce.spec.terms, ce.spec.weight) == (
        "ce2", "ce", ("peer",), ("x",), 2.5)
    assert (rec.name, rec.spec.use, rec.spec.models, rec.spec.terms, rec.spec.weight) == (
        "_recorder", "_recorder", ("student", "peer"), (), 1.0)
    assert smooth.params.epsilon == 0.2
    assert [(e.label, e.params) for e in h.ctx.stage.components] == [
        ("r", {}), ("ce2", {}), ("_recorder", {}), ("label_smoothing", {"epsilon": 0.2})]
    for name, seed in (("ce2", 7), ("_recorder", 0), ("label_smoothing", 0)):
        assert torch.equal(torch.rand(3, generator=h.contexts[name].generator),
                           torch.rand(3, generator=torch.Generator().manual_seed(seed)))
    with pytest.raises(ValueError, match=r"^harness: beside\[0\] has no key 'a', 'b' \("):
        harness(_Recorder, x=X, noisy_label=NOISY, beside=[{"use": "ce", "b": 1, "a": 2}])


class _Rows(Component):
    """CE that notes each batch's rows and logs its epoch."""

    description = "notes rows"
    rows: list = []

    def transfer(self, ctx, batch):
        _Rows.rows.append((ctx.epoch, batch.index.tolist()))
        return {"student": torch.nn.functional.cross_entropy(
            batch.out("student").logits, batch.noisy_label, reduction="none")}

    def on_epoch_end(self, ctx, metrics):
        ctx.log_metric("seen", float(ctx.epoch))


@pytest.mark.parametrize("order", [None, 5])
def test_fit_trains_the_stages_epochs_in_the_loops_order_then_ends_it(order):
    _Rows.rows = []
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    h = harness(_Rows, x=x, noisy_label=y, models={"student": TinyNet(4, 3)}, batch_size=4,
                epochs=2, name="rows", beside=[{"use": _Recorder, "name": "rec"}]).setup()
    _Recorder.seen = []
    gen = torch.Generator().manual_seed(order) if order is not None else None
    metrics = h.fit(gen)
    shuffle = torch.Generator().manual_seed(2 if order is None else order)  # a run's: seed + 2
    expected = []
    for epoch in range(2):
        perm = torch.randperm(10, generator=shuffle).tolist()
        expected += [(epoch, perm[:4]), (epoch, perm[4:8]), (epoch, perm[8:])]
    assert _Rows.rows == expected
    assert metrics == [{"seen": 0.0}, {"seen": 1.0}]  # logged: each epoch's own, as a row
    assert h.metrics == {}
    assert (h.ctx.step, h.ctx.model_version("student")) == (6, 6)
    assert [s[0] for s in _Recorder.seen if s[0] != "select"] == [
        "epoch_start", *["after_step"] * 3, "epoch_end"] * 2 + ["stage_end"]


def test_the_stage_lists_each_entry_as_written_and_terms_default_as_the_plan_sets_them():
    """``ctx.stage.components`` holds the entries as a recipe writes them (``terms`` as listed,
    the parameters given); the specs act on the terms the plan gives them (an
    ``own_terms_only`` selection, ``lshl2_s``, on its own term alone)."""
    h = harness(LabelSmoothing, {"epsilon": 0.2}, x=X, noisy_label=NOISY, name="ls",
                terms=("ce",), beside=[{"use": "ce", "terms": ["ls"]}, {"use": "lshl2_s"}])
    assert [(e.label, e.terms, e.params) for e in h.ctx.stage.components] == [
        ("ls", ["ce"], {"epsilon": 0.2}), ("ce", ["ls"], {}), ("lshl2_s", [], {})]
    assert [c.spec.terms for c in h.placed] == [("ce",), ("ls",), ("lshl2_s",)]
