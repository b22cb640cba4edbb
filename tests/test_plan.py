"""The run plan's checks (kdcore/plan.py), each at its boundary: what it accepts, what it
refuses, and the one line and key path it refuses with. The expected key paths and column sets
are written out by hand from the recipes below, not taken from the code."""

from __future__ import annotations

import re

import attrs
import pytest
import torch
from loguru import logger

import kdcore
from kdcore import PluginHost, RecipeError, hookimpl
from kdcore.component import BATCH_HOOKS
from kdcore.context import ColumnName, Role
from kdcore.dataflow import DATA_COLUMNS
from kdcore.plan import build_plan, check_distributed
from kdcore.recipe import load_recipe, recipe_from_dict
from kdcore.testing import MODELS, component, stage, teacher_stage, tiny_recipe, write_recipe


@attrs.frozen
class TakerParams:
    column: ColumnName = ColumnName("")
    role: Role = Role("")
    others: tuple[Role, ...] = ()


class Taker(kdcore.Component):
    """Reads ``column``, uses ``role`` and ``others``; selects."""

    Params = TakerParams
    description = "test reader of a column"

    def roles(self):
        return tuple(r for r in (self.params.role, *self.params.others) if r)

    def select(self, ctx, batch):
        return None


class Writer(kdcore.Component):
    """Writes ``w/<name>`` (undeclared kind) and weights."""

    description = "test writer"
    writes = ("w/{name}",)

    def weight(self, ctx, batch):
        return None


class Everything(kdcore.Component):
    """Every batch hook at once, and the two engine-side ones."""

    description = "test component of every kind"
    own_terms_only = True

    def refine(self, ctx, batch, targets):
        return targets

    def select(self, ctx, batch):
        return None

    def weight(self, ctx, batch):
        return None

    def transfer(self, ctx, batch):
        return torch.zeros(len(batch))

    def backward(self, ctx, batch, role, loss):
        return False

    def after_step(self, ctx, batch):
        pass


@attrs.frozen
class PickyParams:
    k: int = 1


class Picky(kdcore.Component):
    """Refuses ``k`` < 1 in its own constructor, as plugins check their parameters."""

    Params = PickyParams
    description = "test component with its own parameter check"

    def __init__(self, params, spec):
        if params.k < 1:
            raise ValueError(f"k must be at least 1, got {params.k}")
        super().__init__(params, spec)

    def transfer(self, ctx, batch):
        return torch.zeros(len(batch))


class Local(kdcore.Component):
    description = "test component that cannot run distributed"
    distributed = False

    def select(self, ctx, batch):
        return None


class LocalWhy(Local):
    description = "test component that says why it cannot run distributed"
    distributed = "its graph spans every sample"


class Uncompiled(Local):
    description = "test component that cannot work on compiled models"
    distributed = True
    compiled = "it takes gradients of gradients"


class UncompiledUnsaid(Uncompiled):
    description = "test component that cannot work on compiled models, without a reason"
    compiled = False


@attrs.frozen
class AtStartParams:
    column: ColumnName = ColumnName("")
    hook: str = "on_epoch_start"
    also: str = ""  # one more column read there, not a parameter the plan reads as a column


@attrs.frozen
class WriterParams:
    column: str = ""
    hook: str = "on_epoch_start"  # "": in the batches; "late"/"late_only[@E]": from epoch E (1)


class StartReader(kdcore.Component):
    """Reads ``column`` before its stage's first batch, in ``hook``."""

    Params = AtStartParams
    description = "test reader of a column at its stage's start"

    def reads_at_start(self):
        also = {self.params.also: self.params.hook} if self.params.also else {}
        return {self.params.column: self.params.hook, **also}

    def select(self, ctx, batch):
        return None


class ColumnWriter(kdcore.Component):
    """Writes ``column`` itself, in ``hook`` (``""``: in the batches)."""

    Params = WriterParams
    description = "test writer of a column at a chosen time"

    def __init__(self, params, spec):
        super().__init__(params, spec)
        self.writes = (params.column,)

    def writes_at_start(self):
        hook = self.params.hook
        if hook.startswith("late_only"):  # overrides late_writes alone: the default says
            # on_stage_start
            return super().writes_at_start()
        return {self.params.column: hook} if hook.startswith("on_") else {}

    def late_writes(self):
        hook = self.params.hook
        return {self.params.column: int(hook.partition("@")[2] or 1)} if "late" in hook else {}

    def writes_in_batch(self):
        hook = self.params.hook  # a batch hook's name: written there ("": in select, its own)
        return {self.params.column: hook} if hook in BATCH_HOOKS else super().writes_in_batch()

    def select(self, ctx, batch):
        return None


class LateTwo(kdcore.Component):
    """Writes two columns, from epoch 3 of its stage."""

    description = "test writer of two columns from a later epoch"
    writes = ("w/{name}/b", "w/{name}/a")

    def late_writes(self):
        return dict.fromkeys(self.written_columns(), 3)


class BatchReader(kdcore.Component):
    """Reads ``column`` in the batch hook ``hook`` (declared; it overrides ``select`` only)."""

    Params = AtStartParams
    description = "test reader of a column in a chosen batch hook"

    def reads_in_batch(self):
        also = {self.params.also: self.params.hook} if self.params.also else {}
        return {**also, self.params.column: self.params.hook}

    def select(self, ctx, batch):
        return None


class TransferReader(kdcore.Component):
    """Reads ``column`` in its ``transfer`` hook (the last of a batch's kinds)."""

    Params = TakerParams
    description = "test reader of a column in transfer"

    def roles(self):
        return ()

    def transfer(self, ctx, batch):
        return torch.zeros(len(batch))


class Components:
    @hookimpl
    def kdcore_add_components(self):
        return {"taker": Taker, "writer": Writer, "everything": Everything, "picky": Picky,
                "local": Local, "local_why": LocalWhy, "start_reader": StartReader,
                "uncompiled": Uncompiled, "uncompiled_unsaid": UncompiledUnsaid,
                "column_writer": ColumnWriter, "late_two": LateTwo,
                "transfer_reader": TransferReader, "batch_reader": BatchReader}


SOURCE = "recipes/under_test.toml"  # every refusal names the recipe file


def _recipe(*stages, **fields):
    return recipe_from_dict(tiny_recipe(*stages, **fields), SOURCE)


def _plan(*stages, host=None, **fields):
    return build_plan(_recipe(*stages, **fields), host or PluginHost(extra=[Components()]))


def _assert_refused(*stages, host=None, **fields) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        _plan(*stages, host=host, **fields)
    assert info.value.file == SOURCE
    return info.value


def _student(*components):
    return stage("s", 1, ["student"], *components, component("ce"))


