"""A run's start and end (kdcore.engine): the banner, what a resume compares and refuses (each
message whole), what the checkpoint and the history record of the start, the log sink, saved
tracebacks and the summary."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from loguru import logger

from kdcore import Component, History, hookimpl
from kdcore.checkpoint import CHECKPOINT
from kdcore.testing import component, run_tiny, stage, tiny_recipe
from tests.cli_helpers import invoke, logged, one_line_error


class Watch(Component):
    """A component of no kind: it only watches each epoch end."""

    def on_epoch_end(self, ctx, metrics):
        pass


class Abstain(Component):
    """A selector and a weighter that keep every sample at weight one (it abstains)."""

    def select(self, ctx, batch):
        return None

    def weight(self, ctx, batch):
        return None


class Noted(Component):
    """Records a table in setup, logs at DEBUG level, and notes the context its adapt_models
    is handed."""

    adapted: list[tuple[str, str]] = []

    def adapt_models(self, ctx):
        Noted.adapted.append((ctx.name, type(ctx.generator).__name__))

    def setup(self, ctx):
        ctx.record_data(f"noted/{self.name}", torch.arange(3))

    def on_epoch_end(self, ctx, metrics):
        logger.debug("a debug line the run's log leaves out")


class Stop(Component):
    """Stops the run at the first epoch's end: with a KdcoreError, or as a plugin's bug."""

    def on_epoch_end(self, ctx, metrics):
        from kdcore import KdcoreError

        raise KdcoreError("stopped on purpose") if ctx.stage.name == "k" else RuntimeError("bug")


class Components:
    """The test components of this module, as one plugin."""

    @hookimpl
    def kdcore_add_components(self):
        return {"watch": Watch, "abstain": Abstain, "noted": Noted, "stop": Stop}


def _mlp_parameters(sizes: list[int]) -> int:
    """Weights and biases of a fully connected net with these layer widths."""
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def test_the_banner_names_the_data_each_model_and_each_stages_components_in_order(tmp_path):
    models = {
        "teacher": {"arch": "mlp", "params": {"hidden": [32]}, "cache_outputs": True},
        "student": {"arch": "mlp", "params": {"hidden": [16]}},
    }
    recipe = tiny_recipe(
        stage("warm", 2, ["teacher"], component("ce"), keep="best_val"),
        stage("kd", 1, ["student"], component("ce", "ce_s", models=["student"]),
              component("hinton_kd", "kd", models=["student"])),
        stage("look", 1, [], component("watch", models=["student"]), eval=["student"]),
        stage("both", 1, ["teacher", "student"], component("ce", "ce_t", models=["teacher"]),
              component("ce", "ce_s", models=["student"]),
              component("abstain", "sw", models=["teacher", "student"])),
        models=models, name="banner", seed=3, train_subset=120, noise_rate=0.3)
    with logged() as lines:
        run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    with History(tmp_path / "run") as h:
        noisy, clean = h.data("noisy_label"), h.data("clean_label")
    start = next(i for i, line in enumerate(lines) if line.startswith("run 'banner'"))
    banner = lines[start:start + 15]
    assert banner[0] == f"run 'banner' seed 3 on cpu -> {tmp_path / 'run'}"
    data = re.fullmatch(r"data digits: train (\d+) \(noise symmetric, realised rate "
                        r"([0-9.]+)\), val (\d+), gold 0, test (\d+)", banner[1])
    assert data, banner[1]
    assert int(data[1]) == len(noisy) == 120
    assert data[2] == f"{np.mean(noisy != clean):.3f}" and int(data[3]) > 0 < int(data[4])
    assert banner[2:] == [
        f"model teacher: mlp ({_mlp_parameters([64, 32, 10]):,} parameters), outputs stored "
        "where frozen",
        f"model student: mlp ({_mlp_parameters([64, 16, 10]):,} parameters)",
        "stage 0 'warm': 2 epochs, trains teacher, keeps best_val",
        "  1. ce (ce, transfer) on teacher",
        "stage 1 'kd': 1 epoch, trains student, keeps last",
        "  1. ce_s (ce, transfer) on student",
        "  2. kd (hinton_kd, transfer) on student",
        "stage 2 'look': 1 epoch, trains nothing, keeps last",
        "  1. watch (watch, lifecycle) on student",
        "stage 3 'both': 1 epoch, trains teacher, student, keeps last",
        "  1. ce_t (ce, transfer) on teacher",
        "  2. ce_s (ce, transfer) on student",
        "  3. sw (abstain, select+weight) on teacher, student",
    ]


def test_the_banner_names_the_processes_of_a_distributed_run(tmp_path, monkeypatch):
    from kdcore import PluginHost, distributed
    from kdcore.engine import banner
    from kdcore.plan import build_plan
    from kdcore.prepare import prepare_run
    from kdcore.recipe import recipe_from_dict

    host = PluginHost()
    plan = build_plan(recipe_from_dict(tiny_recipe(stage("only", 1, ["student"],
                                                         component("ce")), seed=4)), host)
    run = prepare_run(plan, host, tmp_path)
    assert banner(plan, run).splitlines()[0] == f"run 'tiny' seed 4 on cpu -> {tmp_path}"
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, size=2))
    assert banner(plan, run).splitlines()[0] == (
        f"run 'tiny' seed 4 on cpu in 2 processes -> {tmp_path}")


def test_the_banner_says_when_the_kernels_are_deterministic(tmp_path):
    import torch

    from kdcore import PluginHost
    from kdcore.engine import banner
    from kdcore.plan import build_plan
    from kdcore.prepare import prepare_run
    from kdcore.recipe import recipe_from_dict
    from kdcore.torch_state import torch_state_kept

    host = PluginHost()
    plan = build_plan(recipe_from_dict(tiny_recipe(stage("only", 1, ["student"], component("ce")),
                                                   run={"deterministic": True})), host)
    with torch_state_kept(torch.device("cpu")):
        run = prepare_run(plan, host, tmp_path)
    assert banner(plan, run).splitlines()[0] == (
        f"run 'tiny' seed 0 on cpu with deterministic kernels -> {tmp_path}")


@pytest.mark.parametrize("stages, unused", [
    ([stage("only", 1, ["student"], component("ce"))], ["teacher"]),
    # a component's role parameter, a stage's eval, a component's models: each one uses it
    ([stage("kd", 1, ["student"], component("ce"),
            component("hinton_kd", "kd", params={"teacher": "teacher"}))], []),
    ([stage("s", 1, ["student"], component("ce"), eval=["student", "teacher"])], []),
    ([stage("s", 1, ["student"], component("ce"), component("watch", models=["teacher"]))], []),
    ([stage("t", 1, ["teacher"], component("ce"))], ["student"]),
])
def test_the_banner_says_which_models_no_stage_uses(tmp_path, stages, unused):
    """ce.toml extends a base that defines a teacher: it was listed like a model the run
    uses (and is built all the same: a base recipe's roles are the recipe's)."""
    from kdcore import PluginHost
    from kdcore.engine import banner
    from kdcore.plan import build_plan
    from kdcore.prepare import prepare_run
    from kdcore.recipe import recipe_from_dict

    host = PluginHost(extra=[Components()])
    plan = build_plan(recipe_from_dict(tiny_recipe(*stages)), host)
    lines = banner(plan, prepare_run(plan, host, tmp_path)).splitlines()
    models = [line for line in lines if line.startswith("model ")]
    assert [line.split(":")[0][len("model "):] for line in models
            if line.endswith(", used by no stage")] == unused
    assert len(models) == 2


@pytest.fixture
def started(tiny_runs, tmp_path):
    """A copy of the session's run stopped in its student stage, and its recipe."""
    shutil.copytree(tiny_runs / "started", tmp_path / "started")
    shutil.copy(tiny_runs / "tiny.toml", tmp_path / "tiny.toml")
    return tmp_path / "started"


