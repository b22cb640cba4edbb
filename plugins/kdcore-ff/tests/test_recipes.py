"""The shipped recipes: ff.toml runs on the built-in digits (tiny overrides) and resumes exactly;
ff-fmnist.toml validates, and its preset generates what it says when Fashion-MNIST is
installed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.plan import build_plan
from kdcore.testing import InterruptAt, Interrupted, assert_same_history
from kdcore_ff import OPEN_CLASS_NAME

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
# checkpoint every epoch: the resume test stops the run mid-stage
TINY = ["run.device=cpu", "run.checkpoint_interval_s=0", "stages.ssl.epochs=1",
        "stages.warmup.epochs=2", "stages.ff.epochs=2"]


def _run(out: Path, extra=(), observers=(), resume=False):
    recipe = kdcore.load_recipe(RECIPES / "ff.toml", [*TINY, *extra])
    return kdcore.run_recipe(recipe, out=str(out), resume=resume, progress=False,
                             host=kdcore.PluginHost(extra=list(observers)))


@pytest.mark.slow
def test_ff_recipe_runs_on_digits(tmp_path):
    summary = _run(tmp_path / "ff")
    student = summary["student"]
    assert student["stage"] == "ff" and 0 <= student["test_bacc_at_best_val"] <= 1
    with kdcore.History(tmp_path / "ff") as h:
        stages = [s for s, _ in h.epochs()]
        assert stages == ["ssl", "warmup", "warmup", "ff", "ff"]
        assert not np.isnan(h.metric("test/student/bacc")).any()
        ff_rows = [i for i, s in enumerate(stages) if s == "ff"]
        for key in ("open_precision", "open_recall", "closed_recall", "precision", "recall"):
            values = h.metric(f"select/instance_filter/{key}")[ff_rows]
            assert ((values >= 0) & (values <= 1)).all(), key
        assert h.metric("lc/label_correction/relabelled")[ff_rows[0]] >= 0  # at stage start
        np.testing.assert_array_equal(h.metric("ff/ff_warmup/classifier_only")[1:3], [1, 1])
        assert h.producers("target")[ff_rows[0]] == "label_correction"
        status = h.data("ff/status")
        assert set(np.unique(status)) == {0, 1, 2}
        assert h.metric("ff/open_share")[0] == pytest.approx((status == 2).mean())


@pytest.mark.slow
def test_ff_recipe_resumes_to_the_same_history(tmp_path):
    _run(tmp_path / "straight")
    with pytest.raises(Interrupted):  # inside a classifier-only warm-up epoch
        _run(tmp_path / "killed", observers=[InterruptAt(1, 1, "warmup")])
    with kdcore.History(tmp_path / "killed") as h:
        assert len(h) == 2
    _run(tmp_path / "killed", resume=True)
    assert_same_history(tmp_path / "killed", tmp_path / "straight")
    for role_file in ("student.pt",):
        x = torch.load(tmp_path / "straight" / "models" / role_file, weights_only=True)
        y = torch.load(tmp_path / "killed" / "models" / role_file, weights_only=True)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_ff_recipe_passes_kdcore_check():
    """``kdcore check`` sets the run up as a run would (data, models, components)."""
    result = CliRunner().invoke(main, ["check", str(RECIPES / "ff.toml")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_ff_fmnist_recipe_validates():
    """The plan (every check but loading the data: ``kdcore check`` also needs the
    Fashion-MNIST files, which a test machine may lack)."""
    recipe = kdcore.load_recipe(RECIPES / "ff-fmnist.toml")
    plan = build_plan(recipe, kdcore.PluginHost())
    assert [c.spec.use for c in plan.stages[2].components] == [
        "label_correction", "instance_filter", "ce"]
    assert recipe.data.dataset == "ncifar" and recipe.data.params == {"preset": "fmnist-lt"}
    assert recipe.data.noise.model == "ncifar_noise"
    assert [s.name for s in recipe.stages] == ["ssl", "warmup", "ff"]
    assert [c.use for c in recipe.stages[2].components] == [
        "label_correction", "instance_filter", "ce"]


def test_fmnist_preset_generates_the_asked_sizes():
    from kdcore_ff.ncifar import ncifar

    try:
        splits = ncifar(preset="fmnist-lt")
    except kdcore.KdcoreError as exc:
        if "Fashion-MNIST" in str(exc):
            pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
        raise
    train, test = splits.train, splits.test
    counts = torch.bincount(train.y, minlength=9).tolist()
    shape = [0.1 ** (c / 7) for c in range(8)]
    assert counts[:8] == [round(3000 * s) for s in shape]
    assert counts[8] == round(0.2 * sum(counts[:8]) / 0.8)
    assert math.isclose(counts[8] / len(train), 0.2, abs_tol=0.5 / len(train))
    assert train.class_names[-1] == OPEN_CLASS_NAME and "Bag" not in train.class_names
    assert train.x.shape[1:] == (784,)
    assert torch.bincount(test.y, minlength=9).tolist() == [1000] * 8 + [0]