# -- the stage's buckets and the components' specs ----------------------------------------------


def test_stage_buckets_follow_the_hooks_each_class_overrides_in_recipe_order():
    plan = _plan(teacher_stage(1), stage("s", 1, ["student"], component("writer"),
                                         component("everything"), component("ce"),
                                         component("taker")))
    s = plan.stages[1]
    names = lambda comps: [c.name for c in comps]  # noqa: E731
    assert names(s.components) == ["writer", "everything", "ce", "taker"]
    assert names(s.refiners) == ["everything"]
    assert names(s.selectors) == ["everything", "taker"]
    assert names(s.weighters) == ["writer", "everything"]
    assert names(s.transfers) == ["everything", "ce"]
    assert names(s.backward) == ["everything"]
    assert names(s.after_step) == ["everything"]
    assert (s.index, s.name) == (1, "s")
    assert plan.roles == ("teacher", "student")
    assert [st.index for st in plan.stages] == [0, 1]


def test_specs_take_stage_models_by_default_labels_terms_and_weights_from_the_recipe():
    plan = _plan(teacher_stage(1), stage(
        "s", 1, ["teacher", "student"],
        component("writer", "w1", terms=["main"]), component("everything"),
        component("ce", "main", weight=0.25, models=["student"]),
        component("ce", "aux", models=["teacher"])))
    w1, every, main, aux = plan.stages[1].components
    assert w1.spec.models == ("teacher", "student") and w1.spec.terms == ("main",)
    assert every.spec.terms == ("everything",)  # own_terms_only: its own term by default
    assert main.spec == kdcore.ComponentSpec(name="main", use="ce", models=("student",),
                                             terms=(), weight=0.25)
    assert aux.spec.weight == 1.0 and aux.spec.models == ("teacher",)


def test_disabled_components_are_left_out_but_keep_their_index_in_key_paths():
    plan = _plan(teacher_stage(1), _student(component("taker", enabled=False,
                                                      params={"role": "nobody"})))
    assert [c.name for c in plan.stages[1].components] == ["ce"]
    err = _assert_refused(teacher_stage(1), _student(component("writer", enabled=False),
                                                     component("no_such_thing")))
    assert err.key == "stages[1].components[1].use"
    assert "no_such_thing" in err.detail


def test_terms_must_name_an_enabled_component_of_the_same_stage():
    err = _assert_refused(teacher_stage(1), _student(component("writer", terms=["gone"]),
                                                     component("ce", "gone", enabled=False)))
    assert err.key == "stages[1].components.terms"
    assert err.detail == "no component labelled 'gone' in this stage"
    _plan(teacher_stage(1), _student(component("writer", terms=["ce"])))


def test_a_plugin_constructor_refusing_its_parameters_is_a_recipe_error_at_params():
    _plan(teacher_stage(1), _student(component("picky", params={"k": 1})))
    err = _assert_refused(teacher_stage(1), _student(component("picky", params={"k": 0})))
    assert (err.key, err.detail) == ("stages[1].components[0].params",
                                     "k must be at least 1, got 0")
    err = _assert_refused(teacher_stage(1), _student(component("picky", params={"k": "x"})))
    assert err.key == "stages[1].components[0].params.k"


# -- roles and training -------------------------------------------------------------------------


def test_a_role_a_component_uses_must_be_an_enabled_model():
    _plan(teacher_stage(1), _student(component("taker", params={"role": "teacher"})))
    err = _assert_refused(teacher_stage(1),
                          _student(component("taker", params={"role": "teachr"})))
    assert err.key == "stages[1].components[0].params.role"
    assert err.detail == ("component 'taker' (taker) uses model role 'teachr' (did you mean "
                          "'teacher'?), which [models] does not define; roles: student, teacher")
    # a role held in a tuple parameter is found in it
    err = _assert_refused(teacher_stage(1), _student(component(
        "taker", params={"role": "teacher", "others": ["student", "zebra"]})))
    assert err.key == "stages[1].components[0].params.others"
    assert "'zebra', which" in err.detail  # nothing close: no suggestion
    # a disabled model is no role
    models = {**MODELS, "third": {**MODELS["student"], "enabled": False}}
    err = _assert_refused(teacher_stage(1),
                          _student(component("taker", params={"role": "third"})), models=models)
    assert err.detail == ("component 'taker' (taker) uses model role 'third', which [models] "
                          "disables (enabled = false); roles: student, teacher")
    # (it had said "does not define"); with every model disabled, no role is left
    err = _assert_refused(stage("s", 1, [], component("taker", params={"role": "teacher"},
                                                      models=[])),
                          models={"teacher": {**MODELS["teacher"], "enabled": False}})
    assert err.detail.endswith("which [models] disables (enabled = false); roles: none")


def test_a_role_named_by_no_single_parameter_points_at_the_params_table():
    class Fixed(Taker):
        def roles(self):
            return ("ghost",)

    class More:
        @hookimpl
        def kdcore_add_components(self):
            return {"fixed": Fixed}

    err = _assert_refused(teacher_stage(1), _student(component("fixed")),
                          host=PluginHost(extra=[Components(), More()]))
    assert err.key == "stages[1].components[0].params"
    assert err.detail.endswith("roles: student, teacher")


def test_every_trained_model_needs_a_loss_term_in_its_stage():
    _plan(teacher_stage(1), stage("s", 1, ["teacher", "student"], component("ce")))
    err = _assert_refused(teacher_stage(1), stage("s", 1, ["teacher", "student"],
                                                  component("ce", models=["teacher"]),
                                                  component("writer")))
    assert err.key == "stages[1].train"
    assert err.detail == ("stage 's' trains 'student', but none of its components gives "
                          "'student' a loss term; add one (ce, say), or leave 'student' out "
                          "of train")


class Distiller(Taker):
    """Distils ``role`` and ``others`` into the models it serves."""

    learns_from = ("role", "others")

    def transfer(self, ctx, batch):
        return torch.zeros(len(batch))


class Unused(Distiller):
    def roles(self):
        return ()  # a setting of its parameters leaves its teachers unused


