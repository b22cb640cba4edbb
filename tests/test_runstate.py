"""The running training's state and a component's view of it (kdcore/runstate.py), on a
prepared run of the tiny digits recipe: seeds, the facts a context reads through, the model
calls in and out of the graph, the cached full-set features, the tagged ledger's refusals."""

from __future__ import annotations

import re
import zlib

import pytest
import torch

import kdcore
from kdcore import PluginHost
from kdcore.plan import build_plan
from kdcore.prepare import prepare_run
from kdcore.recipe import recipe_from_dict
from kdcore.runstate import ComponentContext, Run, component_seed, role_seed
from kdcore.tagged_ledger import TaggedLedger
from kdcore.testing import component, stage, teacher_stage, tiny_recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    recipe = tiny_recipe(teacher_stage(3), stage("s", 2, ["student"], component("ce")),
                         stage("both", 4, ["teacher", "student"], component("ce")),
                         train_subset=100, data={"params": {"flatten": False}, "augment": [
                             {"name": "cutout", "params": {"size": 2}}]})
    host = PluginHost()
    plan = build_plan(recipe_from_dict(recipe), host)
    prepared = prepare_run(plan, host, tmp_path_factory.mktemp("run"))
    for role, model in prepared.models.items():  # as a stage's start makes them
        prepared.optimizers[role] = torch.optim.SGD(model.parameters(), lr=0.1)
    return prepared


def _at(run: Run, stage_index: int, epoch: int) -> None:
    run.stage_index, run.stage, run.epoch = stage_index, run.recipe.stages[stage_index], epoch


def test_seeds_per_role_and_placement_are_the_documented_formula():
    assert role_seed(0, "teacher") == zlib.crc32(b"teacher")
    assert role_seed(1, "a") == 1_000_003 + 0xE8B7BE43  # crc32(b"a")
    assert role_seed(2**62, "a") == (2**62 * 1_000_003 + 0xE8B7BE43) % 2**63
    assert component_seed(7, 2, "lp") == role_seed(7, "2/lp") != component_seed(7, 1, "lp")


def test_role_epoch_counts_the_earlier_stages_that_trained_the_role(run):
    # stages: teacher 3 epochs (teacher), s 2 (student), both 4 (teacher and student)
    for (s, epoch), teacher, student in (((0, 0), 0, 0), ((0, 2), 2, 0), ((1, 1), 3, 1),
                                         ((2, 0), 3, 2), ((2, 3), 6, 5)):
        _at(run, s, epoch)
        assert (run.role_epoch("teacher"), run.role_epoch("student")) == (teacher, student)
    _at(run, 1, 0)
    assert run.trains("student") and not run.trains("teacher")


def test_model_calls_keep_the_graph_only_for_trained_models(run):
    _at(run, 1, 0)  # the student trains, the teacher is frozen
    x = run.data.inputs(run.data.train, torch.arange(5))
    out = run.forward("student", x)
    assert out.logits.requires_grad and out.logits.shape == (5, run.num_classes)
    assert not run.forward("teacher", x).logits.requires_grad
    with torch.no_grad():  # a selector asks first inside no_grad: the terms need the graph
        assert run.forward("student", x).logits.requires_grad
    with torch.no_grad():
        expected = run.models["student"](x)[0]
    torch.testing.assert_close(out.logits.detach(), expected)
    torch.testing.assert_close(run.predict(run.models["student"], x), expected)


def test_full_set_features_are_cached_per_version_and_computed_in_eval_mode(run):
    _at(run, 1, 0)
    model = run.models["teacher"]
    model.train()
    first = run.features("teacher", "test")
    assert model.training  # its mode given back
    assert run.features("teacher", "test") is first
    model.eval()
    with torch.no_grad():
        logits, features = model(run.data.inputs(run.data.test, slice(None)))
    model.train()
    torch.testing.assert_close(first.logits, logits)
    torch.testing.assert_close(first.features, features)
    version = run.model_version("teacher")
    run.bump("teacher")
    assert run.model_version("teacher") == version + 1
    again = run.features("teacher", "test")
    assert again is not first
    torch.testing.assert_close(again.logits, first.logits)  # the weights did not change
    assert run.features("teacher", "train").logits.shape[0] == len(run.data.train)


