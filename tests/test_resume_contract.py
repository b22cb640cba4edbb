"""What --resume accepts and refuses: the recipe's fingerprint, missing or foreign checkpoints,
runs killed before their first checkpoint, damaged state. Every refusal is one line, exit 2,
and names how to start again."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from kdcore import History, PluginHost, hookimpl, load_recipe, run_recipe
from kdcore.checkpoint import CHECKPOINT, PREVIOUS, load, save
from kdcore.testing import InterruptAt, Interrupted, assert_same_history
from tests.cli_helpers import invoke
from tests.cli_helpers import one_line_error as assert_one_line_error


@pytest.fixture
def started(tiny_recipe, tmp_path):
    """A run stopped in the student stage (its checkpoints: after the first epoch, kept as
    ``checkpoint.previous.pt``, and at the teacher stage's end, ``checkpoint.pt``)."""
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(tiny_recipe), out=str(out),
                   host=PluginHost(extra=[InterruptAt(epoch=0, batch=1, stage="student")]))
    return out


@pytest.mark.slow
def test_resume_with_a_changed_override_names_the_keys(tiny_recipe, started):
    line = assert_one_line_error(
        invoke("run", tiny_recipe, "--out", started, "--resume", "--set", "run.seed=3",
               "--set", "stages.student.components.kd.weight=0.25"),
        "run.seed", "stages[1].components[1].weight", "--overwrite")
    assert "stages[0]" not in line  # only the keys that differ


@pytest.mark.slow
def test_resume_with_a_different_recipe_file_is_refused(tiny_recipe, started, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(tiny_recipe.read_text().replace("hidden = [16]", "hidden = [24]"))
    assert_one_line_error(invoke("run", other, "--out", started, "--resume"),
                   "models.student.params.hidden")


@pytest.mark.slow
def test_resume_with_the_same_recipe_and_operational_changes_continues(tiny_recipe, started,
                                                                       tmp_path):
    result = invoke("run", tiny_recipe, "--out", started, "--resume", "-q",
                    "--set", "run.checkpoint_interval_s=5", "--set", "run.name=elsewhere",
                    "--set", "run.distributed_timeout_s=60")
    assert result.exit_code == 0, result.output
    run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "straight"))
    assert_same_history(started, tmp_path / "straight")