def test_a_component_serves_none_of_the_models_it_distils_from():
    both = ["teacher", "student"]
    # the stage's train by default: the teacher would be distilled from itself
    err = _assert_refused(teacher_stage(1), stage("s", 1, both, component("ce"),
                                                  component("hinton_kd")))
    assert err.key == "stages[1].components[1].models"
    assert err.detail == (
        "component 'hinton_kd' (hinton_kd) would distil 'teacher' from itself (params.teacher), "
        'a term without gradient: it serves ["teacher", "student"] (its models, or else the '
        'stage\'s train); set its models = ["student"]')
    # online KD: the teacher trains on CE beside the student it teaches
    _plan(teacher_stage(1), stage("s", 1, both, component("ce"),
                                  component("hinton_kd", models=["student"])))
    host = PluginHost(extra=[Components(), _Extra(distiller=Distiller, unused=Unused)])
    # a role among several of a tuple parameter; nothing left to serve
    err = _assert_refused(teacher_stage(1), _student(component(
        "distiller", params={"role": "teacher", "others": ["teacher", "student"]})), host=host)
    assert err.key == "stages[1].components[0].models"
    assert err.detail.startswith("component 'distiller' (distiller) would distil 'student' from "
                                 "itself (params.others), ")
    assert err.detail.endswith('it serves ["student"] (its models, or else the stage\'s train); '
                               "name another model in params.others")
    # a teacher role it serves but does not use, or one it does not serve: accepted
    _plan(teacher_stage(1), _student(component("unused", params={"role": "student"})), host=host)
    _plan(teacher_stage(1), _student(component("distiller", params={"role": "teacher"})),
          host=host)


class _Extra:
    def __init__(self, **components):
        self.components = components

    @hookimpl
    def kdcore_add_components(self):
        return self.components


# -- the data flow ------------------------------------------------------------------------------


def _reader(column, **fields):
    return component("taker", "reader", params={"column": column}, **fields)


def test_a_column_is_readable_after_its_writer_in_the_stage_not_before():
    _plan(teacher_stage(1), _student(component("writer"), _reader("w/writer")))
    err = _assert_refused(teacher_stage(1), _student(_reader("w/writer"), component("writer")))
    assert err.key == "stages[1].components[0].params.column"
    written = sorted([*DATA_COLUMNS, "loss/ce", "logits/teacher"])
    assert err.detail == (
        "component 'reader' (taker) reads ledger column 'w/writer', which nothing placed "
        f"before it writes; written by then: {', '.join(written)}")


def test_a_column_of_an_earlier_stage_is_readable_in_every_later_one():
    third = stage("t", 1, ["student"], _reader("w/writer"), component("ce"))
    plan = _plan(teacher_stage(1), _student(component("writer")), third)
    reader = plan.stages[2].components[0]
    assert (reader.name, reader.reads()) == ("reader", ("w/writer",))
    # a later stage's writer does not serve an earlier stage
    err = _assert_refused(teacher_stage(1), third, _student(component("writer")))
    assert err.key == "stages[1].components[0].params.column"
    assert err.detail.startswith("component 'reader' (taker) reads ledger column 'w/writer', "
                                 "which nothing placed before it writes")


def test_the_engines_records_serve_later_stages_only():
    # loss/<term> (loss/<term>/<role> where it serves several models: see below), logits/<trained
    # role>: at the end of a stage's epoch
    both = stage("teacher", 1, ["teacher", "student"], component("ce"))
    for column in ("loss/ce", "loss/ce/teacher", "logits/teacher"):
        _plan(both if "/ce/" in column else teacher_stage(1), _student(_reader(column)))
        err = _assert_refused(stage("teacher", 1, ["teacher"], component("ce"), _reader(column)))
        assert err.key == "stages[0].components[1].params.column"
        assert "which nothing placed before it writes" in err.detail
    # the logits of a model no earlier stage trains are never recorded
    err = _assert_refused(teacher_stage(1), _student(_reader("logits/student")))
    assert "'logits/student' (did you mean 'logits/teacher'?)" in err.detail
    # a term's per-role column names its models, not others
    err = _assert_refused(teacher_stage(1), _student(_reader("loss/ce/student")))
    assert "loss/ce/student" in err.detail


def test_a_selector_or_weighter_makes_its_hook_columns_readable_later_in_the_stage():
    for column in ("select/reader0", "select/reader0/student"):
        _plan(teacher_stage(1), _student(
            component("taker", "reader0"), component("writer"), _reader(column)))
    for column in ("select/reader0", "select/reader0/student", "weight/writer",
                   "weight/writer/student"):
        _plan(teacher_stage(1), _student(
            component("taker", "reader0"), component("writer"),
            component("transfer_reader", "reader", params={"column": column})))
    # a batch calls every select hook before any weight hook: a selector placed after the
    # weighter does not find its column at the stage's first batch
    for column in ("weight/writer", "weight/writer/student"):
        err = _assert_refused(teacher_stage(1), _student(component("writer"), _reader(column)))
        assert err.key == "stages[1].components[1].params.column"
        assert err.detail == (
            f"component 'reader' (taker) reads ledger column '{column}' in its select hook, but "
            "'writer' (writer) writes it in its weight hook, which runs after every select hook "
            "of a batch, so the first batch of stage 's' does not have it yet; read a column "
            "written by then, or this one in a later stage")
    # in a later stage it is there
    _plan(teacher_stage(1), _student(component("writer")),
          stage("t", 1, ["student"], _reader("weight/writer"), component("ce")))
    err = _assert_refused(teacher_stage(1), _student(component("writer"),
                                                     _reader("weight/writer/teacher")))
    assert "weight/writer/teacher" in err.detail
    # a refiner writes the target, which the data already holds: always readable
    _plan(teacher_stage(1), _student(_reader("target"), component("everything")))


def _start_reader(column, hook):
    return component("start_reader", "early", params={"column": column, "hook": hook})


def _column_writer(label, hook, column="w/c"):
    return component("column_writer", label, params={"column": column, "hook": hook})


def test_a_column_read_before_the_stages_first_batch_is_written_by_then():
    # a component's own writes are written by on_stage_start unless it says otherwise
    for hook in ("on_stage_start", "on_epoch_start"):
        _plan(teacher_stage(1), _student(component("writer"), _start_reader("w/writer", hook)))
        _plan(teacher_stage(1), _student(_start_reader("noisy_label", hook)))  # the data's
    _plan(teacher_stage(1), _student(_column_writer("ew", "on_epoch_start"),
                                     _start_reader("w/c", "on_epoch_start")))
    err = _assert_refused(teacher_stage(1), _student(_column_writer("ew", "on_epoch_start"),
                                                     _start_reader("w/c", "on_stage_start")))
    assert err.key == "stages[1].components[1].params.column"
    assert err.detail == (
        "component 'early' (start_reader) reads ledger column 'w/c' in on_stage_start, before "
        "stage 's' trains its first batch, but 'ew' (column_writer) writes it in "
        "on_epoch_start, which runs after every component's on_stage_start; read a column "
        "written by then, or this one in a later stage")
    for hook in ("on_stage_start", "on_epoch_start"):
        err = _assert_refused(teacher_stage(1), _student(_column_writer("bw", ""),
                                                         _start_reader("w/c", hook)))
        assert err.detail == (
            f"component 'early' (start_reader) reads ledger column 'w/c' in {hook}, before "
            "stage 's' trains its first batch, but 'bw' (column_writer) writes it only from "
            "the stage's batches on; read a column written by then, or this one in a later "
            "stage")


