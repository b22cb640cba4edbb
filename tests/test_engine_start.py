"""The start of a run (kdcore.engine): the banner it logs, and what a resume without a
checkpoint refuses, each message whole."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from loguru import logger

from kdcore import Component, History, hookimpl
from kdcore.checkpoint import CHECKPOINT
from kdcore.testing import component, run_tiny, stage, tiny_recipe
from tests.cli_helpers import invoke, one_line_error


class Watch(Component):
    """A component of no kind: it only watches the epochs end."""

    def on_epoch_end(self, ctx, metrics):
        pass


class WatchPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"watch": Watch}


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
        models=models, name="banner", seed=3, train_subset=120, noise_rate=0.3)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        run_tiny(recipe, tmp_path / "run", plugins=[WatchPlugin()])
    finally:
        logger.remove(sink)
    with History(tmp_path / "run") as h:
        noisy, clean = h.data("noisy_label"), h.data("clean_label")
    start = next(i for i, line in enumerate(lines) if line.startswith("run 'banner'"))
    banner = lines[start:start + 11]
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
        "stage 1 'kd': 1 epochs, trains student, keeps last",
        "  1. ce_s (ce, transfer) on student",
        "  2. kd (hinton_kd, transfer) on student",
        "stage 2 'look': 1 epochs, trains nothing, keeps last",
        "  1. watch (watch, lifecycle) on student",
    ]


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
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        run_tiny(recipe, out, resume=True)
    finally:
        logger.remove(sink)
    assert lines[0] == (f"{out} has no checkpoint yet (the run stopped before its first one): "
                        "starting it from the beginning")
    with History(out) as h:
        assert len(h) == 1
