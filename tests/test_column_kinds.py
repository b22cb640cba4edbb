"""Declared column kinds: the plan refuses a reader whose column's last writer declares another
kind, before anything trains, and says who writes what."""

from __future__ import annotations

import functools
import re

import attrs
import pytest
import torch

import kdcore
from kdcore import PluginHost, RecipeError, hookimpl
from kdcore.context import ColumnKind, ColumnName
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import component, stage, teacher_stage, tiny_recipe


class Writer(kdcore.Component):
    """Writes one declared label column and one undeclared column, and selects."""

    description = "test writer"
    writes = ("w/{name}/label", "w/{name}/free")
    column_kinds = {"w/{name}/label": "label"}

    def select(self, ctx, batch):
        return None


@attrs.frozen
class ReaderParams:
    column: ColumnName = ColumnName("")
    kind: str = "label"
    kinds: tuple[str, ...] = ()  # any of these, instead of ``kind``


class Reader(kdcore.Component):
    """Reads ``column`` as a column of ``kind`` (or of any of ``kinds``)."""

    Params = ReaderParams
    description = "test reader"

    def read_kinds(self) -> dict[str, ColumnKind]:
        return {self.params.column: self.params.kinds or self.params.kind}  # type: ignore

    def transfer(self, ctx, batch):
        return torch.zeros(len(batch))


class Rewriter(kdcore.Component):
    """Rewrites the data's ``base_target`` without declaring its kind."""

    description = "test rewriter"
    writes = ("base_target",)

    def select(self, ctx, batch):
        return None


class WeightWriter(kdcore.Component):
    """Writes ``w/<name>``, one weight per sample."""

    description = "test writer of weights"
    writes = ("w/{name}",)
    column_kinds = {"w/{name}": "weight"}

    def select(self, ctx, batch):
        return None


class RowWriter(WeightWriter):
    """Writes ``w/<name>`` as a row of weights per sample (as ALM-KD's per-term table)."""

    description = "test writer of a row of weights per sample"
    row_columns = ("w/{name}",)


class PerModelWriter(Writer):
    """A writer whose ``select`` hook returns one mask per model, and says so."""

    description = "test writer of a mask per model"
    per_model_results = True


class Components:
    @hookimpl
    def kdcore_add_components(self):
        return {"writer": Writer, "reader": Reader, "rewriter": Rewriter,
                "weight_writer": WeightWriter, "row_writer": RowWriter,
                "per_model_writer": PerModelWriter}


def _plan(*components, **recipe_fields):
    recipe = tiny_recipe(teacher_stage(1), stage("s", 1, ["student"], *components,
                                                 component("ce")), **recipe_fields)
    return build_plan(recipe_from_dict(recipe), PluginHost(extra=[Components()]))


def test_a_hook_declared_per_model_writes_no_shared_column_for_a_reader():
    # undeclared, a reader of select/pm passed check and stopped the run at its stage's start
    # ("no ledger column 'select/pm', only the columns under it (select/pm/peer, ...")
    read = functools.partial(component, "reader", params={"kind": "mask", "column": "select/pm"})
    plan = _plan(component("writer", "pm"), read())
    assert plan.stages[1].components[0].written_columns()[2:] == ("select/pm",
                                                                  "select/pm/student")
    with pytest.raises(RecipeError, match=r"component 'reader' \(reader\) reads ledger column "
                       r"'select/pm' \(did you mean 'select/pm/student'\?\), which nothing "):
        _plan(component("per_model_writer", "pm"), read())
    plan = _plan(component("per_model_writer", "pm"),
                 read(params={"kind": "mask", "column": "select/pm/student"}))
    writer = plan.stages[1].components[0]
    assert writer.written_columns()[2:] == ("select/pm/student",)
    assert writer.writes_in_batch() == {"select/pm/student": "select"}


def test_written_column_kinds_cover_hook_columns_and_declared_ones():
    plan = _plan(component("writer"), component("reader", params={"column": "w/writer/label"}))
    writer = plan.stages[1].components[0]
    assert writer.written_column_kinds() == {
        "w/writer/label": "label", "select/writer": "mask", "select/writer/student": "mask"}