def test_every_column_read_at_the_start_is_checked_and_each_is_a_read():
    both = component("start_reader", "early", params={"column": "noisy_label", "also": "w/c"})
    _plan(teacher_stage(1), _student(_column_writer("ew", "on_epoch_start"), both))
    err = _assert_refused(teacher_stage(1), _student(_column_writer("bw", ""), both))
    assert "reads ledger column 'w/c' in on_epoch_start" in err.detail
    # a column read at the start that reads() leaves out is a read all the same
    err = _assert_refused(teacher_stage(1), _student(both))
    assert err.detail.startswith("component 'early' (start_reader) reads ledger column 'w/c', "
                                 "which nothing placed before it writes")


def test_a_column_written_only_from_a_later_epoch_serves_later_stages_only():
    """F&F's filter with a later ``start_epoch`` writes its scores from that epoch: a reader of
    its stage (in the batches, or at the start) found them missing in the first epoch."""
    reader = component("taker", "reader", params={"column": "w/c"})

    def two(*components):  # a stage that reaches the writer's epoch 1
        return stage("s", 2, ["student"], *components, component("ce"))

    err = _assert_refused(teacher_stage(1), two(_column_writer("lw", "late"), reader))
    assert err.key == "stages[1].components[1].params.column"
    assert err.detail == (
        "component 'reader' (taker) reads ledger column 'w/c', which 'lw' (column_writer) writes "
        "only from epoch 1 of stage 's' on (counted from 0); read a column written by then, or "
        "this one in a later stage")
    err = _assert_refused(teacher_stage(1), two(_column_writer("lw", "late@1"),
                                                _start_reader("w/c", "on_epoch_start")))
    assert "which 'lw' (column_writer) writes only from epoch 1" in err.detail
    later = stage("t", 1, ["student"], reader, component("ce"))
    _plan(teacher_stage(1), two(_column_writer("lw", "late")), later)
    # another writer there in the first epoch, before the reader, or an earlier stage's
    for writers in ((_column_writer("lw", "late"), _column_writer("bw", "")),
                    (_column_writer("bw", ""), _column_writer("lw", "late"))):
        _plan(teacher_stage(1), two(*writers, reader))
    _plan(teacher_stage(1), _student(_column_writer("bw", "")),
          stage("t", 1, ["student"], _column_writer("lw", "late"), reader, component("ce")))
    # a late writer's column is not there at the start, whatever else it declares
    assert ColumnWriter(WriterParams("w/c", "late_only"), kdcore.ComponentSpec(
        "lw", "column_writer", ("student",))).writes_at_start() == {"w/c": "on_stage_start"}
    err = _assert_refused(teacher_stage(1), two(
        _column_writer("lw", "late_only"), _start_reader("w/c", "on_epoch_start")))
    assert "which 'lw' (column_writer) writes only from epoch 1" in err.detail
    writers = (_column_writer("ew", "on_epoch_start"), _column_writer("lw", "late_only"))
    _plan(teacher_stage(1), two(*writers, _start_reader("w/c", "on_epoch_start")))
    err = _assert_refused(teacher_stage(1), two(*writers, _start_reader("w/c", "on_stage_start")))
    assert "but 'ew' (column_writer) writes it in on_epoch_start" in err.detail


def _warnings_of(build) -> list[str]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m).rstrip()), level="WARNING")
    try:
        build()
    finally:
        logger.remove(sink)
    return messages


@pytest.mark.parametrize(("epochs", "has"), [(1, "1 epoch"), (2, "2 epochs"), (3, "3 epochs")])
def test_a_schedule_that_starts_past_its_stage_writes_nothing_there(epochs, has):
    """A writer from epoch 3 in a stage of 3 epochs or fewer never writes: said once as a
    warning (a filter that never filters), and a later reader is refused saying why."""
    writer = _column_writer("lw", "late@3")
    short = stage("s", epochs, ["student"], writer, component("ce"))
    (message,) = _warnings_of(lambda: _plan(teacher_stage(1), short))
    assert message.endswith(
        f"component 'lw' (column_writer) would write w/c from epoch 3 of stage 's' on (counted "
        f"from 0), and that stage has {has}: its schedule never starts there")
    err = _assert_refused(teacher_stage(1), short, stage("t", 1, ["student"], _reader("w/c"),
                                                         component("ce")))
    assert err.detail == (
        "component 'reader' (taker) reads ledger column 'w/c', which 'lw' (column_writer) writes "
        f"only from epoch 3 of stage 's' on (counted from 0), and that stage has {has}")
    (message,) = _warnings_of(lambda: _plan(teacher_stage(1), stage(
        "s", epochs, ["student"], component("late_two", "l2"), component("ce"))))
    assert "would write w/l2/a, w/l2/b from epoch 3" in message  # each, in order
    # a stage that reaches it, or another writer before: no warning, no refusal
    reaches = stage("s", 4, ["student"], writer, component("ce"))
    assert _warnings_of(lambda: _plan(teacher_stage(1), reaches, stage(
        "t", 1, ["student"], _reader("w/c"), component("ce")))) == []
    _plan(teacher_stage(1), stage("w", 1, ["student"], _column_writer("bw", ""),
                                  component("ce")), short,
          stage("t", 1, ["student"], _reader("w/c"), component("ce")))


def test_by_default_a_component_has_its_own_writes_written_from_its_stages_start():
    spec = kdcore.ComponentSpec("w", "writer", ("student",))
    writer = Writer(kdcore.NoParams(), spec)
    assert writer.writes_at_start() == {"w/w": "on_stage_start"}  # not weight/w: a hook's
    assert writer.reads_at_start() == {}

    class Quiet(Writer):  # declares it writes nothing, so nothing at the start either
        def written_columns(self):
            return ()

    assert Quiet(kdcore.NoParams(), spec).writes_at_start() == {}


def test_the_earliest_of_several_writers_at_the_start_counts():
    for first, second in (("on_epoch_start", "on_stage_start"),
                          ("on_stage_start", "on_epoch_start"), ("", "on_stage_start"),
                          ("on_stage_start", "")):
        _plan(teacher_stage(1), _student(_column_writer("a", first), _column_writer("b", second),
                                         _start_reader("w/c", "on_stage_start")))
    err = _assert_refused(teacher_stage(1), _student(
        _column_writer("a", ""), _column_writer("b", "on_epoch_start"),
        _start_reader("w/c", "on_stage_start")))
    assert "but 'b' (column_writer) writes it in on_epoch_start" in err.detail
    # of two in the same hook, the first in recipe order writes it first
    err = _assert_refused(teacher_stage(1), _student(
        _column_writer("a", "on_epoch_start"), _column_writer("b", "on_epoch_start"),
        _start_reader("w/c", "on_stage_start")))
    assert "but 'a' (column_writer) writes it in on_epoch_start" in err.detail