def test_augment_applies_the_recipes_augmentations_with_the_given_generator(run):
    x = run.data.inputs(run.data.train, torch.arange(4))
    fn, params = run.augmentations[0]
    expected = fn(x, torch.Generator().manual_seed(3), **params)
    torch.testing.assert_close(run.augment(x, torch.Generator().manual_seed(3)), expected)
    assert not torch.equal(expected, x)


def test_record_data_needs_the_engines_history(run):
    with pytest.raises(RuntimeError, match=r"^record_data: this run has no history \(not "
                                           r"started by the engine\)$"):
        run.record_data("x", torch.zeros(2))
    got = []
    run.write_data = lambda name, values: got.append((name, values))
    try:
        run.record_data("x", torch.ones(2))
    finally:
        run.write_data = None
    assert got[0][0] == "x" and got[0][1].tolist() == [1.0, 1.0]


def test_precision_runs_models_in_low_precision_and_hands_back_float32(tmp_path):
    recipe = tiny_recipe(teacher_stage(1), train_subset=100, run={"precision": "bf16"})
    host = PluginHost()
    bf16 = prepare_run(build_plan(recipe_from_dict(recipe), host), host, tmp_path)
    x = bf16.data.inputs(bf16.data.train, torch.arange(3))
    with bf16.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu")
    out = bf16.forward("teacher", x)
    assert out.logits.dtype == torch.float32 and out.features.dtype == torch.float32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = bf16.models["teacher"](x)[0].float()
    torch.testing.assert_close(out.logits.detach(), expected)


def test_fp32_runs_without_autocast(run):
    with run.autocast():
        assert not torch.is_autocast_enabled("cpu")


# -- a component's view -------------------------------------------------------------------------


def test_a_context_asked_for_a_model_the_recipe_lacks_names_the_models(run):
    ctx = ComponentContext(run, "me", torch.Generator())
    _at(run, 1, 0)  # the student trains, the teacher does not
    x = run.data.inputs(run.data.train, torch.arange(2))
    versions = {r: run.model_version(r) for r in run.models}
    calls = {"lr": lambda: ctx.lr("nope"), "version": lambda: ctx.model_version("nope"),
             "epoch": lambda: ctx.role_epoch("nope"), "forward": lambda: ctx.forward("nope", x),
             "features": lambda: ctx.features("nope"),
             "stepped": lambda: ctx.mark_stepped("nope")}
    for call in calls.values():
        with pytest.raises(KeyError, match=re.escape(
                "no model 'nope'; the recipe's models: teacher, student")):
            call()
    assert {r: run.model_version(r) for r in run.models} == versions
    with pytest.raises(ValueError, match=re.escape(
            "mark_stepped('teacher'): this stage does not train model 'teacher'")):
        ctx.mark_stepped("teacher")  # the engine steps only what the stage trains
    assert not run.stepped
    optimizer = run.optimizers.pop("teacher")  # as before a stage first trains the teacher
    try:
        with pytest.raises(KeyError, match=re.escape(
                "model 'teacher' has no optimiser yet: no stage so far trains it")):
            ctx.lr("teacher")
    finally:
        run.optimizers["teacher"] = optimizer
    assert ctx.lr("teacher") == 0.1 and ctx.role_epoch("teacher") == 3