def test_resume_without_a_checkpoint_but_with_epochs_of_history_names_them(started):
    (started / CHECKPOINT).unlink()
    with History(started) as h:
        rows = len(h)
    assert rows > 1
    line = one_line_error(invoke("run", started.parent / "tiny.toml", "--out", started,
                                 "--resume"))
    assert line == (f"kdcore: error: {started} holds {rows} epochs of history but no checkpoint "
                    f"({CHECKPOINT} is missing); start again with --overwrite (it replaces "
                    "that run)")


def test_resume_without_a_checkpoint_and_an_unreadable_saved_recipe_is_refused(started):
    (started / CHECKPOINT).unlink()
    (started / "history.h5").unlink()
    (started / "recipe.toml").write_bytes(b"\xff\xfe not UTF-8")
    line = one_line_error(invoke("run", started.parent / "tiny.toml", "--out", started,
                                 "--resume"))
    assert line == (f"kdcore: error: {started / 'recipe.toml'} cannot be read "
                    "(UnicodeDecodeError), so whether this is the same run is unknown; start "
                    "again with --overwrite (it replaces that run)")


def test_resume_without_a_checkpoint_starts_again_with_a_warning(tmp_path):
    """One epoch of history (the run stopped before its first checkpoint): the resume starts
    the run from the beginning and says so."""
    recipe = tiny_recipe(stage("t", 1, ["teacher"], component("ce")), train_subset=64)
    out = tmp_path / "run"
    run_tiny(recipe, out)
    (out / CHECKPOINT).unlink(missing_ok=True)
    (out / "summary.json").unlink()
    with logged("WARNING") as lines:
        run_tiny(recipe, out, resume=True)
    assert lines[0] == (f"{out} has no checkpoint yet (the run stopped before its first one): "
                        "starting it from the beginning")
    with History(out) as h:
        assert len(h) == 1


