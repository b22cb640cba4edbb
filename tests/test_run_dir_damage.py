"""A run directory in an unexpected state: ``--resume`` and ``--overwrite`` refuse in one line
(exit 2) before they write or delete anything, and a run directory's name is only a name."""

from __future__ import annotations

import shutil
import sys

import pytest

from kdcore import History
from kdcore.checkpoint import CHECKPOINT, PREVIOUS, load, save
from tests.cli_helpers import digest, invoke, one_line_error


@pytest.fixture
def runs(tiny_runs, tmp_path):
    """Copies of the session's tiny runs (tests/conftest.py), each test its own."""
    for name in ("finished", "started", "other"):
        shutil.copytree(tiny_runs / name, tmp_path / name)
    shutil.copy(tiny_runs / "tiny.toml", tmp_path / "tiny.toml")
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("which", ["finished", "started"])
def test_resume_without_a_checkpoint_after_the_first_epochs_is_refused(runs, which):
    run_dir = runs / which
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    before = digest(run_dir)
    one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--resume"),
                   "--overwrite", "no checkpoint" if which == "started" else "finished run")
    assert digest(run_dir) == before


@pytest.mark.slow
def test_resume_without_a_checkpoint_under_another_recipe_is_refused(runs):
    """A run killed before its first checkpoint starts again on --resume, but only under the
    recipe it was started with (its recipe.toml)."""
    run_dir = runs / "started"
    (run_dir / CHECKPOINT).unlink()
    (run_dir / "history.h5").unlink()
    other = runs / "other.toml"
    other.write_text((runs / "tiny.toml").read_text().replace("hidden = [16]", "hidden = [8]"))
    before = digest(run_dir)
    one_line_error(invoke("run", other, "--out", run_dir, "--resume"),
                   "models.student.params.hidden", "--overwrite")
    assert digest(run_dir) == before
    result = invoke("run", runs / "tiny.toml", "--out", run_dir, "--resume", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_a_checkpoint_that_is_a_directory_is_refused_before_anything_is_written(runs):
    run_dir = runs / "started"
    (run_dir / CHECKPOINT).unlink()
    (run_dir / CHECKPOINT).mkdir()
    before = digest(run_dir)
    # --overwrite would refuse it too (it deletes files, not folders): move it away
    one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--resume"),
                   f"--resume: {CHECKPOINT} in {run_dir} is not what a run leaves there",
                   "move it away first")
    assert digest(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("odd", ["checkpoint_dir", "summary_dir", "models_file"])
def test_overwrite_deletes_nothing_when_it_cannot_finish(runs, odd):
    run_dir = runs / "finished"
    if odd == "models_file":
        shutil.rmtree(run_dir / "models")
        (run_dir / "models").write_text("not a directory")
    else:
        path = run_dir / (CHECKPOINT if odd == "checkpoint_dir" else "summary.json")
        path.unlink(missing_ok=True)
        path.mkdir()
    before = digest(run_dir)
    one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--overwrite"),
                   "--overwrite", "move it away")
    assert digest(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("field,value", [
    ("fingerprint", 5), ("optimizers", {"student": 1}), ("ledger", 5), ("best", "x"),
    ("rng", {"torch": 1}), ("summary", "x"), ("carried", 7)])
def test_a_checkpoint_field_of_the_wrong_type_is_one_line(runs, field, value):
    """(With no checkpoint kept before it to go on from: test_resume_contract.py.)"""
    run_dir = runs / "started"
    (run_dir / PREVIOUS).unlink()
    state = load(run_dir / CHECKPOINT)
    state[field] = value
    save(state, run_dir / CHECKPOINT)
    with History(run_dir) as h:
        rows = len(h)
    one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--resume"),
                   str(run_dir / CHECKPOINT), "--overwrite")
    with History(run_dir) as h:
        assert len(h) >= rows - 1  # what was written stays readable