@pytest.mark.parametrize(("column", "kind", "message"), [
    ("w/writer/label", "value",
     "'r' (reader) reads ledger column 'w/writer/label' as a column of kind value, but "
     "'writer' writes it as kind label"),
    ("select/writer", "label",
     "'r' (reader) reads ledger column 'select/writer' as a column of kind label, but "
     "'writer' writes it as kind mask"),
    ("noisy_label", "value",
     "reads ledger column 'noisy_label' as a column of kind value, but the data writes it as "
     "kind label"),
])
def test_a_reader_of_another_kind_is_refused_naming_the_writer(column, kind, message):
    with pytest.raises(RecipeError, match=re.escape(message)) as err:
        _plan(component("writer"),
              component("reader", "r", params={"column": column, "kind": kind}))
    assert err.value.key.endswith(".params.column")


@pytest.mark.parametrize(("column", "kind"), [
    ("w/writer/label", "label"), ("select/writer", "mask"), ("noisy_label", "label"),
    ("w/writer/free", "label"),  # no declared kind: nothing to hold it against
])
def test_a_reader_of_the_declared_kind_or_of_an_undeclared_column_is_accepted(column, kind):
    plan = _plan(component("writer"),
                 component("reader", "r", params={"column": column, "kind": kind}))
    assert plan.stages[1].components[1].read_kinds() == {column: kind}


def test_the_amlkd_wiring_refuses_a_confidence_column_where_labels_are_read():
    """small_loss's estimate column and AWE's propagated labels are label columns; LP's
    confidence is a value column."""
    lp = component("initial_lp", params={"teacher": "teacher"})
    with pytest.raises(RecipeError, match="'small_loss'.*'lp/initial_lp/confidence' as a "
                                          "column of kind label, but 'initial_lp' writes it "
                                          "as kind value"):
        _plan(lp, component("small_loss", params={
            "estimate": "column", "estimate_column": "lp/initial_lp/confidence"}))
    _plan(lp, component("small_loss", params={
        "estimate": "column", "estimate_column": "lp/initial_lp/refined"}))
    awe = {"loss_mode": "confidence", "confidence": "lp/initial_lp/confidence",
           "selection": "select/small_loss"}
    with pytest.raises(RecipeError, match="propagated and confidence name the same column"):
        _plan(component("small_loss"), lp, component("awe", terms=["ce"], params={
            **awe, "propagated": "lp/initial_lp/confidence"}))
    with pytest.raises(RecipeError, match="'awe'.*'lp/initial_lp/confidence' as a column of "
                                          "kind label"):
        _plan(component("small_loss"), lp, component("awe", terms=["ce"], params={
            **awe, "confidence": "select/small_loss",
            "propagated": "lp/initial_lp/confidence"}))
    _plan(component("small_loss"), lp, component("awe", terms=["ce"], params={
        **awe, "propagated": "lp/initial_lp/label"}))


def _stages(*stages):
    recipe = tiny_recipe(teacher_stage(1), *stages)
    return build_plan(recipe_from_dict(recipe, "recipes/under_test.toml"),
                      PluginHost(extra=[Components()]))


@pytest.mark.parametrize("kinds", [("mask", "value"), ("weight", "value"), ("label", "value"),
                                   ("mask", "weight", "value", "exact")])
def test_a_reader_of_one_number_per_sample_gets_no_column_of_rows(kinds):
    """The engine's ``logits/<role>`` and a declared row column (ALM-KD's per-term weights)
    hold a row per sample: read as LP's seed weights they had passed ``check`` and stopped
    the run at a shape mismatch."""
    def reader(column):
        return component("reader", "r", params={"column": column, "kinds": list(kinds)})

    with pytest.raises(RecipeError) as refused:
        _stages(stage("s", 1, ["student"], reader("logits/teacher"), component("ce")))
    assert refused.value.file == "recipes/under_test.toml"
    assert refused.value.key == "stages[1].components[0].params.column"
    kind = f"{', '.join(kinds[:-1])} or {kinds[-1]}"
    assert refused.value.detail == (
        f"component 'r' (reader) reads ledger column 'logits/teacher' as one number per sample "
        f"(a column of kind {kind}), but the engine writes a row of numbers per sample there")
    if "weight" in kinds:
        with pytest.raises(RecipeError, match="but 'rw' writes a row of numbers per sample"):
            _plan(component("row_writer", "rw"), reader("w/rw"))
        # rewritten as one number per sample by a later writer: read as that
        _stages(stage("s", 1, ["student"], component("row_writer", "rw"), component("ce")),
                stage("t", 1, ["student"], component("weight_writer", "rw"), reader("w/rw"),
                      component("ce")))