def test_a_context_reads_the_runs_facts_as_they_change(run):
    ctx = ComponentContext(run, "me", torch.Generator().manual_seed(0))
    for s, epoch, step in ((0, 1, 5), (2, 3, 40)):
        _at(run, s, epoch)
        run.step, run.stage_step, run.steps_per_epoch, run.resumed = step, step - 1, 7, bool(s)
        assert (ctx.stage, ctx.stage_index, ctx.epoch, ctx.step, ctx.stage_step) == (
            run.recipe.stages[s], s, epoch, step, step - 1)
        assert ctx.steps_per_epoch == 7 and ctx.resumed is bool(s)
        assert ctx.role_epoch("student") == run.role_epoch("student")
        assert ctx.trains("teacher") is run.trains("teacher")
    assert (ctx.recipe, ctx.run_dir, ctx.device, ctx.data, ctx.cache) == (
        run.recipe, run.run_dir, run.device, run.data, run.cache)
    assert ctx.roles == ("teacher", "student") and ctx.num_classes == 10
    run.optimizers["student"].param_groups[0]["lr"] = 0.125
    assert ctx.lr("student") == 0.125
    run.bump("student")
    assert ctx.model_version("student") == run.model_version("student")
    with pytest.raises(TypeError):
        ctx.models["student"] = run.models["teacher"]  # read-only views
    with pytest.raises(TypeError):
        ctx.optimizers["student"] = run.optimizers["teacher"]
    assert ctx.models["student"] is run.models["student"]


def test_a_contexts_capabilities_reach_the_run(run):
    ctx = ComponentContext(run, "me", torch.Generator().manual_seed(5))
    _at(run, 1, 0)  # the student trains
    ctx.log_metric("me/x", torch.tensor(0.5))
    assert run.epoch_metrics["me/x"] == 0.5 and type(run.epoch_metrics["me/x"]) is float
    ctx.mark_stepped("student")
    assert "student" in run.stepped
    run.stepped.clear()
    x = run.data.inputs(run.data.train, torch.arange(4))
    torch.testing.assert_close(ctx.augment(x), run.augment(x, torch.Generator().manual_seed(5)))
    torch.testing.assert_close(ctx.augment(x, torch.Generator().manual_seed(9)),
                               run.augment(x, torch.Generator().manual_seed(9)))
    _at(run, 1, 0)
    torch.testing.assert_close(ctx.forward("teacher", x).logits,
                               run.forward("teacher", x).logits)
    assert ctx.features("teacher", "test") is run.features("teacher", "test")
    got = []
    run.write_data = lambda name, values: got.append(name)
    try:
        ctx.record_data("me/y", torch.zeros(1))
    finally:
        run.write_data = None
    assert got == ["me/y"]


def test_the_tagged_ledger_tags_writes_and_refuses_undeclared_ones(run):
    ledger = TaggedLedger(run.ledger, "me", frozenset({"me/b", "me/a"}))
    n = ledger.size
    assert n == run.ledger.size == len(run.data.train)
    ledger.add("me/a", torch.zeros(n), kind="weight")
    ledger.write("me/a", torch.tensor([1, 2]), torch.tensor([0.5, 0.25]), kind="weight")
    assert ledger.producer("me/a") == "me" and ledger.kind("me/a") == "weight"
    assert ledger["me/a"][:3].tolist() == [0.0, 0.5, 0.25]
    assert ledger.read("me/a", torch.tensor([2])).tolist() == [0.25]
    assert "me/a" in ledger and "me/b" not in ledger and "me/a" in list(ledger)
    made = ledger.ensure("me/b", torch.zeros(n), kind="mask", fill=True, snapshot=False)
    assert made.all() and run.ledger.column("me/b").snapshot is False
    assert ledger.kind("me/b") == "mask" and ledger.producer("me/b") == "me"
    with pytest.raises(RuntimeError) as info:
        ledger.add("other", torch.zeros(n))
    assert str(info.value) == ("component 'me' wrote ledger column 'other', which it does not "
                               "declare (declared: me/a, me/b); add it to the class's `writes`")
    with pytest.raises(RuntimeError, match=r"\(declared: none\)"):
        TaggedLedger(run.ledger, "you", frozenset()).write("x", torch.tensor([0]),
                                                           torch.zeros(1))
    TaggedLedger(run.ledger, "observer", None).add("anything", torch.zeros(n))
    assert run.ledger.producer("anything") == "observer"