@pytest.mark.slow
def test_a_checkpoint_of_an_older_kdcore_resumes_and_still_names_real_changes(tiny_recipe,
                                                                              started):
    """A recipe key added since the run started (at its default) is no change; one the run
    was started with at another value still is."""
    state = load(started / CHECKPOINT)
    for model in state["fingerprint"]["recipe"]["models"].values():
        del model["cache_outputs"]  # as kdcore wrote it before the key existed
    save(state, started / CHECKPOINT)
    assert_one_line_error(invoke("run", tiny_recipe, "--out", started, "--resume", "--set",
                                 "models.teacher.cache_outputs=true"),
                          "models.teacher.cache_outputs", "--overwrite")
    result = invoke("run", tiny_recipe, "--out", started, "--resume", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_starts_again_on_resume(tiny_recipe, tmp_path):
    class FailInSetUp:
        @hookimpl
        def kdcore_run_start(self, ctx):
            raise KeyboardInterrupt  # a kill before any checkpoint exists

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(load_recipe(tiny_recipe), out=str(out), host=PluginHost(extra=[FailInSetUp()]))
    assert not (out / CHECKPOINT).exists() and (out / "history.h5").exists()
    # a plain rerun names both ways on
    assert_one_line_error(invoke("run", tiny_recipe, "--out", out), "--resume", "--overwrite")
    result = invoke("run", tiny_recipe, "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "straight"))
    assert_same_history(out, tmp_path / "straight")


# sends its own process SIGTERM in the middle of the student stage's first epoch, once `kdcore
# run` has put its handler in place (never under the default one, which would end pytest)
SIGTERM_PROBE = """
import os, signal
import kdcore

class TermAt:
    @kdcore.hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        if ctx.stage.name == "student" and ctx.epoch == 0:
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)

plugin = TermAt()
"""


@pytest.fixture
def sigterm_probe(tmp_path, monkeypatch):
    """The ``--plugin`` value of :data:`SIGTERM_PROBE`, importable for the test's while."""
    (tmp_path / "sigterm_probe.py").write_text(SIGTERM_PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "sigterm_probe:plugin"


@pytest.mark.slow
def test_sigterm_stops_a_run_as_ctrl_c_does_and_resume_finishes_it(tiny_recipe, tmp_path,
                                                                    sigterm_probe):
    out = tmp_path / "run"
    result = invoke("run", tiny_recipe, "--out", out, "-q", "--plugin", sigterm_probe)
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert result.stderr == "kdcore: stopped by SIGTERM; resume with --resume\n"
    assert ("stopped by SIGTERM in stage 'student', epoch 1; --resume continues from the last "
            "checkpoint") in (out / "log.txt").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was
    result = invoke("run", tiny_recipe, "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "straight"))
    assert_same_history(out, tmp_path / "straight")


@pytest.mark.slow
def test_sigterm_stops_an_in_process_grid_and_the_same_ablate_resumes_it(tiny_recipe, tmp_path,
                                                                          sigterm_probe):
    grid = tmp_path / "grid"
    result = invoke("ablate", tiny_recipe, "--out", grid, "--plugin", sigterm_probe)
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert result.stderr == ("kdcore: stopped by SIGTERM; the same kdcore ablate again resumes "
                             "it (finished runs are skipped)\n")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    result = invoke("ablate", tiny_recipe, "--out", grid)
    assert result.exit_code == 0, result.output
    assert "[1/1] tiny seed 0: resuming" in result.stdout
    run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "straight"))
    assert_same_history(grid / "tiny" / "seed0", tmp_path / "straight")


@pytest.mark.slow
def test_sigterm_stops_a_parallel_grid_its_running_runs_at_their_checkpoints_and_no_more(
        tiny_recipe, tmp_path):
    """``--jobs 2``: the runs are subprocesses; the grid passes the signal on to each running
    one, waits while it stops, and starts no further run."""
    grid = tmp_path / "grid"
    runs = [grid / "tiny" / f"seed{k}" for k in range(3)]

    def signal_once_both_train():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            logs = [r / "log.txt" for r in runs[:2]]
            if all(log.is_file() and "student 1/" in log.read_text() for log in logs):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=signal_once_both_train)
    sender.start()
    result = invoke("ablate", tiny_recipe, "--out", grid, "--seeds", "0,1,2", "--jobs", "2",
                    "--set", "stages.student.epochs=5000")
    sender.join()
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert result.stderr == ("kdcore: stopped by SIGTERM; the same kdcore ablate again resumes "
                             "it (finished runs are skipped)\n")
    for k in (0, 1):
        assert (f"tiny seed {k}: stopped by SIGTERM; the next kdcore ablate resumes it"
                in result.stdout), result.stdout
        assert "stopped by SIGTERM in stage 'student'" in (runs[k] / "log.txt").read_text()
        assert (runs[k] / CHECKPOINT).is_file() and not (runs[k] / "summary.json").exists()
    assert "seed 2: starting" not in result.stdout and not runs[2].exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the runs in /proc")
def test_a_killed_parallel_grid_takes_its_runs_with_it_and_the_same_ablate_resumes_them(
        tiny_recipe, tmp_path):
    """``--jobs 2`` starts each run in a session of its own: with the grid SIGKILLed they
    trained on alone, and the next ``kdcore ablate`` counted each as failed, its directory in
    use. They die with the grid now, unfinished, and the same ablate resumes them."""
    import subprocess
    import sys

    grid = tmp_path / "grid"
    runs = [grid / "tiny" / f"seed{k}" for k in range(2)]
    args = ["ablate", str(tiny_recipe), "--out", str(grid), "--seeds", "0,1", "--jobs", "2",
            "--set", "stages.student.epochs=300"]
    proc = subprocess.Popen([sys.executable, "-m", "kdcore", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all((r / "log.txt").is_file() and "student 1/" in (r / "log.txt").read_text()
                      for r in runs):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        children = [int(p.name) for p in Path("/proc").iterdir()
                    if p.name.isdigit() and _parent(int(p.name)) == proc.pid]
        assert len(children) >= 2  # its two runs (and any helper it started)
        proc.kill()
        proc.wait()
        while any(Path(f"/proc/{pid}").exists() and _parent(pid) != -1 for pid in children):
            assert time.monotonic() < deadline, "the runs outlived their grid"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not any((r / "summary.json").exists() for r in runs)  # stopped with it
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "2 ran, 0 skipped, 0 failed" in result.output, result.output


def _parent(pid: int) -> int:
    """``pid``'s parent process id, or -1 once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return -1 if fields[0] == "Z" else int(fields[1])


def test_nothing_to_resume_names_overwrite(tiny_recipe, tmp_path):
    assert_one_line_error(invoke("run", tiny_recipe, "--out", tmp_path / "none", "--resume"),
                   "nothing to resume", "--overwrite")


@pytest.mark.slow
def test_a_checkpoint_missing_a_model_is_refused(tiny_recipe, started):
    state = load(started / CHECKPOINT)
    del state["models"]["student"]
    save(state, started / CHECKPOINT)
    assert_one_line_error(invoke("run", tiny_recipe, "--out", started, "--resume"),
                   "no weights for model(s) student", "--overwrite")


@pytest.mark.slow
def test_a_checkpoint_with_weights_of_another_shape_is_refused(tiny_recipe, started):
    state = load(started / CHECKPOINT)
    state["models"]["student"] = {k: torch.zeros(3) for k in state["models"]["student"]}
    save(state, started / CHECKPOINT)
    assert_one_line_error(invoke("run", tiny_recipe, "--out", started, "--resume"),
                          f"weights for model 'student' from {started / CHECKPOINT} do not fit")


@pytest.mark.slow
@pytest.mark.parametrize("change", ["none", "extra", "optimizer"])
def test_models_and_optimisers_that_do_not_match_the_recipe_are_named_whole(tiny_recipe,
                                                                             started, change):
    path = started / CHECKPOINT
    state = load(path)
    if change == "none":
        state["models"] = {}
        what = "holds no weights for model(s) student, teacher"
    elif change == "extra":
        state["models"]["peer"] = state["models"]["student"]
        what = "holds a model 'peer' that the recipe does not define"
    else:
        state["optimizers"]["student"]["param_groups"][0]["params"] = [0]
        what = None
    save(state, path)
    line = assert_one_line_error(invoke("run", tiny_recipe, "--out", started, "--resume"))
    if what is not None:
        assert line == f"kdcore: error: the checkpoint {path} {what}; start again with --overwrite"
    else:
        assert line.startswith(f"kdcore: error: the optimiser state of model 'student' in {path} "
                               "does not fit it (")
        assert line.endswith("); start again with --overwrite")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["no_position", "garbage", "old_format"])
def test_a_damaged_checkpoint_is_one_line(tiny_recipe, started, damage):
    """Without a checkpoint kept before it (or with that one damaged too): refused."""
    path = started / CHECKPOINT
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
        (started / PREVIOUS).write_bytes(b"nor this")
    else:
        state = load(path)
        state.pop("position" if damage == "no_position" else "format")
        save(state, path)
        (started / PREVIOUS).unlink()
    assert_one_line_error(invoke("run", tiny_recipe, "--out", started, "--resume"), str(path))


@pytest.mark.slow
def test_a_resumed_runs_next_checkpoint_keeps_the_one_it_resumed_from(tiny_recipe, started):
    last = load(started / CHECKPOINT)["position"]
    with pytest.raises(Interrupted):  # a checkpoint every epoch: one after student epoch 0
        run_recipe(load_recipe(tiny_recipe, ["run.checkpoint_interval_s=0"]), out=str(started),
                   resume=True, overrides=["run.checkpoint_interval_s=0"],
                   host=PluginHost(extra=[InterruptAt(epoch=1, batch=1, stage="student")]))
    assert load(started / PREVIOUS)["position"] == last
    assert load(started / CHECKPOINT)["position"]["history_rows"] == last["history_rows"] + 1


@pytest.mark.slow
def test_a_damaged_checkpoint_resumes_from_the_one_before_it_bit_for_bit(tiny_recipe, started,
                                                                         tmp_path, warnings):
    """One bit flipped in the last checkpoint: the run goes on from the checkpoint kept
    before it (said in a warning) and trains again what came after. Its first new checkpoint
    replaces the damaged one without keeping it, so a kill then still finds a good one
    before the last; and the run ends as the run that was never stopped, keeping no second
    checkpoint once finished."""
    path = started / CHECKPOINT
    before = load(started / PREVIOUS)["position"]
    assert before["history_rows"] < load(path)["position"]["history_rows"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(Interrupted):  # stopped again, after the teacher stage's checkpoint
        run_recipe(load_recipe(tiny_recipe), out=str(started), resume=True,
                   host=PluginHost(extra=[InterruptAt(epoch=0, batch=1, stage="student")]))
    (warning,) = [w for w in warnings if "checkpoint kept" in w]
    assert re.fullmatch(
        rf"cannot read checkpoint {re.escape(str(path))}: the file is damaged \(its record "
        r"\S+ fails its CRC-32 check\); the run goes on from the checkpoint kept before it "
        rf"\({before['history_rows']} epochs in\), and trains again what came after", warning)
    assert load(started / PREVIOUS)["position"] == before  # not the damaged file
    assert load(path)["position"]["history_rows"] > before["history_rows"]
    run_recipe(load_recipe(tiny_recipe), out=str(started), resume=True)
    run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "straight"))
    assert_same_history(started, tmp_path / "straight")
    assert not (started / PREVIOUS).exists()


@pytest.mark.slow
def test_a_history_shorter_than_the_checkpoint_is_refused(tiny_recipe, started):
    state = load(started / CHECKPOINT)
    state["position"]["history_rows"] = 99
    save(state, started / CHECKPOINT)
    assert_one_line_error(invoke("run", tiny_recipe, "--out", started, "--resume"), "history",
                   "--overwrite")
    with History(started) as h:
        assert len(h) >= 1  # nothing already written was lost


def test_check_says_when_the_run_directory_already_holds_a_run(tiny_recipe, started):
    """`check --out DIR` passed silently where `run` then refused DIR for want of a flag: a
    run's history there, or (until session 45) the files of a run killed at its start."""
    result = invoke("check", tiny_recipe, "--out", started)
    assert result.exit_code == 0
    assert ("`kdcore run` without --resume or --overwrite would stop: "
            f"{started} already holds a run; use --resume to continue it, --overwrite to "
            "replace it, or --out for a new directory") in result.output
    fresh = started.parent / "fresh"
    assert "would stop" not in invoke("check", tiny_recipe, "--out", fresh).output
    fresh.mkdir()
    (fresh / "recipe.toml").write_text((started / "recipe.toml").read_text())
    (fresh / "log.txt").write_text("")
    said = invoke("check", tiny_recipe, "--out", fresh).output
    assert (f"would stop: {fresh} holds recipe.toml, log.txt, which a run writes, but no "
            "run; give an empty or new --out, or --overwrite to replace them; a run killed "
            "there before its first checkpoint: --resume starts it again") in said


def test_a_folder_holding_a_runs_files_but_no_run_is_not_written_over(tiny_recipe, tmp_path):
    """`run recipe.toml --out .` replaced the user's recipe (comments and all) and
    models/teacher.pt; the API's out="" wrote a run into the current folder."""
    import kdcore

    home = tmp_path / "project"
    (home / "models").mkdir(parents=True)
    (home / "models" / "teacher.pt").write_text("my weights")
    (home / "notes.toml").write_text(tiny_recipe.read_text())
    assert_one_line_error(invoke("run", home / "notes.toml", "--out", home),
                          "holds models, which a run writes, but no run")
    assert (home / "models" / "teacher.pt").read_text() == "my weights"
    mine = home / "recipe.toml"
    mine.write_text("# mine\n" + tiny_recipe.read_text())
    for flags in ([], ["--overwrite"]):  # not even when told to replace what is there
        assert_one_line_error(invoke("run", mine, "--out", home, *flags),
                              "the file the run in", "writes its resolved recipe to")
    assert mine.read_text().startswith("# mine\n")
    with pytest.raises(kdcore.KdcoreError, match="out takes a path .*, not str ''"):
        kdcore.run(tiny_recipe, out="")


def _history_of(tmp_path, **constants):
    from kdcore.history import HistoryWriter

    path = tmp_path / "history.h5"
    HistoryWriter(path).create(recipe_toml="", versions={}, num_classes=3,
                               class_names=["a", "b", "c"], constants=constants,
                               transition_matrix=torch.eye(3).numpy())
    return path


def test_data_changes_names_what_differs_from_the_historys_data(tmp_path):
    from kdcore.checkpointing import data_changes

    labels = torch.tensor([0, 1, 2, 1, 0], dtype=torch.int32)
    saved = {"noisy_label": labels, "clean_label": labels.clone(),
             "clean_mask": torch.ones(5, dtype=torch.bool)}
    path = _history_of(tmp_path, **saved)
    names = ["a", "b", "c"]
    assert data_changes(path, 3, names, saved) == []
    assert data_changes(path, 4, names, saved) == ["4 classes, the run's 3"]
    assert data_changes(path, 3, ["a", "b", "z"], saved) == ["the class names"]
    flipped = dict(saved, noisy_label=torch.tensor([0, 2, 2, 0, 0], dtype=torch.int32),
                   clean_mask=torch.tensor([True, False, True, False, True]))
    assert data_changes(path, 3, ["a", "c", "b"], flipped) == [
        "the class names", "noisy_label differs at 2 of 5 samples",
        "clean_mask differs at 2 of 5 samples"]
    grown = {name: torch.cat([v, v[:1]]) for name, v in saved.items()}
    assert data_changes(path, 3, names, grown) == ["6 training samples, the run's 5"]
    # a constant the history does not hold (written before kdcore kept it) is not compared
    assert data_changes(path, 3, names, dict(saved, sample_id=torch.arange(9))) == []
    assert data_changes(path, 3, names, {"sample_id": torch.arange(9), **flipped}) == [
        "noisy_label differs at 2 of 5 samples", "clean_mask differs at 2 of 5 samples"]


@pytest.mark.slow
def test_resume_with_other_data_than_the_run_started_with_is_refused(tiny_recipe, tmp_path):
    """A label file edited between the stop and the resume gives the same recipe and other
    labels: refused in one line naming the difference; restored, the resume ends as the
    uninterrupted run does."""
    import numpy as np

    noise = tmp_path / "noise.npy"
    assert invoke("noise", tiny_recipe, "--out", noise).exit_code == 0
    recipe = tmp_path / "from_file.toml"
    recipe.write_text(tiny_recipe.read_text().replace(
        '''model = "symmetric"
params = { rate = 0.4 }''', f'''model = "label_file"
params = {{ path = "{noise}" }}'''))
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(recipe), out=str(out),
                   host=PluginHost(extra=[InterruptAt(epoch=0, batch=1, stage="student")]))
    original = np.load(noise)
    with History(out) as h:
        trained = h.data("sample_id")[:3]  # rows of the training split
    edited = original.copy()
    edited[trained] = (edited[trained] + 1) % 10
    np.save(noise, edited)
    assert_one_line_error(invoke("run", recipe, "--out", out, "--resume"),
                          "the data are not those the run in",
                          "(noisy_label differs at 3 of 400 samples;", "--overwrite")
    np.save(noise, original)
    result = invoke("run", recipe, "--out", out, "--resume", "-q")
    assert result.exit_code == 0, result.output
    run_recipe(load_recipe(recipe), out=str(tmp_path / "straight"))
    assert_same_history(out, tmp_path / "straight")