def test_a_reader_of_values_alone_may_read_rows():
    """A reader that takes only values may take the logits' rows; one that takes one number per
    sample, a per-sample loss."""
    for column, kinds in (("logits/teacher", ["value"]),
                          ("loss/ce", ["mask", "weight", "value", "exact"])):
        plan = _plan(component("reader", "r", params={"column": column, "kinds": kinds}))
        reader = plan.stages[1].components[0]
        assert (reader.name, reader.read_kinds()) == ("r", {column: tuple(kinds)})


def test_a_column_rewritten_without_a_declared_kind_is_no_longer_held_to_the_old_one():
    reader = component("reader", "r", params={"column": "base_target", "kind": "label"})
    with pytest.raises(RecipeError, match="but the data writes it as kind target"):
        _plan(reader)
    _plan(component("rewriter"), reader)


@pytest.mark.parametrize(("params", "message"), [
    # a label column as the mask of kept samples: every label but 0 would read as "kept"
    ({"keep_selected": "noisy_label"},
     "'lp' (mutual_lp) reads ledger column 'noisy_label' as a column of kind mask, but the "
     "data writes it as kind label"),
    # a weight as the mask: every non-zero weight would read as "kept"
    ({"keep_selected": "awe/seed_weight"},
     "reads ledger column 'awe/seed_weight' as a column of kind mask, but 'awe' writes it as "
     "kind weight"),
    ({"keep_selected": "loss/ce"},
     "reads ledger column 'loss/ce' as a column of kind mask, but the engine writes it as "
     "kind value"),
    # an N x C target as one weight per sample
    ({"seed_weights": "base_target"},
     "reads ledger column 'base_target' as a column of kind mask, weight, value or exact, but "
     "the data writes it as kind target"),
])
def test_lp_refuses_a_column_of_the_wrong_kind(params, message):
    with pytest.raises(RecipeError, match=re.escape(message)) as err:
        _plan(component("small_loss"), component("awe", terms=["ce"], params={
            "loss_mode": "cosine", "seed_mode": "cosine", "selection": "select/small_loss"}),
              component("mutual_lp", "lp", params={"teacher": "teacher", **params}))
    assert err.value.key == f"stages[1].components[2].params.{next(iter(params))}"


@pytest.mark.parametrize("params", [
    {"keep_selected": "select/small_loss", "seed_weights": "awe/seed_weight"},  # AML-KD's
    {"seed_weights": "select/small_loss"},  # a mask as 0/1 seed weights
    {"seed_weights": "loss/ce"},  # any one number per sample
])
def test_lp_accepts_a_mask_to_keep_and_any_per_sample_number_as_seed_weights(params):
    plan = _plan(component("small_loss"), component("awe", terms=["ce"], params={
        "loss_mode": "cosine", "seed_mode": "cosine", "selection": "select/small_loss"}),
                 component("mutual_lp", "lp", params={"teacher": "teacher", **params}))
    assert set(plan.stages[1].components[2].read_kinds()) == set(params.values())


def test_awe_refuses_a_selection_that_is_not_a_mask():
    with pytest.raises(RecipeError, match=re.escape(
            "'awe' (awe) reads ledger column 'noisy_label' as a column of kind mask, but the "
            "data writes it as kind label")):
        _plan(component("awe", terms=["ce"], params={"loss_mode": "cosine",
                                                      "selection": "noisy_label"}))
    _plan(component("awe", terms=["ce"], params={"loss_mode": "cosine",
                                                 "selection": "clean_mask"}))


@pytest.mark.parametrize(("writer", "column", "kind"), [
    (component("almkd", params={"teachers": ["teacher"]}), "weight/almkd", "weight"),
    (component("mlc"), "loss/mlc", "value"),
])
def test_columns_a_transfer_component_writes_itself_have_their_kind(writer, column, kind):
    with pytest.raises(RecipeError, match=re.escape(
            f"reads ledger column '{column}' as a column of kind label, but "
            f"'{writer['use']}' writes it as kind {kind}")):
        _plan(writer, component("reader", "r", params={"column": column, "kind": "label"}),
              gold_per_class=5)


# -- the names a component declares in `writes` ---------------------------------------------------