@pytest.mark.parametrize(("existing", "name", "problem"), [
    ("o/x", "o", "'o' beside 'o/x': the history keeps a name with '/' as a folder of columns"),
    ("o", "o/x", "'o/x' beside 'o': the history keeps a name with '/' as a folder of columns"),
    (None, "a//b", "'a//b' is not a path of named parts (a/b/c)"),
    (None, 5, "int 5 is not a string"),
    (None, "noisy_label", "'noisy_label' is the data's (noisy_label, clean_label, clean_mask "
                          "are read only)"),
])
def test_a_plugins_new_column_is_one_the_history_can_keep(existing, name, problem):
    """An observer declares no columns: 'o' beside 'o/x' failed in h5py at the epoch's end
    (the whole run stopped), 'a//b' was kept as 'a/b', and noisy_label could be rewritten."""
    from kdcore.ledger import Ledger

    ledger = Ledger(4)
    ledger.add("noisy_label", torch.zeros(4), producer="data", kind="label")
    if existing:
        ledger.add(existing, torch.zeros(4), producer="p")
    observer = TaggedLedger(ledger, "p", None)
    for write in (lambda: observer.add(name, torch.ones(4)),
                  lambda: observer.write(name, torch.tensor([0]), torch.ones(1)),
                  lambda: observer.ensure(name, torch.ones(4))):
        with pytest.raises(RuntimeError) as info:
            write()
        assert str(info.value) == (f"plugin 'p' wrote ledger column {name!r}, which the history "
                                   f"cannot keep: {problem}")
    assert list(ledger) == ["noisy_label", *([existing] if existing else [])]
    assert not ledger["noisy_label"].any()
    if existing:  # a column it made before: written again without a check
        observer.write(existing, torch.tensor([1]), torch.ones(1))
        assert ledger[existing].tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize(("name", "shared"), [
    ("select/small_loss/student", "select/small_loss"), ("weight/awe/peer", "weight/awe"),
    ("select/small_loss", None), ("loss/ce/student", None), ("select/a/b/c", None),
    ("select//student", None), ("select/a/", None), ("weights/a/b", None), ("select", None)])
def test_a_models_hook_column_is_the_hooks_one_column_where_that_was_written(name, shared):
    """A hook that returned one tensor wrote ``select/<name>`` for every model it serves; a
    reader naming ``select/<name>/<role>`` (which the plan counts as written) reads that one
    (a label propagation had stopped the run on it). A column written as named comes first."""
    from kdcore.ledger import Ledger
    from kdcore.tagged_ledger import shared_hook_column

    assert shared_hook_column(name) == shared
    ledger = Ledger(3)
    reader = TaggedLedger(ledger, "lp", frozenset())
    assert name not in reader and 5 not in reader  # not a name at all: no column
    if shared is None:
        return
    ledger.add(shared, torch.tensor([True, False, True]), producer="s", kind="mask")
    assert name in reader
    assert torch.equal(reader[name], ledger[shared])
    assert torch.equal(reader.read(name, torch.tensor([2, 1])), torch.tensor([True, False]))
    assert (reader.kind(name), reader.producer(name)) == ("mask", "s")
    ledger.add(name, torch.tensor([False, False, True]), producer="t", kind="weight")
    assert torch.equal(reader[name], torch.tensor([False, False, True]))
    assert (reader.kind(name), reader.producer(name)) == ("weight", "t")
    with pytest.raises(KeyError, match="no ledger column 'select/other/student'"):
        reader["select/other/student"]


