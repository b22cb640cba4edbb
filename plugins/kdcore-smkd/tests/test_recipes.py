"""The plugin's recipes: the three digits recipes run (tiny) and record selection quality;
the Fashion-MNIST variants resolve and validate (they are too long for a test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kdcore
from kdcore.config import structure
from kdcore_smkd import COMPONENTS

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
TINY = ("data.train_subset=200", "stages.mutual.epochs=2", "run.threads=1")


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "name"), [
    ("smkd.toml", "smkd"), ("smkd-static.toml", "smkd"), ("dml.toml", "dml"),
])
def test_digits_recipe_runs_and_records_selection_quality(tmp_path, recipe, name):
    resolved = kdcore.load_recipe(RECIPES / recipe, TINY)
    summary = kdcore.run_recipe(resolved, out=str(tmp_path / "run"))
    assert set(summary) == {"peer_a", "peer_b"}
    with kdcore.History(tmp_path / "run") as h:
        assert len(h) == 2
        for role in ("peer_a", "peer_b"):
            for stat in ("fraction", "precision", "recall"):
                assert f"select/{name}/{role}/{stat}" in h.metric_names()
            fraction = h.metric(f"select/{name}/{role}/fraction")
            assert ((fraction >= 0) & (fraction <= 1)).all()
            assert np.isfinite(h.metric(f"test/{role}/acc")).all()
            assert f"select/{name}/{role}" in h.column_names()
        if name == "dml":
            assert (h.metric("select/dml/peer_a/fraction") == 1).all()
            assert h.metric("select/dml/peer_a/precision")[0] == pytest.approx(
                h.data("clean_mask").mean())
        else:
            assert "select/smkd/threshold" in h.metric_names()
        if recipe == "smkd.toml":  # the progressive threshold relaxes
            assert h.metric("select/smkd/threshold")[1] < h.metric("select/smkd/threshold")[0]
        assert np.isfinite(h.metric(f"ensemble/{name}/test_acc")).all()


@pytest.mark.parametrize("recipe", ["smkd-fmnist.toml", "smkd-static-fmnist.toml",
                                    "dml-fmnist.toml", "independent-fmnist.toml"])
@pytest.mark.parametrize("noise", ["symmetric", "pair_flip"])
def test_fashion_mnist_recipes_resolve(recipe, noise):
    resolved = kdcore.load_recipe(RECIPES / recipe, [f"data.noise.model={noise}"])
    assert resolved.data.dataset == "fashion_mnist"
    assert resolved.data.params == {"flatten": True}
    assert resolved.data.noise.model == noise
    assert resolved.data.noise.params == {"rate": 0.4}  # valid for both noise models
    assert resolved.models["peer_a"].arch == resolved.models["peer_b"].arch == "mlp"
    stage = resolved.stages[0]
    assert stage.train == ["peer_a", "peer_b"] and stage.epochs == 20
    used = [c for c in stage.components if c.enabled]
    assert len(used) == 1 and used[0].use in COMPONENTS
    params = structure(COMPONENTS[used[0].use].Params, used[0].params, "params")
    if recipe == "independent-fmnist.toml":
        assert params.threshold > 1 and params.fallback == "none"
    if recipe == "smkd-fmnist.toml":
        assert params.schedule == "progressive"
    if recipe == "smkd-static-fmnist.toml":
        assert params.schedule == "static"
