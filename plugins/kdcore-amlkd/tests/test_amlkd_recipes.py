"""The AML-KD recipes run on the built-in data, and their histories show refinement quality."""

from __future__ import annotations

from pathlib import Path

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

RECIPES = Path(__file__).parents[3] / "recipes"
SHORT = ["data.train_subset=300", "stages.teacher.epochs=2", "stages.warmup.epochs=1",
         "stages.refine.epochs=2", "stages.mutual.epochs=2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["amlkd", "amlkd-release", "amlkd-no-awe", "amlkd-no-mutual",
                                  "amlkd-no-smallloss"])
def test_recipe_runs_and_records_refinement(name, tmp_path):
    recipe = kdcore.load_recipe(RECIPES / f"{name}.toml", SHORT)
    kdcore.run_recipe(recipe, out=str(tmp_path / "run"))
    with kdcore.History(tmp_path / "run") as h:
        rows = h.epochs()
        assert [s for s, _ in rows] == ["teacher"] * 2 + ["warmup"] + ["refine"] * 2 + [
            "mutual"] * 2
        label_acc = h.metric("label/acc")
        assert np.isfinite(label_acc).all()
        if name != "amlkd-no-smallloss":
            prec = h.metric("select/small_loss/precision")
            rec = h.metric("select/small_loss/recall")
            assert np.isfinite(prec[3:]).all() and np.isfinite(rec[3:]).all()
        if name in ("amlkd", "amlkd-no-awe", "amlkd-no-mutual"):
            # no oracle: r is the share of noisy labels the warm-up's LP relabelled
            target = h.column("target", 2).argmax(-1)
            relabelled = float((target != h.data("noisy_label")).mean())
            np.testing.assert_allclose(h.metric("select/small_loss/rate_estimate")[3:],
                                       relabelled, rtol=1e-6)
            np.testing.assert_allclose(h.metric("select/small_loss/rate")[3:], relabelled,
                                       rtol=1e-6)
        producers = h.producers("target")
        assert producers[2] == "initial_lp"
        if name == "amlkd-release":
            # a batch-level term: logged per epoch, no per-sample column
            assert np.isfinite(h.metric("train/student/relational_kd")[3:]).all()


@pytest.mark.slow
def test_initial_lp_beats_the_noisy_labels(tmp_path):
    """The refinement is real: with a decently trained teacher the refined labels are more
    often right than the 40%-noisy ones."""
    recipe = kdcore.load_recipe(RECIPES / "amlkd.toml", [
        "stages.teacher.epochs=15", "stages.warmup.epochs=1", "stages.refine.epochs=1",
        "stages.mutual.epochs=1"])
    kdcore.run_recipe(recipe, out=str(tmp_path / "run"))
    with kdcore.History(tmp_path / "run") as h:
        warm = h.epochs().index(("warmup", 0))
        assert h.metric("label/acc")[warm] > h.metric("label/noisy_acc")[warm] + 0.2


@pytest.mark.slow
def test_resumed_refinement_stage_equals_an_uninterrupted_one(tmp_path):
    """Every random draw of the AML-KD components (the pass order of the selection, the
    WeightNet, the shared mix) is checkpointed: a run stopped mid-epoch and resumed is the
    uninterrupted run, bit for bit."""
    recipe = tiny_recipe(
        teacher_stage(2),
        stage("refine", 3, ["student"],
              component("small_loss", params={"scope": "pass", "mask_loss": False}),
              component("awe", terms=["ce"], params={
                  "seed_mode": "learned", "selection": "select/small_loss",
                  "seed_alignment": "release_shuffled"}),
              component("teacher_lp", params={"keep_selected": "select/small_loss",
                                               "seed_weights": "awe/seed_weight"}),
              component("ce"), component("mixup_ce"), component("mixup_kd", weight=0.9)),
        name="amlkd-resume")
    run_tiny(recipe, tmp_path / "straight")
    with pytest.raises(Interrupted, match="stage 'refine' epoch 1 batch 2"):
        run_tiny(recipe, tmp_path / "cut", plugins=[InterruptAt(1, 2, "refine")])
    with kdcore.History(tmp_path / "cut") as h:
        assert h.epochs()[-1] == ("refine", 0)
    run_tiny(recipe, tmp_path / "cut", resume=True)
    assert_same_history(tmp_path / "cut", tmp_path / "straight")


@pytest.mark.parametrize("name", ["amlkd", "amlkd-fmnist", "amlkd-release"])
def test_the_mutual_stage_starts_on_the_teachers_graph_as_the_release(name):
    """The release's stage 2 starts at epoch 181 (odd: the teacher's graph); mutual_lp
    alternates by the student's absolute epoch plus ``offset`` (even: the student's graph)."""
    from pathlib import Path

    from kdcore import load_recipe

    recipe = load_recipe(Path(__file__).parents[3] / "recipes" / f"{name}.toml")
    s = next(i for i, st in enumerate(recipe.stages)
             if any(c.use == "mutual_lp" for c in st.components))
    before = sum(st.epochs for st in recipe.stages[:s] if "student" in st.train)
    lp = next(c for c in recipe.stages[s].components if c.use == "mutual_lp")
    assert (before + lp.params.get("offset", 0)) % 2 == 1