def test_the_tagged_ledger_refuses_an_unknown_kind_and_values_that_are_no_tensor():
    """An unknown kind failed only in the history's write at the epoch's end (a KeyError that
    named no component); numpy values or a list, in torch's ``.dim`` (an AttributeError)."""
    import numpy as np

    from kdcore.ledger import Ledger

    ledger = Ledger(4)
    mine = TaggedLedger(ledger, "me", frozenset({"me/a"}))
    with pytest.raises(ValueError) as info:
        mine.add("me/a", torch.zeros(4), kind="wat")
    assert str(info.value) == ("ledger column 'me/a': kind 'wat' is none of label, target, "
                               "mask, weight, value, exact")
    for write in (lambda: mine.write("me/a", torch.tensor([0]), torch.ones(1), kind="values"),
                  lambda: mine.ensure("me/a", torch.ones(4), kind="")):
        with pytest.raises(ValueError, match="^ledger column 'me/a': kind '.*' is none of "):
            write()
    for write, given in ((lambda: mine.add("me/a", np.zeros(4)), "ndarray"),
                         (lambda: mine.add("me/a", [0.0] * 4), "list"),
                         (lambda: mine.write("me/a", [0], torch.ones(1)), "list"),
                         (lambda: mine.write("me/a", torch.tensor([0]), 1.0), "float"),
                         (lambda: mine.ensure("me/a", np.ones(4)), "ndarray")):
        with pytest.raises(TypeError) as info:
            write()
        assert str(info.value) == (f"ledger column 'me/a' takes torch tensors, not {given} "
                                   "(torch.as_tensor makes one)")
    assert list(ledger) == []
    for kind in ("label", "target", "mask", "weight", "value", "exact"):
        mine.add("me/a", torch.ones(4, 2 if kind == "target" else 1).squeeze(1), kind=kind)
        assert ledger.column("me/a").kind == kind


def test_the_tagged_ledger_refuses_every_write_while_frozen(run):
    ledger = TaggedLedger(run.ledger, "me", None)
    n = ledger.size
    with ledger.frozen("setup"):
        for write in (lambda: ledger.add("f", torch.zeros(n)),
                      lambda: ledger.write("f", torch.tensor([0]), torch.zeros(1)),
                      lambda: ledger.ensure("f", torch.zeros(n))):
            with pytest.raises(RuntimeError) as info:
                write()
            assert str(info.value) == (
                "component 'me' wrote ledger column 'f' in setup, which must not write the "
                "ledger (it runs again on resume and before the run's first stage); write it "
                "in on_stage_start")
    ledger.add("f", torch.zeros(n))  # thawed once the hook ends
    with pytest.raises(ValueError), ledger.frozen("setup"):
        raise ValueError
    ledger.add("f", torch.ones(n))  # thawed after a hook that raised too
    assert run.ledger["f"].sum() == n and run.ledger.producer("f") == "me"


def test_a_new_run_starts_at_the_first_stage_with_nothing_done(tmp_path, run):
    recipe = recipe_from_dict(tiny_recipe(teacher_stage(2), seed=11))
    fresh = Run(recipe, tmp_path, torch.device("cpu"), [])
    assert fresh.run_dir == tmp_path and fresh.stage is recipe.stages[0]
    assert (fresh.stage_index, fresh.epoch, fresh.step, fresh.stage_step,
            fresh.steps_per_epoch) == (0, 0, 0, 0, 0)
    assert fresh.resumed is False and fresh.channels_last is False
    assert fresh.augmentations == [] and fresh.write_data is None
    assert fresh.cache == {} and fresh.epoch_metrics == {} and fresh.stepped == set()
    # the run's own generator is seeded with seed + 1, apart from torch's global one (seed)
    assert torch.equal(torch.rand(4, generator=fresh.generator),
                       torch.rand(4, generator=torch.Generator().manual_seed(12)))
    with pytest.raises(KeyError, match=re.escape("no model 'anyone'; the recipe's models: none")):
        fresh.model_version("anyone")  # a harness given no models, say
    fresh.models.update(anyone=torch.nn.Linear(1, 1), other=torch.nn.Linear(1, 1))
    assert fresh.model_version("anyone") == 0
    fresh.bump("anyone")
    fresh.bump("anyone")
    assert fresh.model_version("anyone") == 2 and fresh.model_version("other") == 0
    fresh.data, fresh.models = run.data, run.models  # as prepare_run sets them
    assert fresh.features("teacher", "test") is fresh.features("teacher", "test")