def test_a_checkpoint_records_the_resolved_recipe_and_the_set_values_it_was_started_with(
        tmp_path):
    from kdcore import PluginHost, load_recipe, run_recipe
    from kdcore.checkpoint import load
    from kdcore.testing import InterruptAt, Interrupted, write_recipe

    path = write_recipe(tiny_recipe(stage("t", 2, ["teacher"], component("ce")),
                                    train_subset=64), tmp_path / "r.toml")
    overrides = ["run.seed=4", "data.batch_size=16"]
    recipe = load_recipe(path, overrides)
    with pytest.raises(Interrupted):
        run_recipe(recipe, out=str(tmp_path / "run"), overrides=overrides,
                   host=PluginHost(extra=[InterruptAt(1, 0)]))
    state = load(tmp_path / "run" / CHECKPOINT)
    assert state["fingerprint"] == {"recipe": recipe.to_dict(), "overrides": overrides}


def _resume(started, *args):
    return one_line_error(invoke("run", started.parent / "tiny.toml", "--out", started,
                                 "--resume", *args))


def _differs(source: str, keys: str) -> str:
    return (f"kdcore: error: --resume: the recipe differs from the one {source}, at {keys}; "
            "resume with the same recipe and --set values, or start again with --overwrite")


def test_each_recipe_a_resume_compares_with_is_named_in_its_refusal(started, tiny_runs):
    assert _resume(started, "--set", "run.seed=5") == _differs(
        f"{started} was started with", "run.seed")
    shutil.copy(tiny_runs / "other" / "history.h5", started / "history.h5")
    assert _resume(started) == _differs(f"{started / 'history.h5'} was written by",
                                        "models.student.params.hidden[0]")
    (started / CHECKPOINT).unlink()
    (started / "history.h5").unlink()  # killed before its first checkpoint: its recipe.toml
    assert _resume(started, "--set", "data.batch_size=32") == _differs(
        f"{started} was started with", "data.batch_size")


