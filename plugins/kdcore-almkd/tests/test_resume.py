"""A run interrupted mid-epoch, after lambda updates, resumes to the same lambdas bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import kdcore
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    assert_same_history,
    component,
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
)

RECIPE = tiny_recipe(
    teacher_stage(1),
    stage("student", 3, ["student"], component(
        "almkd", params={"preset": "almkd", "select_every": 1, "val_batch": 20})),
    name="almkd-resume", gold_per_class=5, batch_size=32,
)

# inside the student stage's last epoch, which began with an update
CRASH = ("student", 2, 3)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_lambdas(tmp_path):
    straight = run_tiny(RECIPE, tmp_path / "straight")
    stage_name, epoch, batch = CRASH
    with pytest.raises(Interrupted):
        run_tiny(RECIPE, tmp_path / "cut", plugins=[InterruptAt(epoch, batch, stage_name)])
    with kdcore.History(tmp_path / "cut") as h:
        assert h.epochs()[-1] == ("student", 1)
    resumed = run_tiny(RECIPE, tmp_path / "cut", resume=True)
    assert resumed == straight
    with kdcore.History(tmp_path / "straight") as b:
        table = b.column("weight/almkd")
        assert not np.array_equal(table[-1], table[-2])  # updated after the resume point too
    assert_same_history(tmp_path / "cut", tmp_path / "straight")
