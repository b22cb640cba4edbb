"""A run interrupted mid-epoch resumes to the same history: the progressive threshold is a
pure function of the position in the stage, and in-turn steps go through the checkpointed
optimisers."""

from __future__ import annotations

import pytest

import kdcore
from kdcore.testing import InterruptAt, Interrupted, assert_same_history


@pytest.mark.slow
@pytest.mark.parametrize("use", ["smkd", "dml"])
def test_interrupted_run_resumes_to_the_same_history(tmp_path, run_peers, component, use):
    comps = component(use, {"order": "in_turn"})
    run_peers(comps, epochs=3, name="straight").close()
    with pytest.raises(Interrupted):
        run_peers(comps, epochs=3, name="killed", observers=(InterruptAt(1, 2),))
    with kdcore.History(tmp_path / "killed") as h:
        assert len(h) == 1
    recipe = kdcore.load_recipe(tmp_path / "killed.toml")
    kdcore.run_recipe(recipe, out=str(tmp_path / "killed"), resume=True)
    assert_same_history(tmp_path / "killed", tmp_path / "straight")
