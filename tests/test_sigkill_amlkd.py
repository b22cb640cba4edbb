"""SIGKILL the AML-KD recipe (four stages of stateful components: LP label stores, AWE's
WeightNet, small-loss selections, mixup terms) at twelve points, then ``--resume``: every
resumed run ends bit for bit equal to the uninterrupted one.

The points cover the middle of every stage's epochs, the moments just after a stage boundary
(in ``on_stage_start``'s wake and at the next stage's first batch), the end of an epoch before
its history row, the middle of a history write and of a checkpoint write, with epoch
checkpoints every epoch and with only the run's start, its first epoch and its stage ends
checkpointed. One child process per point, forked from one driver that imported torch once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdcore import load_recipe, run_recipe
from kdcore.testing import assert_same_history

RECIPE = Path(__file__).parents[1] / "recipes" / "amlkd.toml"
OVERRIDES = [
    "data.train_subset=240", "run.threads=1", "run.device=\"cpu\"",
    "models.teacher.params.hidden=[32]", "models.student.params.hidden=[16]",
    "stages.teacher.epochs=2", "stages.warmup.epochs=1", "stages.refine.epochs=2",
    "stages.mutual.epochs=2",
]
# (name, kind, stage, epoch, batch or call count, checkpoint interval)
POINTS = [
    ("teacher-first-epoch", "batch", "teacher", 0, 2, 30),
    ("teacher-second-epoch", "batch", "teacher", 1, 1, 30),
    ("warmup-stage-start", "stage_start", "warmup", 0, 0, 30),
    ("warmup-first-batch", "batch", "warmup", 0, 0, 30),
    ("refine-mid-epoch", "batch", "refine", 0, 2, 0),
    ("refine-epoch-end", "epoch_end", "refine", 1, 0, 30),
    ("refine-history-write", "history", "refine", 0, 60, 0),
    ("mutual-stage-start", "stage_start", "mutual", 0, 0, 0),
    ("mutual-first-batch", "batch", "mutual", 0, 0, 30),
    ("mutual-history-write", "history", "mutual", 1, 400, 30),
    ("mutual-checkpoint-write", "checkpoint", "mutual", 0, 0, 0),
    ("mutual-last-epoch", "batch", "mutual", 1, 3, 0),
]

DRIVER = textwrap.dedent('''
    """Forks one child per kill point; each runs the recipe and SIGKILLs itself there."""
    import json, os, signal, sys
    from loguru import logger
    import kdcore
    import kdcore.checkpoint as ckpt
    import kdcore.history_writer as hw

    recipe_path, overrides, points, root = sys.argv[1], json.loads(sys.argv[2]), \\
        json.loads(sys.argv[3]), sys.argv[4]

    def die(out, where):
        with open(os.path.join(out, "killed-at"), "w") as fh:
            fh.write(where)
        os.kill(os.getpid(), signal.SIGKILL)

    class Killer:
        def __init__(self, out, kind, stage, epoch, n):
            self.out, self.kind, self.stage, self.epoch, self.n = out, kind, stage, epoch, n
            self.batches = -1
            self.armed = False

        def here(self, ctx):
            return ctx.stage.name == self.stage and ctx.epoch == self.epoch

        @kdcore.hookimpl
        def kdcore_stage_start(self, ctx, stage):
            if self.kind == "stage_start" and stage.name == self.stage:
                die(self.out, "stage_start")

        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            if self.kind == "batch" and self.here(ctx):
                self.batches += 1
                if self.batches == self.n:
                    die(self.out, "batch")

        @kdcore.hookimpl
        def kdcore_epoch_end(self, ctx, epoch, metrics):
            if self.here(ctx):
                if self.kind == "epoch_end":
                    die(self.out, "epoch_end")
                self.armed = True  # the history row of this epoch is written next

    for i, (name, kind, stage, epoch, n, interval) in enumerate(points):
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            continue
        logger.remove()
        out = os.path.join(root, name)
        os.makedirs(out)
        killer = Killer(out, kind, stage, epoch, n)
        if kind == "history":
            append = hw.HistoryWriter.append_epoch

            def append_and_die(self, **kw):
                if not killer.armed:
                    return append(self, **kw)
                calls = [0]

                def count(frame, event, arg):
                    if event == "c_call":
                        calls[0] += 1
                        if calls[0] == killer.n:
                            die(out, "history")
                sys.setprofile(count)
                try:
                    return append(self, **kw)
                finally:
                    sys.setprofile(None)
            hw.HistoryWriter.append_epoch = append_and_die
        if kind == "checkpoint":
            save = ckpt.save

            def save_and_die(state, path, previous=None):
                position = state.get("position", {})
                if position.get("stage") == 3 and position.get("epoch") == 1:
                    import torch
                    torch.save(state, str(path) + ".tmp")  # written, not yet in place
                    die(out, "checkpoint")
                save(state, path, previous)
            ckpt.save = save_and_die
        recipe = kdcore.load_recipe(recipe_path, [*overrides,
                                                  f"run.checkpoint_interval_s={interval}"])
        kdcore.run_recipe(recipe, out=out, host=kdcore.PluginHost(extra=[killer]),
                          overrides=[*overrides, f"run.checkpoint_interval_s={interval}"])
        os._exit(3)  # the run finished: the kill point was never reached
''')


@pytest.mark.slow
def test_sigkill_at_twelve_points_then_resume_is_bit_exact(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script), str(RECIPE), json.dumps(OVERRIDES), json.dumps(POINTS),
         str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    straight: dict[int, dict] = {}
    for name, kind, _stage, _epoch, _n, interval in POINTS:
        out = tmp_path / name
        assert (out / "killed-at").read_text() == kind, f"{name}: not killed where meant"
        assert not (out / "summary.json").exists()
        overrides = [*OVERRIDES, f"run.checkpoint_interval_s={interval}"]
        recipe = load_recipe(RECIPE, overrides)
        if interval not in straight:
            straight[interval] = run_recipe(recipe, out=str(tmp_path / f"straight-{interval}"),
                                            overrides=overrides)
        resumed = run_recipe(recipe, out=str(out), resume=True, overrides=overrides)
        assert resumed == straight[interval], name
        assert_same_history(out, tmp_path / f"straight-{interval}")
        assert json.loads((out / "summary.json").read_text()) == straight[interval]