def test_a_hooks_one_column_written_at_the_start_serves_each_model_s_name_there():
    """``small_loss`` writes ``select/<name>`` at each epoch start; a reader there may name it
    for one model, ``select/<name>/<role>`` (the ledger gives the one column for it)."""
    selection = component("small_loss", params={"scope": "pass", "mask_loss": False})
    for column in ("select/small_loss", "select/small_loss/student"):
        _plan(teacher_stage(1), _student(selection, _start_reader(column, "on_epoch_start")))
    err = _assert_refused(teacher_stage(1), _student(
        selection, _start_reader("select/small_loss/student", "on_stage_start")))
    assert "but 'small_loss' (small_loss) writes it in on_epoch_start" in err.detail


def test_a_hook_column_is_read_at_a_stages_start_only_in_a_later_stage():
    """A ``select`` or ``weight`` hook writes in the batches: its column is there at the start
    of the stages after its own (a label propagation reading it at its first epoch's start
    had passed ``check`` and stopped the run there)."""
    for column in ("weight/writer", "select/reader0"):
        writers = (component("writer"), component("taker", "reader0"))
        err = _assert_refused(teacher_stage(1), _student(*writers,
                                                         _start_reader(column, "on_epoch_start")))
        name = column.split("/")[1]
        use = "writer" if name == "writer" else "taker"
        assert f"but '{name}' ({use}) writes it only from the stage's batches on" in err.detail
        _plan(teacher_stage(1), _student(*writers),
              stage("t", 1, ["student"], _start_reader(column, "on_stage_start"),
                    component("ce")))


# the order in which a batch calls its hooks, written out by hand (kdcore.step, hookspecs)
BATCH_ORDER = ["refine", "select", "weight", "transfer", "backward", "after_step"]


def _batch_reader(column, hook):
    return component("batch_reader", "late", params={"column": column, "hook": hook})


@pytest.mark.parametrize("written", BATCH_ORDER)
@pytest.mark.parametrize("read", BATCH_ORDER)
def test_a_column_read_in_a_batch_hook_is_written_by_that_hook_of_the_first_batch(written, read):
    """A column written in the batches is there for a hook of the same batch that runs after
    the writer's (every refine, then every select, weight, transfer, backward, after_step; in
    recipe order within one): AWE's ``weight`` hook reading a mask SMKD writes in its
    ``transfer`` had passed ``check`` and stopped the run at its stage's first batch."""
    assert BATCH_HOOKS == tuple(BATCH_ORDER)
    stages = (teacher_stage(1), _student(_column_writer("bw", written),
                                         _batch_reader("w/c", read)))
    if BATCH_ORDER.index(written) <= BATCH_ORDER.index(read):
        _plan(*stages)
        return
    err = _assert_refused(*stages)
    assert err.key == "stages[1].components[1].params.column"
    assert err.detail == (
        f"component 'late' (batch_reader) reads ledger column 'w/c' in its {read} hook, but "
        f"'bw' (column_writer) writes it in its {written} hook, which runs after every {read} "
        "hook of a batch, so the first batch of stage 's' does not have it yet; read a column "
        "written by then, or this one in a later stage")
    # there before the stage's first batch (another writer, or an earlier stage): no refusal
    _plan(teacher_stage(1), _student(_column_writer("sw", "on_epoch_start"),
                                     _column_writer("bw", written), _batch_reader("w/c", read)))
    _plan(teacher_stage(1), _student(_column_writer("bw", written)),
          stage("t", 1, ["student"], _batch_reader("w/c", read), component("ce")))
    # every column a reader reads is checked, not only its first
    also = component("batch_reader", "late", params={"column": "w/c", "hook": read,
                                                     "also": "noisy_label"})
    err = _assert_refused(teacher_stage(1), _student(_column_writer("bw", written), also))
    assert "reads ledger column 'w/c' in its" in err.detail


def test_the_earliest_of_several_writers_in_the_batches_counts():
    for first, second in (("select", "transfer"), ("transfer", "select")):
        _plan(teacher_stage(1), _student(_column_writer("a", first), _column_writer("b", second),
                                         _batch_reader("w/c", "weight")))
    err = _assert_refused(teacher_stage(1), _student(
        _column_writer("a", "after_step"), _column_writer("b", "transfer"),
        _batch_reader("w/c", "weight")))
    assert "but 'b' (column_writer) writes it in its transfer hook" in err.detail
    err = _assert_refused(teacher_stage(1), _student(
        _column_writer("a", "transfer"), _column_writer("b", "transfer"),
        _batch_reader("w/c", "weight")))
    assert "but 'a' (column_writer) writes it in its transfer hook" in err.detail
    # a writer that says nothing of when it writes is taken on trust
    class Silent(ColumnWriter):
        def writes_in_batch(self):
            return {}

    class More:
        @hookimpl
        def kdcore_add_components(self):
            return {"silent": Silent}

    host = PluginHost(extra=[Components(), More()])
    _plan(teacher_stage(1), _student(component("silent", "a", params={"column": "w/c",
                                                                        "hook": ""}),
                                     _batch_reader("w/c", "refine")), host=host)


@pytest.mark.parametrize(("writer", "column"), [
    (component("smkd"), "select/smkd/student"), (component("dml"), "select/dml/peer"),
    (component("mlc", models=["student"]), "loss/mlc")])
def test_a_weight_hook_does_not_read_what_a_transfer_of_its_batch_writes(writer, column):
    """AWE's ``weight`` hook reading a mask SMKD writes in its ``transfer`` (or MLC's
    per-sample loss, written there too) passed ``check`` and stopped the run at its stage's
    first batch: "no ledger column 'select/smkd/student'". A later stage may read it."""
    awe = component("awe", models=["student"], params={
        "loss_mode": "confidence", "selection": column, "confidence": column} if column.startswith(
            "select") else {"confidence": column})
    recipe = tiny_recipe(teacher_stage(1), stage("s", 1, ["student", "peer"], writer, awe,
                                                 component("ce")),
                         models={**MODELS, "peer": MODELS["student"]}, gold_per_class=3)
    with pytest.raises(RecipeError) as err:
        build_plan(recipe_from_dict(recipe), PluginHost())
    use = writer["use"]
    assert str(err.value).endswith(
        f"reads ledger column '{column}' in its weight hook, but '{use}' ({use}) writes it in "
        "its transfer hook, which runs after every weight hook of a batch, so the first batch "
        "of stage 's' does not have it yet; read a column written by then, or this one in a "
        "later stage")
    recipe["stages"][1]["components"].remove(awe)
    recipe["stages"].append(stage("t", 1, ["student"], awe, component("ce")))
    build_plan(recipe_from_dict(recipe), PluginHost())


