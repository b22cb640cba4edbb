"""``run.history_skip``: ledger columns kept out of history.h5 (the training logits, most of a
large-C history), still read by components during the run; the readers that need them say
why they are missing."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from loguru import logger

from kdcore import History, KdcoreError, PluginHost, load_recipe
from kdcore.cli import main
from kdcore.plan import build_plan
from kdcore.recipe import RunConfig, recipe_from_dict


class _Stub(SimpleNamespace):
    """What the history's error helpers read of a History: a recipe, a path, column names, and
    one epoch row (a history of none says so instead)."""

    def epochs(self) -> list[tuple[str, int]]:
        return [("a", 0)]


@pytest.mark.parametrize(("patterns", "column", "kept"), [
    ([], "logits/student", True),
    (["logits/*"], "logits/student", False),
    (["logits/*"], "loss/ce", True),
    (["logits/teacher"], "logits/student", True),
    (["lp/*/refined", "logits/?eacher"], "lp/mutual_lp/refined", False),
    (["lp/*/refined", "logits/?eacher"], "logits/teacher", False),
    (["LOGITS/*"], "logits/student", True),  # case matters, on every system
    (["*"], "target", False),
])
def test_a_column_is_kept_unless_a_pattern_matches_it(patterns, column, kept):
    assert RunConfig(history_skip=patterns).kept_in_history(column) is kept


def test_a_pattern_is_checked_like_every_name(tiny_recipe):
    res = CliRunner().invoke(main, ["check", str(tiny_recipe), "--set",
                                    'run.history_skip="logits/*"'])
    assert res.exit_code == 2 and "run.history_skip" in res.output
    res = CliRunner().invoke(main, ["check", str(tiny_recipe), "--set",
                                    'run.history_skip=["a\\u0000"]'])
    assert res.exit_code == 2 and "NUL" in res.output


def _plan_warnings(recipe_path: Path, patterns: list[str]) -> list[str]:
    data = load_recipe(recipe_path).to_dict()
    data["run"]["history_skip"] = patterns
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m).rstrip()), level="WARNING")
    try:
        build_plan(recipe_from_dict(data), PluginHost())
    finally:
        logger.remove(sink)
    return messages


def test_a_pattern_that_matches_no_column_the_recipe_writes_is_a_warning(tiny_recipe):
    assert _plan_warnings(tiny_recipe, ["logits/*", "loss/*", "target"]) == []
    (message,) = _plan_warnings(tiny_recipe, ["logits/*", "logit/*"])
    assert message.endswith("run.history_skip: 'logit/*' matches none of the columns this "
                            "recipe writes: base_target, clean_label, clean_mask, "
                            "logits/student, logits/teacher, loss/ce, loss/kd, noisy_label, "
                            "target")


@pytest.mark.slow
def test_a_run_keeps_the_skipped_columns_out_of_its_history_and_the_readers_say_so(
        tiny_recipe, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["run", str(tiny_recipe), "--out", str(out), "--quiet", "--set",
                               'run.history_skip=["logits/*", "loss/kd*"]'])
    assert res.exit_code == 0, res.output
    with History(out) as h:
        assert sorted(h.column_names()) == ["loss/ce", "target"]
        assert len(h) == 4 and h.column("target").shape[0] == 4
    for command in (["label-issues", str(out)],
                    ["inspect", str(out), "--cartography", str(tmp_path / "c")]):
        res = runner.invoke(main, command)
        assert res.exit_code == 2, res.output
        assert res.output.rstrip().endswith(
            " (the run's run.history_skip 'logits/*' kept them out)"), res.output
        assert len(res.output.splitlines()) == 1
    res = runner.invoke(main, ["inspect", str(out), "--column", "logits/student"])
    assert res.output == ("kdcore: error: no column 'logits/student' (the run's "
                          "run.history_skip 'logits/*' kept it out); columns: loss/ce, target "
                          "(or 'all')\n")
    with pytest.raises(KdcoreError, match=re.escape(
            "holds no column 'loss/kd' (the run's run.history_skip 'loss/kd*' kept it out)")):
        History(out).column("loss/kd")
    with pytest.raises(KdcoreError) as err:  # a metric is never kept out by history_skip
        History(out).metric("logits/student")
    assert "history_skip" not in str(err.value)


@pytest.mark.parametrize(("recipe", "name", "note"), [
    ('[run]\nhistory_skip = ["logits/*", "loss/*"]\n', "loss/ce",
     " (the run's run.history_skip 'loss/*' kept it out)"),
    ('[run]\nhistory_skip = [3, "loss/c?"]\n', "loss/ce",
     " (the run's run.history_skip 'loss/c?' kept it out)"),
    ('[run]\nhistory_skip = ["loss/*"]\n', "target", ""),
    ('[run]\nhistory_skip = "loss/*"\n', "loss/ce", ""),            # not a list
    ('run = 3\n', "loss/ce", ""),                                     # run not a table
    ("[run\n", "loss/ce", ""),                                        # not TOML
])
def test_why_a_history_holds_no_column_is_read_from_its_recipe(recipe, name, note):
    from kdcore.history import column_kept_out

    assert column_kept_out(_Stub(recipe=recipe), name) == note


@pytest.mark.parametrize(("recipe", "note"), [
    ('run = 3\n[models.student]\n', ""),  # an AttributeError before
    ('[run]\nhistory_skip = ["logits/*"]\n[models.student]\narch = "mlp"\n',
     " (the run's run.history_skip 'logits/*' kept them out)"),
    ('[run]\nhistory_skip = ["loss/*", "logits/st*"]\n[models.student]\n[models.peer]\n',
     " (the run's run.history_skip 'logits/st*' kept them out)"),
    ('[run]\nhistory_skip = ["loss/*"]\n[models.student]\n', ""),
    ('[run]\nhistory_skip = ["logits/teacher"]\n[models.student]\n', ""),
    ('[models.student]\n', ""),                                   # no pattern
    ('[run]\nhistory_skip = "logits/*"\n[models.student]\n', ""),  # not a list
    ('[run]\nhistory_skip = [3, "logits/*"]\n[models.student]\n',
     " (the run's run.history_skip 'logits/*' kept them out)"),
    ('models = 3\n[run]\nhistory_skip = ["logits/*"]\n', ""),    # models not a table
    ("[run\n", ""),                                               # not TOML
])
def test_why_a_history_holds_no_logits_is_read_from_its_recipe(recipe, note):
    from kdcore.history import logits_kept_out

    assert logits_kept_out(_Stub(recipe=recipe)) == note


@pytest.mark.parametrize(("skip", "role", "note"), [
    ('["logits/student"]', "student", " (the run's run.history_skip 'logits/student' kept it "
                                      "out)"),
    ('["logits/student"]', "teacher", ""),  # no stage trained it: the skip had been blamed
    ('["logits/*"]', "teacher", " (the run's run.history_skip 'logits/*' kept it out)"),
])
def test_a_model_without_logits_is_blamed_on_the_skip_that_matches_it(skip, role, note):
    from kdcore.history import no_logits_of

    recipe = f'[run]\nhistory_skip = {skip}\n[models.student]\n[models.teacher]\n'
    hist = _Stub(recipe=recipe, path="h.h5", column_names=lambda: ["logits/peer"])
    assert str(no_logits_of(hist, role)) == (
        f"no training logits of model '{role}' in h.h5; models: peer{note}")
    for have, models in (([], "none"), (["loss/ce", "logits/a", "logits/b"], "a, b")):
        hist = _Stub(recipe=recipe, path="h.h5", column_names=lambda h=have: h)
        assert str(no_logits_of(hist, role)) == (
            f"no training logits of model '{role}' in h.h5; models: {models}{note}")


def test_a_history_of_no_epoch_yet_is_the_reason_when_no_other_is_known():
    from kdcore.history import logits_kept_out, no_logits_of

    empty = _Stub(recipe="", path="h.h5", column_names=lambda: [], epochs=lambda: [])
    why = " (it holds no epoch yet: the run is in its first epoch, or was stopped there)"
    assert logits_kept_out(empty) == why
    assert logits_kept_out(_Stub(recipe="")) == ""
    empty.recipe = '[run]\nhistory_skip = ["logits/*"]\n[models.student]\n'
    assert logits_kept_out(empty) == " (the run's run.history_skip 'logits/*' kept them out)"
    empty.recipe = '[[stages]]\nname = "a"\ntrain = ["student"]\n'
    assert str(no_logits_of(empty, "student")).endswith(f"models: none{why}")

@pytest.mark.parametrize(("stages", "note"), [
    ('[[stages]]\nname = "a"\nepochs = 2\ntrain = ["student"]\n', " (no stage of the run "
                                                                     "trains it)"),
    ('[[stages]]\nname = "a"\nepochs = 0\ntrain = ["teacher"]\n', " (no stage of the run "
                                                                     "trains it)"),
    ('[[stages]]\nname = "a"\nepochs = 1\ntrain = ["teacher"]\n', ""),
    ('[[stages]]\nname = "a"\ntrain = ["teacher"]\n', ""),     # epochs unread: may train
    ('stages = 3\n', ""), ('[[stages]\n', ""),                   # not stages, not TOML
])
def test_a_model_no_stage_trains_is_said_to_be_untrained(stages, note):
    from kdcore.history import no_logits_of

    hist = _Stub(recipe=stages, path="h.h5", column_names=lambda: ["logits/student"])
    assert str(no_logits_of(hist, "teacher")) == (
        f"no training logits of model 'teacher' in h.h5; models: student{note}")


def test_seeds_that_differ_only_in_what_their_history_keeps_are_one_variant(tmp_path,
                                                                            report_grid):
    """A seed run before ``run.history_skip`` existed (its recipe.toml lacks the key), and one
    that kept its logits out, average with the others: neither changes what was computed."""
    import shutil

    from kdcore.report import aggregate, find_runs

    grid = tmp_path / "grid"
    shutil.copytree(report_grid, grid)
    older = grid / "ls" / "seed1" / "recipe.toml"
    text = older.read_text()
    assert "history_skip = []\n" in text and text.count("cache_outputs = false\n") == 2
    # keys added since, at their defaults (models.<role>.cache_outputs came in session 14)
    older.write_text(text.replace("history_skip = []\n", "").replace(
        "cache_outputs = false\n", ""))
    lean = grid / "ls-weak" / "seed1" / "recipe.toml"
    lean.write_text(lean.read_text().replace("history_skip = []", 'history_skip = ["logits/*"]'))
    rows = aggregate(find_runs([grid]))
    assert {(r["variant"], r["seeds"]) for r in rows} == {("ls", 2), ("ls-weak", 2)}
    changed = grid / "ls" / "seed0" / "recipe.toml"  # what is computed still may not differ
    changed.write_text(changed.read_text().replace("batch_size = 64", "batch_size = 32"))
    with pytest.raises(KdcoreError, match="recipes differ at data.batch_size"):
        find_runs([grid])


@pytest.mark.slow
def test_a_run_resumed_with_its_logits_kept_out_trains_on_as_it_would_have(tiny_runs,
                                                                             tmp_path):
    """``run.history_skip`` changes what the file keeps, not what is computed: ``--resume``
    takes it, the epochs after the resume lack the logits, and every other column and metric
    is the uninterrupted run's."""
    import shutil

    import numpy as np

    from kdcore import run_recipe
    from kdcore.testing import assert_same_history

    run = tmp_path / "started"
    shutil.copytree(tiny_runs / "started", run)
    recipe = load_recipe(tiny_runs / "tiny.toml", ['run.history_skip=["logits/*"]'])
    run_recipe(recipe, out=str(run), resume=True)
    finished = tiny_runs / "finished"
    assert_same_history(run, finished, columns=["target", "loss/ce", "loss/kd"])
    with History(run) as h, History(finished) as whole:
        assert len(h) == 4
        teacher = h.column("logits/teacher")
        assert np.array_equal(teacher[:2], whole.column("logits/teacher")[:2])
        # stopped in the student stage's first epoch: its logits never reached the file
        assert "logits/student" not in h.column_names()
        assert "logits/student" in whole.column_names()
