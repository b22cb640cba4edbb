"""A run interrupted mid-epoch resumes to the same history: the progressive threshold is a
pure function of the position in the stage, and in-turn steps go through the checkpointed
optimisers."""

from __future__ import annotations

import pytest

import kdcore
from kdcore.testing import assert_same_history


class Crash(Exception):
    pass


class CrashMidEpoch:
    @kdcore.hookimpl
    def kdcore_batch_end(self, run, batch, losses):
        if run.epoch == 1 and batch.step % 5 == 2:
            raise Crash


@pytest.mark.parametrize("use", ["smkd", "dml"])
def test_interrupted_run_resumes_to_the_same_history(tmp_path, run_peers, component, use):
    comps = component(use, {"order": "in_turn"})
    run_peers(comps, epochs=3, name="straight").close()
    with pytest.raises(Crash):
        run_peers(comps, epochs=3, name="killed", observers=(CrashMidEpoch(),))
    with kdcore.History(tmp_path / "killed") as h:
        assert len(h) == 1
    recipe = kdcore.load_recipe(tmp_path / "killed.toml")
    kdcore.run_recipe(recipe, out=str(tmp_path / "killed"), resume=True)
    assert_same_history(tmp_path / "killed", tmp_path / "straight")