def test_a_terms_losses_are_recorded_per_model_for_the_whole_run_where_it_serves_several():
    """A teacher stage's ``loss/ce`` beside a later two-model stage's ``loss/ce/<role>``: the
    history cannot keep a column and a folder of columns under one name, and the run stopped
    at the second stage's first epoch end (h5py's 'Incompatible object (Dataset) already
    exists'). One form per label: per model in every stage if any stage gives it several."""
    both = stage("both", 1, ["teacher", "student"], component("ce"))
    plan = _plan(teacher_stage(1), both)
    assert plan.per_model_losses == {"ce"}
    assert _plan(teacher_stage(1), _student()).per_model_losses == frozenset()  # one each
    # a selector or weighter serving two models records no loss
    assert _plan(teacher_stage(1), stage("both", 1, ["teacher", "student"], component("writer"),
                                         component("ce", "t", models=["teacher"]),
                                         component("ce", "s", models=["student"]))
                 ).per_model_losses == frozenset()
    # the data flow names the form written
    later = stage("t", 1, ["student"], _reader("loss/ce/teacher"), component("ce", "c"))
    _plan(teacher_stage(1), both, later)
    err = _assert_refused(teacher_stage(1), both,
                          stage("t", 1, ["student"], _reader("loss/ce"), component("ce", "c")))
    assert "'loss/ce' (did you mean 'loss/ce/teacher'?), which nothing placed" in err.detail
    assert "logits/teacher, loss/ce/student, loss/ce/teacher, noisy_label" in err.detail
    err = _assert_refused(teacher_stage(1), _student(),
                          stage("t", 1, ["student"], _reader("loss/ce/student"),
                                component("ce", "c")))
    assert err.detail.startswith("component 'reader' (taker) reads ledger column "
                                 "'loss/ce/student' (did you mean 'logits/student'?)")
    assert err.detail.endswith("logits/teacher, loss/ce, noisy_label, target")


def test_a_stage_whose_trained_models_get_only_terms_without_gradient_is_refused():
    """``relational_kd`` with ``detach_student`` (the AML-KD release's no-op) as a stage's
    only term passed ``check`` and stopped the run at its first batch: "model 'student' got a
    loss without gradient ..., so it cannot learn"."""
    detached = component("relational_kd", params={"detach_student": True})
    err = _assert_refused(teacher_stage(1), stage("s", 1, ["student"], detached))
    assert err.key == "stages[1].train"
    assert err.detail == (
        "stage 's' trains 'student', but every term it gives it carries no gradient "
        "('relational_kd' (relational_kd): computed from detached outputs), so nothing can "
        "learn; add a term with a gradient (ce, say)")
    peer = {**MODELS, "peer": MODELS["student"]}
    again = component("relational_kd", "again", params={"detach_student": True})
    err = _assert_refused(teacher_stage(1), stage("s", 1, ["student", "peer"], detached, again),
                          models=peer)
    assert err.detail.startswith("stage 's' trains 'student', 'peer', but every term it gives "
                                 "them carries no gradient ('relational_kd' (relational_kd), "
                                 "'again' (relational_kd): computed from detached outputs)")
    # a term with a gradient beside it, for that model or another the stage trains; or the
    # term without detach_student
    _plan(teacher_stage(1), stage("s", 1, ["student"], detached, component("ce")))
    _plan(teacher_stage(1), stage("s", 1, ["student", "peer"], detached,
                                  component("ce", models=["peer"])), models=peer)
    _plan(teacher_stage(1), stage("s", 1, ["student"], component("relational_kd")))
    assert _plan(teacher_stage(1), stage("s", 1, ["student"], detached, component("ce"))
                 ).stages[1].components[0].gradient_free_roles() == ("student",)


def test_a_learning_rate_a_component_follows_is_that_of_a_model_trained_by_then():
    """AWE's WeightNet follows its ``student``'s learning rate (``lr = 0``): in a stage that
    trains another model, with no earlier stage training the student, it passed ``check``
    and stopped the run at the first step ("model 'student' has no optimiser yet")."""
    peer = {**MODELS, "peer": MODELS["student"]}

    def awe(**params):
        return component("awe", params={"seed_mode": "none", **params})

    err = _assert_refused(teacher_stage(1), stage("s", 1, ["peer"], awe(), component("ce")),
                          models=peer)
    assert err.key == "stages[1].components[0]"
    assert err.detail == (
        "component 'awe' (awe) follows the learning rate of 'student', which no stage up to "
        "'s' trains (it has no optimiser yet); give the component a learning rate of its own, "
        "or train 'student' by then")
    for stages in ((teacher_stage(1), stage("s", 1, ["peer"], awe(lr=0.1), component("ce"))),
                   (teacher_stage(1), stage("s", 1, ["peer"], awe(student="teacher"),
                                            component("ce"))),
                   (_student(), stage("t", 1, ["peer"], awe(), component("ce"))),
                   (teacher_stage(1), _student(awe()))):
        _plan(*stages, models=peer)


def test_by_default_a_component_reads_in_its_first_batch_hook_and_writes_in_its_last():
    spec = kdcore.ComponentSpec("e", "everything", ("student", "teacher"))

    class Reads(Everything):
        writes = ("own/{name}", "late/{name}", "start/{name}")
        Params = AtStartParams  # column read in the batches, also at the start

        def reads(self):
            return (self.params.column, self.params.also)

        def reads_at_start(self):
            return {self.params.also: "on_epoch_start"}

        def writes_at_start(self):
            return {"start/e": "on_epoch_start"}

        def late_writes(self):
            return {"late/e": 2}

    comp = Reads(AtStartParams("r/a", also="r/b"), spec)
    assert comp.reads_in_batch() == {"r/a": "refine"}
    assert comp.gradient_free_roles() == ()  # every term has its gradient, by default
    assert comp.lr_roles() == ()
    hook_columns = {f"{hook}/e{role}": hook for hook in ("select", "weight")
                    for role in ("", "/student", "/teacher")}
    assert comp.writes_in_batch() == {**hook_columns, "target": "refine",
                                      "own/e": "after_step"}

    class Plain(kdcore.Component):  # no batch hook: nothing read or written in the batches
        Params = TakerParams
        writes = ("p/{name}",)

        def on_epoch_end(self, ctx, metrics):
            pass

    plain = Plain(TakerParams(ColumnName("x/y")), spec)
    assert plain.reads() == ("x/y",) and plain.reads_in_batch() == {}
    assert plain.writes_in_batch() == {}

    class Transfers(Plain):
        def transfer(self, ctx, batch):
            return None

        def backward(self, ctx, batch, role, loss):
            return False

        def writes_at_start(self):
            return {}

    both = Transfers(TakerParams(ColumnName("x/y")), spec)
    assert both.reads_in_batch() == {"x/y": "transfer"}
    assert both.writes_in_batch() == {"p/e": "backward"}