@pytest.mark.parametrize("position", [
    {"stage": 2},  # one past the last stage
    {"epoch": 2, "history_rows": 4},  # one past the stage's last epoch
    {"epoch": 1, "history_rows": 1},  # the rows of another epoch
])
def test_a_checkpoint_position_just_past_the_run_is_refused_whole(started, position):
    from kdcore.checkpoint import load, save

    state = load(started / CHECKPOINT)
    assert state["position"]["stage"] == 1 and state["position"]["epoch"] == 0
    state["position"].update(position)
    save(state, started / CHECKPOINT)
    p = state["position"]
    assert _resume(started) == (
        f"kdcore: error: the checkpoint {started / CHECKPOINT} holds a position (stage "
        f"{p['stage']}, epoch {p['epoch']}, {p['history_rows']} history rows) that this "
        "recipe's run never reaches; start again with --overwrite")


@pytest.mark.parametrize(("differ", "shown"), [
    (1, "k00"), (8, "k00, k01, k02, k03, k04, k05, k06, k07"),
    (9, "k00, k01, k02, k03, k04, k05, k06, k07 and 1 more"),
    (12, "k00, k01, k02, k03, k04, k05, k06, k07 and 4 more")])
def test_recipe_changes_lists_at_most_eight_keys_then_counts_the_rest(differ, shown):
    from kdcore.provenance import recipe_changes

    saved = {f"k{i:02d}": i for i in range(12)}
    now = {k: v + (1 if i < differ else 0) for i, (k, v) in enumerate(saved.items())}
    assert recipe_changes(saved, now) == shown
    assert recipe_changes(saved, dict(saved)) == ""


def test_the_history_records_where_the_run_was_started_and_each_samples_labels(tmp_path):
    import platform

    from kdcore import PluginHost, load_recipe
    from kdcore.provenance import code_digests
    from kdcore.testing import write_recipe

    data = tiny_recipe(stage("t", 1, ["teacher"], component("ce")), train_subset=64)
    run_tiny(data, tmp_path / "run")
    code = code_digests(load_recipe(write_recipe(data, tmp_path / "r.toml")), PluginHost())
    with History(tmp_path / "run") as h:
        assert h.setup == {"device": "cpu", "processes": 1, "threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version(),
                           "code": code}
        noisy, clean = h.data("noisy_label"), h.data("clean_label")
        assert np.array_equal(h.data("clean_mask"), noisy == clean)
        sample_id = h.data("sample_id")
    assert len(noisy) == len(sample_id) == 64 and len(np.unique(sample_id)) == 64


def test_a_run_does_not_replace_an_earlier_one_unless_told_to(tmp_path):
    from kdcore import KdcoreError, load_recipe, run_recipe
    from kdcore.testing import write_recipe

    path = write_recipe(tiny_recipe(stage("t", 1, ["teacher"], component("ce")),
                                    train_subset=64), tmp_path / "r.toml")
    out = str(tmp_path / "run")
    run_recipe(load_recipe(path), out=out)
    with pytest.raises(KdcoreError, match="already holds a run"):
        run_recipe(load_recipe(path), out=out)
    run_recipe(load_recipe(path), out=out, overwrite=True)


def _one_stage(name: str, *components) -> dict:
    return tiny_recipe(stage(name, 1, ["teacher"], component("ce"), *components),
                       train_subset=64)


def test_a_components_adapt_models_data_and_debug_lines_in_a_run_and_in_check(tmp_path):
    """adapt_models gets the component's own context; the run's log is INFO and up; check
    (dry_setup) sets every component up and records nothing anywhere."""
    from kdcore import PluginHost, load_recipe
    from kdcore.engine import dry_setup
    from kdcore.testing import write_recipe

    recipe = _one_stage("n", component("noted", "mine"))
    Noted.adapted.clear()
    run_tiny(recipe, tmp_path / "run", plugins=[Components()])
    assert Noted.adapted == [("mine", "Generator")]
    with History(tmp_path / "run") as h:
        assert h.data("noted/mine").tolist() == [0, 1, 2]
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert "run 'tiny' seed 0" in log and "a debug line" not in log
    (tmp_path / "check").mkdir()
    path = write_recipe(recipe, tmp_path / "check" / "r.toml")
    dry_setup(load_recipe(path), PluginHost(extra=[Components()]),
              out=str(tmp_path / "check" / "out"))
    assert sorted(p.name for p in (tmp_path / "check").iterdir()) == ["r.toml"]