def _declaring(*writes):
    return type("Declares", (kdcore.Component,), {"writes": writes,
                                                  "description": "declares columns"})


class _Declarers:
    @hookimpl
    def kdcore_add_components(self):
        return {"empty": _declaring(""), "doubled": _declaring("a//b"),
                "dot": _declaring("mine/."), "folder": _declaring("mine/{name}", "mine"),
                "data": _declaring("noisy_label"), "losses": _declaring("loss/ce/extra"),
                "fine": _declaring("mine/{name}", "base_target", "target"),
                "own_loss": _declaring("loss/{name}"),
                "own_select": _declaring("select/{name}"),
                "own_weight": _declaring("weight/{name}"),
                **{f"deeper_{k}": _declaring(f"{k}/{{name}}/x") for k in ("loss", "select",
                                                                          "weight")},
                "selects": type("Selects", (kdcore.Component,), {
                    "description": "selects", "select": lambda self, ctx, batch: None}),
                "weighs": type("Weighs", (kdcore.Component,), {
                    "description": "weighs", "weight": lambda self, ctx, batch: None})}


@pytest.mark.parametrize(("use", "problem"), [
    ("empty", "'' is not a path of named parts (a/b/c)"),
    ("doubled", "'a//b' is not a path of named parts (a/b/c)"),
    ("dot", "'mine/.' is not a path of named parts (a/b/c)"),
    ("folder", "'mine/folder' beside 'mine': the history keeps a name with '/' as a folder of "
               "columns"),
    ("data", "'noisy_label' is the data's (noisy_label, clean_label, clean_mask are read "
             "only)"),
    ("losses", "'loss/ce/extra' beside 'loss/ce': the history keeps a name with '/' as a "
               "folder of columns"),
])
def test_a_declared_column_the_history_cannot_keep_is_refused_by_the_plan(
        use, problem, tmp_path):
    """Each passed `kdcore check` and failed at the first epoch's history row, with h5py's
    words (exit 1); a rewritten noisy_label changed the run's observed labels silently."""
    from kdcore.testing import write_recipe

    recipe = tiny_recipe(stage("s", 1, ["student"], component("ce"),
                               component(use, name="folder" if use == "folder" else None)))
    del recipe["models"]["teacher"]
    path = write_recipe(recipe, tmp_path / "r.toml")
    with pytest.raises(RecipeError) as err:
        build_plan(kdcore.load_recipe(path), PluginHost(extra=[_Declarers()]))
    assert (err.value.file, err.value.key) == (str(path), "stages[0].components[1].use")
    assert err.value.detail == (f"component '{'folder' if use == 'folder' else use}' ({use}) "
                                f"declares a ledger column it cannot write: {problem}")


def test_declared_columns_of_the_components_own_and_the_targets_are_accepted():
    recipe = tiny_recipe(stage("s", 1, ["student"], component("ce"), component("fine")))
    del recipe["models"]["teacher"]
    plan = build_plan(recipe_from_dict(recipe), PluginHost(extra=[_Declarers()]))
    assert plan.stages[0].components[1].written_columns() == ("mine/fine", "base_target",
                                                               "target")


@pytest.mark.parametrize(("hook", "declares"), [("ce", "own_loss"), ("selects", "own_select"),
                                                ("weighs", "own_weight")])
def test_a_declared_column_beside_the_per_role_form_of_the_same_hook_column_is_accepted(
        hook, declares):
    """The engine declares a hook's column both as <kind>/<name> and <kind>/<name>/<role> and
    writes one of them: a later component writing <kind>/<name> itself (MLC's loss/<name>)
    clashes with neither; with another name under it, it would."""
    first = [component(hook, name="shared")] + ([component("ce")] if hook != "ce" else [])

    def plan(declaring):
        recipe = tiny_recipe(stage("first", 1, ["student"], *first),
                             stage("then", 1, ["student"], component("ce"),
                                   component(declaring, name="shared")))
        del recipe["models"]["teacher"]
        return build_plan(recipe_from_dict(recipe), PluginHost(extra=[_Declarers()]))

    kind = declares.removeprefix("own_")
    assert plan(declares).stages[1].components[1].written_columns() == (f"{kind}/shared",)
    with pytest.raises(RecipeError, match=f"'{kind}/shared/x' beside '{kind}/shared': "):
        plan(f"deeper_{kind}")  # a name under the plain form does clash
