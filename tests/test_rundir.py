"""kdcore.rundir's decisions one by one, without a run: where a run goes, what it may replace
there and what it refuses, each refusal's whole line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcore.errors import KdcoreError
from kdcore.recipe import load_recipe, recipe_from_dict
from kdcore.rundir import prepare_run_dir
from kdcore.testing import component, stage, tiny_recipe, write_recipe


def _recipe(tmp_path: Path, **run):
    return recipe_from_dict(tiny_recipe(stage("s", 1, ["student"], component("ce")),
                                        run={"output_dir": str(tmp_path / "runs"), **run}))


def _refused(recipe, out, **flags) -> str:
    with pytest.raises(KdcoreError) as err:
        prepare_run_dir(recipe, None if out is None else str(out),
                        **{"resume": False, "overwrite": False, **flags})
    return str(err.value)


def test_without_out_the_run_goes_to_output_dir_slash_name_made_with_its_parents(tmp_path):
    recipe = _recipe(tmp_path, name="first", output_dir=str(tmp_path / "a" / "b"))
    made = prepare_run_dir(recipe, None, resume=False, overwrite=False)
    assert made == tmp_path / "a" / "b" / "first" and made.is_dir()
    assert list(made.iterdir()) == []  # the write probe leaves nothing
    deep = tmp_path / "x" / "y" / "z"
    assert prepare_run_dir(recipe, str(deep), resume=False, overwrite=False) == deep
    assert deep.is_dir()


def test_resume_needs_something_of_a_run(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    expected = (f"nothing to resume: no run was started in {out}; run without --resume to "
                "start one (--overwrite replaces an earlier run)")
    assert _refused(recipe, out, resume=True) == expected  # no folder
    out.mkdir()
    assert _refused(recipe, out, resume=True) == expected  # an empty folder
    (out / "log.txt").write_text("")
    assert _refused(recipe, out, resume=True) == expected  # nothing resume reads
    for name in ("history.h5", "recipe.toml", "checkpoint.pt"):
        alone = tmp_path / f"only-{name}"
        alone.mkdir()
        (alone / name).write_text("")
        # the folder passes; what resume makes of the file is checked later
        assert prepare_run_dir(recipe, str(alone), resume=True, overwrite=False) == alone


def test_the_recipe_file_is_not_the_runs_own_recipe_toml(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    source = write_recipe(tiny_recipe(stage("s", 1, ["student"], component("ce"))),
                          out / "recipe.toml")
    recipe = load_recipe(source)
    assert _refused(recipe, out, overwrite=True) == (
        f"the recipe is {source}, the file the run in {out} writes its resolved recipe to; "
        "move the recipe, or give another --out")


def test_a_folder_with_a_runs_files_but_no_history_is_the_users(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("mine")
    (out / "summary.json").write_text("{}")
    assert _refused(recipe, out) == (
        f"{out} holds log.txt, summary.json, which a run writes, but no run; give an empty or "
        "new --out, or --overwrite to replace them")
    assert (out / "log.txt").read_text() == "mine"


def test_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "history.h5").write_text("")
    assert _refused(recipe, out) == (
        f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, "
        "or --out for a new directory")


def test_overwrite_removes_the_earlier_runs_history_journal_checkpoint_and_summary(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    gone = ("history.h5", "history.h5-journal", "checkpoint.pt", "summary.json")
    for name in (*gone, "log.txt", "recipe.toml"):
        (out / name).write_text("old")
    prepare_run_dir(recipe, str(out), resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "recipe.toml"]
    # resuming keeps them all
    for name in gone:
        (out / name).write_text("old")
    prepare_run_dir(recipe, str(out), resume=True, overwrite=True)
    assert all((out / name).exists() for name in gone)


def test_overwrite_refuses_odd_entries_naming_each_and_deletes_nothing(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    (out / "history.h5").mkdir(parents=True)
    (out / "history.h5-journal").mkdir()
    (out / "models").write_text("not a folder")
    (out / "summary.json").write_text("{}")
    assert _refused(recipe, out, overwrite=True) == (
        f"--overwrite: history.h5, history.h5-journal, models in {out} is not what a run "
        "leaves there (a directory or a file of the other kind); move it away first")
    assert (out / "summary.json").exists()


@pytest.mark.parametrize(("error", "reason"), [
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (ValueError("embedded null byte"), "embedded null byte"),  # no strerror: the message
])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, error, reason):
    recipe, out = _recipe(tmp_path), tmp_path / "run"

    def refuse(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Path, "write_text", refuse)
    assert _refused(recipe, out) == f"cannot write to output directory {out}: {reason}"


def test_an_empty_out_is_refused_in_one_line(tmp_path):
    for empty in ("", "  "):
        assert _refused(_recipe(tmp_path), empty) == (
            "--out is empty; give a run directory, or leave --out out for "
            "run.output_dir/run.name")


def test_a_name_the_system_refuses_is_one_line_before_anything_is_made(tmp_path):
    nul = tmp_path / "a\0b"  # Path.exists says no; making it says why
    assert _refused(_recipe(tmp_path), nul) == (
        f"cannot write to output directory {nul}: embedded null byte")
    long = tmp_path / ("x" * 300) / "run"
    assert _refused(_recipe(tmp_path), long) == (
        f"cannot use output directory {long}: File name too long")
    assert sorted(tmp_path.iterdir()) == []


def test_a_run_directory_below_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "run"
    assert _refused(_recipe(tmp_path), out) == (
        f"cannot write to output directory {out}: {tmp_path / 'notes.txt'} is not a directory")


def test_the_write_check_is_made_in_the_nearest_existing_folder(tmp_path, monkeypatch):
    import tempfile

    made, real = [], tempfile.mkdtemp

    def recorded(*args, **kwargs):
        made.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    out = tmp_path / "new" / "run"
    prepare_run_dir(_recipe(tmp_path), str(out), resume=False, overwrite=False)
    assert made == [tmp_path] and sorted(p.name for p in tmp_path.iterdir()) == ["new"]


@pytest.mark.parametrize(("error", "reason"), [
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (OSError("refused by the file system"), "refused by the file system"),
])
def test_a_folder_in_which_no_folder_can_be_made_is_one_line(tmp_path, monkeypatch, error,
                                                             reason):
    import tempfile

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "run"
    assert _refused(_recipe(tmp_path), out) == (
        f"cannot write to output directory {out}: {tmp_path}: {reason}")
    assert not out.exists()
