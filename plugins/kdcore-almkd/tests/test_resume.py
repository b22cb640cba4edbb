"""A run interrupted mid-epoch, after lambda updates, resumes to the same lambdas bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import kdcore

RECIPE = """
[run]
name = "almkd-resume"
device = "cpu"
checkpoint_interval_s = 0  # every epoch: the resume tests kill mid-stage
[data]
dataset = "digits"
train_subset = 300
gold_per_class = 5
batch_size = 32
[data.noise]
model = "symmetric"
params = { rate = 0.4 }
[models.teacher]
arch = "mlp"
params = { hidden = [32] }
optimizer = { lr = 0.1 }
[models.student]
arch = "mlp"
params = { hidden = [16] }
optimizer = { lr = 0.1 }
[[stages]]
name = "teacher"
epochs = 1
train = ["teacher"]
[[stages.components]]
use = "ce"
[[stages]]
name = "student"
epochs = 3
train = ["student"]
[[stages.components]]
use = "almkd"
params = { preset = "almkd", select_every = 1, val_batch = 20 }
"""


class Crash(Exception):
    pass


class CrashMidEpoch:
    """Stops the run inside the student stage's last epoch, which began with an update."""

    @kdcore.hookimpl
    def kdcore_batch_end(self, run, batch, losses):
        if run.stage.name == "student" and run.epoch == 2 and batch.step % 5 == 3:
            raise Crash


def test_interrupted_run_resumes_to_the_same_lambdas(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE)
    recipe = kdcore.load_recipe(path)
    straight = kdcore.run_recipe(recipe, out=str(tmp_path / "straight"))
    with pytest.raises(Crash):
        kdcore.run_recipe(recipe, out=str(tmp_path / "cut"),
                          host=kdcore.PluginHost(extra=[CrashMidEpoch()]))
    with kdcore.History(tmp_path / "cut") as h:
        assert h.epochs()[-1] == ("student", 1)
    resumed = kdcore.run_recipe(recipe, out=str(tmp_path / "cut"), resume=True)
    assert resumed == straight
    with kdcore.History(tmp_path / "cut") as a, kdcore.History(tmp_path / "straight") as b:
        assert a.epochs() == b.epochs()
        table = b.column("weight/almkd")
        assert not np.array_equal(table[-1], table[-2])  # updated after the resume point too
        for name in b.column_names():
            np.testing.assert_array_equal(a.column(name), b.column(name), err_msg=name)
        for name in b.metric_names():
            if not name.startswith("time/"):
                np.testing.assert_array_equal(a.metric(name), b.metric(name), err_msg=name)