def test_autocast_asks_for_the_recipes_precision_on_the_runs_device(tmp_path):
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        recipe = recipe_from_dict(tiny_recipe(teacher_stage(1), run={"precision": precision}))
        with pytest.warns(UserWarning):  # no GPU here: torch disables it, keeping its dtype
            context = Run(recipe, tmp_path, torch.device("cuda"), []).autocast()
        assert (context.device, context.fast_dtype) == ("cuda", dtype)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_in_a_distributed_run_each_rank_computes_its_rows(tmp_path, monkeypatch, precision):
    """Run._call hands the model call to distributed.split_call, here two ranks simulated in
    one process (the real collectives: tests/test_distributed.py)."""
    from kdcore import distributed

    recipe = tiny_recipe(teacher_stage(1), train_subset=100, run={"precision": precision})
    host = PluginHost()
    two = prepare_run(build_plan(recipe_from_dict(recipe), host), host, tmp_path)
    model = two.models["teacher"].eval()
    x = two.data.inputs(two.data.train, torch.arange(6))
    with torch.no_grad(), two.autocast():
        expected = [t.float() for t in model(x)]
    parts = []

    def split_call(fn, rows):
        parts.append(rows.shape[0])
        halves = [fn(rows[:4]), fn(rows[4:])]  # rank 0's rows, then rank 1's
        return tuple(torch.cat(p) for p in zip(*halves))

    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=2))
    monkeypatch.setattr(distributed, "split_call", split_call)
    with torch.no_grad():
        logits, features = two.predict(model, x), two.forward("teacher", x).features
    assert parts == [6, 6]
    assert logits.dtype == torch.float32 and features.dtype == torch.float32
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(features, expected[1])


def test_the_tagged_ledgers_defaults_are_the_ledgers(run):
    ledger = TaggedLedger(run.ledger, "d", None)
    n = ledger.size
    ledger.add("d/a", torch.zeros(n))
    ledger.write("d/b", torch.tensor([0]), torch.ones(1))
    made = ledger.ensure("d/c", torch.zeros(n))
    for name in ("d/a", "d/b", "d/c"):
        column = run.ledger.column(name)
        assert (column.kind, column.snapshot, column.producer) == ("value", True, "d"), name
    assert not made.any()
    ledger.write("d/e", torch.tensor([1]), torch.ones(1), kind="mask", snapshot=False)
    column = run.ledger.column("d/e")
    assert (column.kind, column.snapshot, column.producer) == ("mask", False, "d")
    ledger.add("d/f", torch.zeros(n), kind="weight", snapshot=False)
    column = run.ledger.column("d/f")
    assert (column.kind, column.snapshot) == ("weight", False)


def test_a_contexts_name_ledger_and_views_are_its_own(run):
    ctx = ComponentContext(run, "mine", torch.Generator(), frozenset({"mine/x"}))
    assert ctx.name == "mine"
    ctx.ledger.add("mine/x", torch.zeros(ctx.ledger.size))
    assert run.ledger.producer("mine/x") == "mine"
    with pytest.raises(RuntimeError, match=r"\(declared: mine/x\)"):
        ctx.ledger.add("mine/y", torch.zeros(ctx.ledger.size))
    assert dict(ctx.optimizers) == run.optimizers
    _at(run, 1, 0)
    assert ctx.features("teacher") is run.features("teacher", "train")
    got = []
    run.write_data = lambda name, values: got.append(values)
    try:
        ctx.record_data("mine/z", torch.tensor([4.0]))
    finally:
        run.write_data = None
    assert got[0].tolist() == [4.0]


# -- what a component records in /data ------------------------------------------------------------

def _recording_context():
    import numpy as np

    from kdcore.testing import harness

    h = harness(kdcore.Component, x=torch.zeros(6, 2), noisy_label=torch.tensor([0, 1] * 3))
    written: dict[str, object] = {}
    h.run.write_data = written.__setitem__
    return h.ctx, written, np