def test_a_columns_kind_is_the_last_writers_and_the_engines_records_are_values():
    class NeedsMask(Taker):
        def read_kinds(self):
            return {self.params.column: "mask"}

    class More:
        @hookimpl
        def kdcore_add_components(self):
            return {"needs_mask": NeedsMask}

    host = PluginHost(extra=[Components(), More()])
    _plan(teacher_stage(1), _student(component("taker", "sel"),
                                     component("needs_mask", params={"column": "select/sel"})),
          host=host)
    _plan(teacher_stage(1), _student(component("needs_mask",
                                               params={"column": "clean_mask"})), host=host)
    err = _assert_refused(teacher_stage(1), _student(component("needs_mask",
                                                               params={"column": "loss/ce"})),
                          host=host)
    assert err.detail == ("component 'needs_mask' (needs_mask) reads ledger column 'loss/ce' "
                          "as a column of kind mask, but the engine writes it as kind value")
    err = _assert_refused(teacher_stage(1), _student(component("needs_mask",
                                                               params={"column": "noisy_label"})),
                          host=host)
    assert err.detail.endswith("but the data writes it as kind label")
    # a column whose writer declares no kind passes any reader
    _plan(teacher_stage(1), _student(component("writer"),
                                     component("needs_mask", params={"column": "w/writer"})),
          host=host)


# -- run-wide checks ----------------------------------------------------------------------------


def test_loggers_must_exist_and_be_named_once():
    _plan(teacher_stage(1), run={"loggers": ["csv"]})
    err = _assert_refused(teacher_stage(1), run={"loggers": ["csv", "csvv"]})
    assert err.key == "run.loggers[1]" and "csvv" in err.detail
    err = _assert_refused(teacher_stage(1), run={"loggers": ["csv", "tensorboard", "csv"]})
    assert (err.key, err.detail) == ("run.loggers[2]", "logger 'csv' is named twice")


def test_configure_hook_problems_end_the_plan_with_the_first_one():
    class Configure:
        def __init__(self, problems):
            self.problems = problems

        @hookimpl
        def kdcore_configure(self, recipe):
            return self.problems

    host = PluginHost(extra=[Configure(None), Configure([])])
    _plan(teacher_stage(1), host=host)
    host = PluginHost(extra=[Configure(["first problem", "second"])])
    assert _assert_refused(teacher_stage(1), host=host).detail == "first problem"


def test_fp16_needs_a_gpu_and_a_component_that_runs_its_own_backward_refuses_it(monkeypatch):
    err = _assert_refused(teacher_stage(1), run={"precision": "fp16"})
    assert err.key == "run.precision" and err.detail.startswith("fp16 needs a GPU")
    _plan(teacher_stage(1), _student(component("everything")), run={"precision": "bf16"})
    import kdcore.device

    monkeypatch.setattr(kdcore.device, "resolve_device", lambda name: torch.device("cuda"))
    _plan(teacher_stage(1), _student(component("writer")), run={"precision": "fp16"})
    err = _assert_refused(teacher_stage(1), _student(component("everything")),
                          run={"precision": "fp16"})
    assert (err.key, err.detail) == (
        "run.precision", "component 'everything' (everything) runs its own backward pass, "
        "which fp16's gradient scaler does not cover; use \"bf16\" or \"fp32\"")


def test_a_component_that_cannot_work_on_compiled_models_refuses_run_compile():
    """MLC's look-ahead took gradients of a compiled model's gradients: with run.compile the
    run stopped at its first step ("torch.compile with aot_autograd does not currently
    support double backward"), after check had accepted it."""
    later = stage("later", 1, ["student"], component("ce"), component("uncompiled", "meta"))
    _plan(teacher_stage(1), later)  # not compiled: accepted
    _plan(teacher_stage(1), _student(component("local")), run={"compile": True})
    err = _assert_refused(teacher_stage(1), later, run={"compile": True})
    assert (err.key, err.detail) == (
        "run.compile", "component 'meta' (uncompiled) cannot work on compiled models: it takes "
        "gradients of gradients; set run.compile = false")
    err = _assert_refused(teacher_stage(1), _student(component("uncompiled_unsaid")),
                          run={"compile": True})
    assert err.detail == ("component 'uncompiled_unsaid' (uncompiled_unsaid) cannot work on "
                          "compiled models: it does not support compiled models; set "
                          "run.compile = false")
    # a component switched off is no component
    _plan(teacher_stage(1), _student(component("uncompiled", enabled=False)),
          run={"compile": True})


def test_cached_outputs_need_unaugmented_batches_and_a_stage_where_the_model_is_frozen():
    cached = {**MODELS, "teacher": {**MODELS["teacher"], "cache_outputs": True}}
    _plan(teacher_stage(1), _student(), models=cached)
    err = _assert_refused(teacher_stage(1),
                          stage("s", 1, ["teacher", "student"], component("ce")), models=cached)
    assert err.key == "models.teacher.cache_outputs"
    assert "trained in every stage" in err.detail
    err = _assert_refused(teacher_stage(1), _student(), models=cached,
                          data={"augment": [{"name": "cutout", "params": {"size": 2}}]})
    assert err.key == "models.teacher.cache_outputs"
    assert "data.augment changes every batch's inputs" in err.detail


def test_distributed_runs_refuse_components_that_cannot_compute_the_same():
    ok = _plan(teacher_stage(1), _student(component("writer")))
    check_distributed(ok, 8)
    local = _plan(teacher_stage(1), _student(component("writer"), component("local", "mine")))
    check_distributed(local, 1)
    with pytest.raises(RecipeError) as info:
        check_distributed(local, 2)
    assert info.value.file == SOURCE
    assert info.value.key == "stages[1].components[1].use"
    assert info.value.detail == ("component 'mine' (local) cannot run in 2 processes: it does "
                                 "not support a distributed run; run it in one process")
    why = _plan(teacher_stage(1), _student(component("local_why")))
    with pytest.raises(RecipeError, match="cannot run in 3 processes: its graph spans every "
                                          "sample; run it in one process"):
        check_distributed(why, 3)