@pytest.mark.parametrize(("stage_name", "saved"), [("k", False), ("b", True)])
def test_a_run_that_stops_leaves_other_log_sinks_and_saves_a_traceback_only_for_a_bug(
        tmp_path, stage_name, saved):
    from kdcore import KdcoreError

    with logged() as lines:
        with pytest.raises(KdcoreError if stage_name == "k" else RuntimeError):
            run_tiny(_one_stage(stage_name, component("stop")), tmp_path / "run",
                     plugins=[Components()])
        logger.info("after the run")
    assert lines[-1] == "after the run"  # the run removed its own sink only
    log = (tmp_path / "run" / "log.txt").read_text(encoding="utf-8")
    assert ("Traceback (most recent call last)" in log) == saved
    assert "after the run" not in log


def test_an_interrupt_logs_where_the_run_stopped_even_before_its_set_up_ends(tmp_path,
                                                                              monkeypatch):
    import signal

    from kdcore import engine
    from kdcore.errors import Stopped
    from kdcore.testing import InterruptAt, Interrupted

    two = _one_stage("t")
    two["stages"] = [{**two["stages"][0], "epochs": 2},
                     {**two["stages"][0], "name": "u", "epochs": 3}]

    class StopAt(InterruptAt):
        @hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            try:
                super().kdcore_batch_end(ctx, batch, losses)
            except Interrupted:
                raise Stopped(signal.SIGTERM) from None  # as `kdcore run` raises a SIGTERM

    with pytest.raises(Stopped):
        run_tiny(two, tmp_path / "late", plugins=[StopAt(epoch=1, batch=0, stage="u")])
    assert ("stopped by SIGTERM in stage 'u', epoch 2; --resume continues from the last "
            "checkpoint") in (tmp_path / "late" / "log.txt").read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the data loads

    monkeypatch.setattr(engine, "prepare_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(two, tmp_path / "early")
    assert ("interrupted in stage 't', epoch 1; --resume continues from the last checkpoint"
            in (tmp_path / "early" / "log.txt").read_text())


def test_a_finished_run_writes_its_summary_and_stops_writing_its_log(tmp_path):
    import json

    summary = run_tiny(_one_stage("t"), tmp_path / "run")
    logger.info("a line after the run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert summary["teacher"]["stage"] == "t"
    assert "a line after the run" not in (tmp_path / "run" / "log.txt").read_text()


def test_the_progress_bar_follows_the_terminal_unless_asked(tmp_path, capsys, monkeypatch):
    import sys

    from kdcore import load_recipe, run_recipe
    from kdcore.testing import write_recipe

    path = write_recipe(_one_stage("p"), tmp_path / "r.toml")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    run_recipe(load_recipe(path), out=str(tmp_path / "tty"))
    assert "p 1/1" in capsys.readouterr().err
    run_recipe(load_recipe(path), out=str(tmp_path / "off"), progress=False)
    assert "p 1/1" not in capsys.readouterr().err


def test_a_checkpoint_that_does_not_fit_is_named_with_the_error_on_one_line(started,
                                                                          monkeypatch):
    from kdcore import checkpointing

    def restore_run(self, trainer, state):
        raise ValueError("first line\n  second   line " + "x" * 300)

    monkeypatch.setattr(checkpointing.Checkpointer, "restore_run", restore_run)
    shown = ("first line second line " + "x" * 300)[:200]
    assert _resume(started) == (
        f"kdcore: error: the checkpoint {started / CHECKPOINT} does not fit this run "
        f"(ValueError: {shown}); start again with --overwrite")