@pytest.mark.parametrize(("name", "values", "message"), [
    ("noisy_label", torch.zeros(3), "record_data's name 'noisy_label' is the engine's"),
    ("input_digest", torch.zeros(3), "record_data's name 'input_digest' is the engine's"),
    ("file_size", torch.zeros(3), "record_data's name 'file_size' is the engine's"),
    ("test_confusion/s/student", torch.zeros(3),
     "record_data's name 'test_confusion/s/student' is the engine's"),
    ("", torch.zeros(3), "record_data's name '' is not a path of named parts (a/b/c)"),
    ("mine//x", torch.zeros(3), "record_data's name 'mine//x' is not a path of named parts"),
    (5, torch.zeros(3), "record_data's name int 5 is not a string"),
    ("mine/list", [1, 2, 3], "record_data takes a tensor or a numpy array, not list (for "
                             "'mine/list')"),
])
def test_a_component_cannot_record_over_the_engines_data_or_under_an_impossible_name(
        name, values, message):
    """noisy_label replaced by 3 zeros was written without a word (the history's labels,
    which resume and inspect read, gone); '' or 5 were h5py tracebacks."""
    from kdcore.failures import RunFailed

    ctx, written, _ = _recording_context()
    ctx.record_data("mine/ok", torch.zeros(1))  # a name recorded before: compared with it too
    with pytest.raises(RunFailed) as err:
        ctx.record_data(name, values)
    assert str(err.value).startswith(f"component '{ctx.name}': {message}"), str(err.value)
    assert list(written) == ["mine/ok"]
    if message.endswith("is the engine's"):
        assert str(err.value).endswith(
            "is the engine's (noisy_label, clean_label, clean_mask, sample_id, "
            "transition_matrix, test_confusion, input_digest, file_size); record under a name "
            "of your own")


def test_a_component_records_arrays_again_but_not_one_inside_another():
    """'g/a' then 'g' deleted the folder g, and 'g/a' with it, without a word."""
    from kdcore.failures import RunFailed

    ctx, written, np = _recording_context()
    ctx.record_data("mine/x", torch.arange(3))
    ctx.record_data("mine/x", torch.arange(4))  # recorded again: replaced, as every epoch may
    ctx.record_data("mine/y", np.arange(2))
    assert list(written) == ["mine/x", "mine/y"] and len(written["mine/x"]) == 4
    for name, other in (("mine", "mine/x"), ("mine/x/deeper", "mine/x")):
        with pytest.raises(RunFailed) as err:
            ctx.record_data(name, torch.zeros(1))
        assert str(err.value) == (f"component '{ctx.name}': record_data's names '{other}' and "
                                  f"'{name}' cannot both be kept: a name with '/' is a folder "
                                  "of arrays")


def test_a_resumed_run_knows_the_names_recorded_before_it(tmp_path, monkeypatch):
    """Without them, a resumed run's 'g' replaced the folder 'g/a' of an earlier record."""
    import numpy as np

    from kdcore.failures import RunFailed
    from kdcore.history_writer import HistoryWriter
    from kdcore.ledger import Ledger

    writer = HistoryWriter(tmp_path / "history.h5")
    writer.create(recipe_toml="", versions={}, num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.zeros(3, dtype=np.int32)},
                  transition_matrix=np.eye(2))
    for name in ("g/a", "test_confusion/s/student", "h"):
        writer.add_data(name, np.ones(2))
    run = Run(recipe_from_dict(tiny_recipe(teacher_stage(1))), tmp_path, torch.device("cpu"), [])
    run.write_data, run.ledger = writer.add_data, Ledger(3)
    run.recorded["mine"] = None
    assert run.recorded_names() == {"mine": None}  # a new run: its own names only
    run.resumed = True
    monkeypatch.setattr(kdcore.distributed, "is_main", lambda: False)
    assert run.recorded_names() == {"mine": None}  # another process than the history's writer
    monkeypatch.undo()
    assert list(run.recorded_names()) == ["g/a", "h", "mine"]  # the engine's arrays left out
    run.recorded.pop("h")
    assert list(run.recorded_names()) == ["g/a", "mine"]  # read once
    component = ComponentContext(run, "c", torch.Generator(), frozenset())
    with pytest.raises(RunFailed, match=re.escape(
            "component 'c': record_data's names 'g/a' and 'g' cannot both be kept")):
        component.record_data("g", torch.zeros(1))
    with pytest.raises(RunFailed, match=re.escape("plugin 'p': record_data's names 'g/a' and")):
        ComponentContext(run, "p", torch.Generator()).record_data("g/a/b", torch.zeros(1))
    with kdcore.History(tmp_path) as history:  # nothing written over the earlier record
        assert "g/a" in history.data_names() and "g/a/b" not in history.data_names()
