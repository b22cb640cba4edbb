"""A run killed with SIGKILL mid-epoch resumes to the same final metrics, bit for bit, from an
epoch checkpoint (``checkpoint_interval_s = 0``) or from the last stage's end (the default
interval, longer than this run), where resume first drops the history rows after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kdcore import History, load_recipe, run_recipe
from kdcore.checkpoint import CHECKPOINT, load
from kdcore.testing import assert_same_history

KILLER = textwrap.dedent('''
    import os, signal, sys
    from loguru import logger
    import kdcore

    class KillMidEpoch:
        """SIGKILLs this process in the middle of the student stage's second epoch."""
        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            if ctx.stage.name == "student" and ctx.epoch == 1 and batch.step % 7 == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    logger.remove()
    recipe = kdcore.load_recipe(sys.argv[1])
    kdcore.run_recipe(recipe, out=sys.argv[2], host=kdcore.PluginHost(extra=[KillMidEpoch()]))
''')


@pytest.mark.parametrize(("interval", "checkpointed"), [
    (0, {"stage": 1, "epoch": 1, "history_rows": 3}),  # after student epoch 0
    (None, {"stage": 1, "epoch": 0, "history_rows": 2}),  # the teacher stage's end
])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny_recipe, tmp_path, interval,
                                                             checkpointed):
    text = tiny_recipe.read_text().replace('name = "student"\nepochs = 2',
                                           'name = "student"\nepochs = 3')
    if interval is not None:
        text = text.replace('device = "cpu"\n',
                            f'device = "cpu"\ncheckpoint_interval_s = {interval}\n')
    tiny_recipe.write_text(text)
    recipe = load_recipe(tiny_recipe)
    straight = run_recipe(recipe, out=str(tmp_path / "straight"))

    killed = tmp_path / "killed"
    script = tmp_path / "kill.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(tiny_recipe), str(killed)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with History(killed) as h:
        # teacher 2 epochs + student epoch 0 completed; epoch 1 was interrupted
        assert h.epochs() == [("teacher", 0), ("teacher", 1), ("student", 0)]
    assert not (killed / "summary.json").exists()
    position = load(killed / CHECKPOINT)["position"]
    assert {k: position[k] for k in checkpointed} == checkpointed

    resumed = run_recipe(recipe, out=str(killed), resume=True)
    assert resumed == straight
    assert_same_history(killed, tmp_path / "straight")
    assert json.loads((killed / "summary.json").read_text()) == straight