@pytest.mark.slow
@pytest.mark.parametrize("position", [{"stage": 99}, {"epoch": 10**6}, {"history_rows": 0}])
def test_a_checkpoint_position_the_recipe_never_reaches_is_refused(runs, position):
    run_dir = runs / "started"
    state = load(run_dir / CHECKPOINT)
    state["position"].update(position)
    save(state, run_dir / CHECKPOINT)
    one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--resume"),
                   "never reaches", "--overwrite")
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["{x}", "a{", "}", "{time}"])
def test_braces_in_the_run_directory_are_literal(tmp_path, name):
    from tests.conftest import TINY_RECIPE

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(seed=0).replace("epochs = 2", "epochs = 1"))
    out = tmp_path / name
    result = invoke("run", recipe, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert (out / "log.txt").is_file() and (out / "summary.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "tiny.toml"])


@pytest.mark.slow
def test_a_history_copied_in_from_another_run_is_not_appended_to(runs):
    run_dir = runs / "started"
    shutil.copy(runs / "other" / "history.h5", run_dir / "history.h5")
    before = digest(run_dir)
    one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--resume"),
                   "history.h5 was written by", "models.student.params.hidden", "--overwrite")
    assert digest(run_dir) == before


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize(("out", "said"), [("", "'--out': an empty path"),
                                           ("  ", "--out is empty")])
def test_an_empty_out_is_refused_not_taken_for_the_default(tmp_path, command, monkeypatch,
                                                            out, said):
    """``--out "$UNSET" --overwrite`` must not replace run.output_dir/run.name."""
    from tests.conftest import TINY_RECIPE

    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(seed=0))
    extra = ["--overwrite"] if command == "run" else []
    one_line_error(invoke(command, recipe, "--out", out, *extra), said)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


@pytest.mark.slow
def test_overwrite_removes_the_earlier_runs_weights_but_not_those_the_recipe_loads(runs):
    """A role of the earlier run that the new recipe lacks leaves no weights file behind; a
    weights file the new recipe loads as a checkpoint is read, not deleted first."""
    run_dir = runs / "finished"
    shutil.copy(run_dir / "models" / "student.pt", run_dir / "models" / "ghost.pt")
    teacher = run_dir / "models" / "teacher.pt"
    result = invoke("run", runs / "tiny.toml", "--out", run_dir, "--overwrite", "--set",
                    f'models.teacher.checkpoint="{teacher}"')
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["student.pt",
                                                                       "teacher.pt"]


REMOVER = '''
import shutil
import kdcore


class Remover:
    """Removes the run directory, as a user's rm -rf would: at the end of the first epoch
    (the next history row finds no file), or of the first stage (the stage's checkpoint,
    which counts the history's rows, does)."""

    removed = False

    def remove(self, where):
        if where == WHERE and not self.removed:
            self.removed = True
            shutil.rmtree(REMOVE)

    @kdcore.hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        self.remove("epoch")

    @kdcore.hookimpl
    def kdcore_stage_end(self, ctx, stage):
        self.remove("stage")


REMOVER = Remover()
'''


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch", "stage"])
def test_a_run_whose_directory_is_removed_mid_run_says_so(runs, monkeypatch, where):
    """It said only "no history at PATH", as if the file had never been there."""
    run_dir = runs / "removed"
    module = f"remover_at_{where}"
    (runs / f"{module}.py").write_text(f"REMOVE = {str(run_dir)!r}\nWHERE = {where!r}\n"
                                       f"{REMOVER}")
    monkeypatch.syspath_prepend(str(runs))
    # a module imported by an earlier run of this test (mutmut's passes share a process)
    # would remove the other test's directory, once
    monkeypatch.delitem(sys.modules, module, raising=False)
    line = one_line_error(invoke("run", runs / "tiny.toml", "--out", run_dir, "--plugin",
                                 f"{module}:REMOVER", "-q"))
    assert line == (f"kdcore: error: no history at {run_dir / 'history.h5'} any more: it, or "
                    "its folder, was removed while it was being written; start the run again "
                    "with --overwrite")
    assert not run_dir.exists()
    assert invoke("run", runs / "tiny.toml", "--out", run_dir, "-q").exit_code == 0
