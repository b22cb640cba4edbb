"""The shipped recipes: lsh.toml and lp-lsh.toml run on digits (tiny overrides); the
Fashion-MNIST variants resolve and validate, with symmetric and pair-flip noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.plan import build_plan
from kdcore_lsh import ConnectedModel

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
TINY = ["data.train_subset=300", "stages.teacher.epochs=1", "stages.student.epochs=1",
        "run.device=cpu", "models.teacher.params.hidden=[64]"]


class StudentProbe:
    def __init__(self):
        self.model = None
        self.metrics = {}

    @kdcore.hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        if ctx.stage.name == "student":
            self.model = ctx.models["student"]
            self.metrics = dict(metrics)
            self.base_target_by = ctx.ledger.producer("base_target")


def _run(name: str, tmp_path: Path) -> tuple[dict, StudentProbe]:
    probe = StudentProbe()
    recipe = kdcore.load_recipe(RECIPES / name, TINY)
    summary = kdcore.run_recipe(recipe, out=str(tmp_path / name), progress=False,
                                host=kdcore.PluginHost(extra=[probe]))
    return summary, probe


@pytest.mark.slow
def test_lsh_recipe_runs_on_digits(tmp_path):
    summary, probe = _run("lsh.toml", tmp_path)
    assert set(summary) == {"teacher", "student"}
    assert isinstance(probe.model, ConnectedModel)
    assert probe.model.connector.in_features == 32 and probe.model.feature_dim == 64
    m = probe.metrics
    assert m["lsh/mimic/num_hashes"] == 32 * 64
    assert 0 < m["select/mimic/fraction"] <= 1  # the teacher-correct share, recorded
    assert m["train/student/mimic"] > 0 and m["train/student/ce"] > 0


@pytest.mark.slow
def test_lp_lsh_recipe_runs_on_digits(tmp_path):
    pytest.importorskip("kdcore_lp", reason="lp-lsh.toml needs kdcore-lp's teacher_lp")
    summary, probe = _run("lp-lsh.toml", tmp_path)
    assert set(summary) == {"teacher", "student"}
    # the student trained on the LP labels, with the feature term beside CE
    assert probe.base_target_by == "teacher_lp"
    assert probe.metrics["train/student/mimic"] > 0


def test_digits_recipes_pass_kdcore_check():
    """``kdcore check`` sets the run up as a run would (data, models, components)."""
    for name in ("lsh.toml", "lp-lsh.toml"):
        if name == "lp-lsh.toml" and importlib.util.find_spec("kdcore_lp") is None:
            continue
        result = CliRunner().invoke(main, ["check", str(RECIPES / name)],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", ["lsh-fmnist.toml", "l2-fmnist.toml", "lshl2-fmnist.toml",
                                  "lshl2s-fmnist.toml"])
@pytest.mark.parametrize("noise", ["symmetric", "pair_flip"])
def test_fashion_mnist_variants_validate(name, noise):
    """The plan (every check but loading the data: ``kdcore check`` also needs the
    Fashion-MNIST files, which a test machine may lack)."""
    recipe = kdcore.load_recipe(RECIPES / name, [f"data.noise.model={noise}"])
    plan = build_plan(recipe, kdcore.PluginHost())
    assert recipe.data.dataset == "fashion_mnist" and recipe.data.noise.params == {"rate": 0.4}
    student = next(s for s in plan.stages if s.name == "student")
    uses = [c.spec.use for c in student.components]
    expected = {"lsh-fmnist.toml": "lsh", "l2-fmnist.toml": "l2", "lshl2-fmnist.toml": "lshl2",
                "lshl2s-fmnist.toml": "lshl2_s"}[name]
    assert uses == ["ce", expected]
    assert student.components[1].roles() == ("teacher",)
    assert [s.epochs for s in recipe.stages] == [20, 20]