@pytest.mark.parametrize(("fields", "key", "detail"), [
    ({"data": {"dataset": "digitz"}}, "data.dataset",
     "unknown dataset 'digitz' (did you mean 'digits'?); known: "),
    ({"data": {"params": {"nope": 1}}}, "data.params.nope", "unknown key 'nope'"),
    ({"data": {"noise": {"model": "symetric", "params": {"rate": 0.4}}}}, "data.noise.model",
     "unknown noise model 'symetric' (did you mean 'symmetric'?)"),
    ({"data": {"noise": {"model": "symmetric", "params": {"rat": 0.4}}}},
     "data.noise.params.rat", "unknown key 'rat' (did you mean 'rate'?)"),
    ({"data": {"augment": [{"name": "cutout", "params": {"size": 2}}, {"name": "cutot"}]}},
     "data.augment[1].name", "unknown augmentation 'cutot' (did you mean 'cutout'?)"),
    ({"data": {"augment": [{"name": "cutout", "params": {"size": 2}},
                           {"name": "cutout", "params": {"sise": 2}}]}},
     "data.augment[1].params.sise", "unknown key 'sise' (did you mean 'size'?)"),
    ({"models": {**MODELS, "student": {**MODELS["student"], "arch": "mpl"}}},
     "models.student.arch", "unknown architecture 'mpl' (did you mean 'mlp'?)"),
    ({"models": {**MODELS, "student": {**MODELS["student"], "params": {"hiden": [3]}}}},
     "models.student.params.hiden", "unknown key 'hiden' (did you mean 'hidden'?)"),
    ({"run": {"device": "tpu"}}, "run.device", "'device' must be 'auto', 'cpu', 'cuda' or "),
])
def test_the_data_noise_augmentations_models_and_device_are_bound_at_their_keys(
        fields, key, detail):
    err = _assert_refused(teacher_stage(1), **fields)
    assert err.key == key and err.detail.startswith(detail), (err.key, err.detail)


def test_the_plan_binds_the_augmentations_and_models_it_names():
    host = PluginHost()
    plan = _plan(teacher_stage(1), host=host, data={"augment": [
        {"name": "cutout", "params": {"size": 2}}, {"name": "cutout", "params": {"size": 3}}]})
    assert [(fn, params) for fn, params in plan.augmentations] == [
        (host.augmentations.get("cutout"), {"size": 2}),
        (host.augmentations.get("cutout"), {"size": 3})]
    assert plan.models["student"][0] is host.models.get("mlp")
    assert tuple(plan.models["student"][1]["hidden"]) == (16,)
    assert _plan(teacher_stage(1)).augmentations == []


def test_every_cached_model_is_checked_not_only_the_first():
    cached = {**MODELS, "student": {**MODELS["student"], "cache_outputs": True}}
    err = _assert_refused(teacher_stage(1), _student(), models=cached,
                          data={"augment": [{"name": "cutout", "params": {"size": 2}}]})
    assert err.key == "models.student.cache_outputs"


def test_a_private_parameter_is_named_by_its_recipe_key():
    @attrs.frozen
    class Hidden:
        _role: Role = Role("")

    class Private(Taker):
        Params = Hidden

        def roles(self):
            return (self.params._role,)

    class More:
        @hookimpl
        def kdcore_add_components(self):
            return {"private": Private}

    err = _assert_refused(teacher_stage(1),
                          _student(component("private", params={"role": "ghost"})),
                          host=PluginHost(extra=[Components(), More()]))
    assert err.key == "stages[1].components[0].params.role"


def test_a_device_this_machine_lacks_is_refused_at_run_device():
    err = _assert_refused(teacher_stage(1), run={"device": "cuda:99"})  # no GPU 99 anywhere
    assert err.key == "run.device" and "'cuda:99'" in err.detail


def test_a_disabled_entry_with_the_same_label_does_not_move_the_key_path():
    local = _plan(teacher_stage(1), _student(component("local", "mine", enabled=False),
                                             component("local", "mine")))
    with pytest.raises(RecipeError) as info:
        check_distributed(local, 2)
    assert info.value.key == "stages[1].components[1].use"


class _TakesBackward(kdcore.Component):
    """Takes over the backward pass of every model it serves (as MLC does of its one)."""

    def transfer(self, ctx, batch):
        return {r: batch.out(r).logits.sum(dim=1) for r in self.models}

    def backward_roles(self):
        return tuple(self.models)


class _TakesBackwardPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"takes_backward": _TakesBackward}


def _plan_of(*entries, train=("student",), path=None):
    recipe = tiny_recipe(teacher_stage(1), stage("s", 1, list(train), *entries),
                         models={**MODELS, "peer": MODELS["student"]}, gold_per_class=3)
    loaded = (recipe_from_dict(recipe) if path is None
              else load_recipe(write_recipe(recipe, path)))
    return build_plan(loaded, PluginHost(extra=[_TakesBackwardPlugin()]))


def test_two_components_may_not_take_over_one_trained_models_backward_pass(tmp_path):
    """Found by compositions with drawn parameters: DML and SMKD both in turn passed check and
    stopped at the first batch ("smkd1 never received the backward pass")."""
    with pytest.raises(RecipeError) as err:
        _plan_of(component("takes_backward", "a"), component("ce"),
                 component("takes_backward", "b"), path=tmp_path / "two.toml")
    assert err.value.key == "stages[1].components[2]"
    assert err.value.file == str(tmp_path / "two.toml")
    assert str(err.value).endswith(
        "components 'a' (takes_backward) and 'b' (takes_backward) both take over the backward "
        "pass of 'student', and only the first would get it; keep one (a mutual method with "
        "order = \"simultaneous\" takes none)")
    # one of them; two on different models; a role the stage does not train
    _plan_of(component("takes_backward", "a"), component("ce", "b"))
    _plan_of(component("takes_backward", "a", models=["student"]),
             component("takes_backward", "b", models=["peer"]), train=("student", "peer"))
    _plan_of(component("takes_backward", "a", models=["student", "teacher"]),
             component("takes_backward", "b", models=["teacher"]), component("ce"))


@pytest.mark.parametrize(("entries", "refused"), [
    ((component("dml", params={"order": "in_turn"}),
      component("smkd", params={"order": "in_turn"})), "'dml' (dml) and 'smkd' (smkd)"),
    ((component("dml", params={"order": "simultaneous"}),
      component("smkd", params={"order": "in_turn"})), None),
    ((component("mlc", models=["student"]), component("dml", params={"order": "in_turn"})),
     "'mlc' (mlc) and 'dml' (dml)"),
    ((component("mlc", models=["student"]), component("dml")), None),
])
def test_the_components_that_take_over_a_backward_pass_say_so(entries, refused):
    if refused is None:
        _plan_of(*entries, train=("student", "peer"))
        return
    with pytest.raises(RecipeError, match=re.escape(
            f"{refused} both take over the backward pass of 'student'")):
        _plan_of(*entries, train=("student", "peer"))
