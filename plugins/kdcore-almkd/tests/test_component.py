"""The component: lambda rows aligned with sample ids and its own generator (through the
component harness), both recipes with their per-epoch lambda tables in the history (real runs on
digits), the plan's recipe checks, and the noisy-vs-clean analysis."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdcore
from kdcore import PluginHost, RecipeError
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import TinyNet, component, harness, run_tiny, stage, teacher_stage, tiny_recipe
from kdcore_almkd import analysis
from kdcore_almkd.component import AlmKD

RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def _tiny(*more: dict, params: dict | None = None, use: str = "almkd", epochs: int = 2,
          gold: int = 5) -> dict:
    """A one-epoch teacher, then ``epochs`` of the student with the ``use`` component, then
    the ``more`` stages."""
    return tiny_recipe(
        teacher_stage(1),
        stage("student", epochs, ["student"], component(use, params=params)),
        *more,
        name="almkd-tiny", gold_per_class=gold, batch_size=32, run={"checkpoint_interval_s": 30.0},
    )


def _index_weights(index: torch.Tensor) -> torch.Tensor:
    """A weight table that is a known function of the sample index: [CE, KD] per row."""
    i = index.double()
    return torch.stack([(i % 5) / 4, 1 - (i % 3) / 2], dim=1)


class IndexedAlmKD(AlmKD):
    """``almkd`` whose table starts as a function of the sample index (and is never updated)."""

    def initial_lambdas(self, ctx):
        return _index_weights(torch.arange(ctx.ledger.size)).float().to(ctx.device)


def _harness(cls=AlmKD, params: dict | None = None, *, n: int = 40, seed: int = 0):
    """``cls`` serving a student with one frozen teacher, over ``n`` random samples."""
    torch.manual_seed(0)
    x = torch.randn(n, 8)
    y = torch.randint(0, 3, (n,))
    models = {"student": _mlp(), "teacher": _mlp()}
    return harness(cls, params, x=x, noisy_label=y, num_classes=3, models=models,
                   train=("student",), name="almkd", seed=seed)


def _mlp() -> kdcore.KDModel:
    return TinyNet(8, 3, 5, activation="tanh")


def test_lambda_rows_stay_aligned_with_sample_ids():
    h = _harness(IndexedAlmKD, {"preset": "amal", "teachers": ["teacher"]}).setup()
    table = h.run.ledger["weight/almkd"]
    torch.testing.assert_close(table, _index_weights(torch.arange(40)).float())
    assert h.run.ledger.producer("weight/almkd") == "almkd"
    index = torch.randperm(40, generator=torch.Generator().manual_seed(1))[:16]
    assert not torch.equal(index, index.sort().values)  # shuffled: not a range of sample ids
    batch = h.batch(index)
    got = h.component.transfer(h.ctx, batch)
    # the per-sample loss is the mix with the weights of exactly these ids
    w = _index_weights(index).float()
    z = batch.out("student").logits.detach()
    t = batch.out("teacher").logits.detach()
    ce = F.cross_entropy(z, batch.noisy_label, reduction="none")
    kd = 16 * F.kl_div(F.log_softmax(z / 4, 1), F.log_softmax(t / 4, 1), reduction="none",
                       log_target=True).sum(1)
    torch.testing.assert_close(got.detach(), w[:, 0] * ce + w[:, 1] * kd, rtol=1e-5, atol=1e-6)
    assert got.requires_grad  # the student's logits keep their graph


def test_uniform_init_comes_from_the_component_generator():
    params = {"preset": "almkd", "select_every": 100}

    def table(seed):
        return _harness(params=params, n=400, seed=seed).setup().run.ledger["weight/almkd"]

    first = table(0)
    torch.testing.assert_close(first, table(0), rtol=0, atol=0)  # seeded: the same table twice
    assert not torch.equal(first, table(1))  # and another seed gives another one
    lam = first[:, 1].double()
    assert 0.3 < lam.mean() < 0.7 and lam.std() > 0.2  # U(0, 1)
    torch.testing.assert_close(first.sum(1), torch.ones(400))  # convex: (1 - l, l)


def test_declared_data_flow():
    comp = _harness(params={"teachers": ["teacher"]}).component
    assert comp.roles() == ("teacher",)
    assert "weight/almkd" in comp.written_columns()
    assert set(comp.reads()) == {"target", "clean_mask"}
    assert comp.lr_roles() == ("student",)  # its update pass steps with the student's


def _run_recipe_file(name, tmp_path, *overrides):
    recipe = kdcore.load_recipe(RECIPES / name, [
        "data.train_subset=300", "run.device=cpu", *overrides])
    summary = kdcore.run_recipe(recipe, out=str(tmp_path / name), overwrite=True)
    return summary, tmp_path / name


def _check_history(run_dir, column, teachers, bounds, updated_epochs, student_epochs):
    with kdcore.History(run_dir) as h:
        table = h.column(column)
        rows = [i for i, (s, _) in enumerate(h.epochs()) if s == "student"]
        assert len(rows) == student_epochs
        assert table.shape[1:] == (300, teachers + 1)  # epochs x N x (M + 1)
        student = table[rows].astype(np.float64)
        assert np.isfinite(student).all()
        assert student.min() >= 0.0 and student.max() <= bounds[1] + 1e-3
        assert [p for p in h.producers(column) if p] == [column.split("/")[1]] * student_epochs
        updated = h.metric(f"{column}/updated")[rows]
        assert [e for e, u in enumerate(updated) if u == 1.0] == updated_epochs
        for e in range(1, student_epochs):  # the table changes exactly at updates
            changed = not np.array_equal(student[e], student[e - 1])
            assert changed == (e in updated_epochs), e
        share_noisy = h.metric(f"{column}/kd_share_noisy")[rows]
        assert np.isfinite(share_noisy).all()
    return student


@pytest.mark.slow
def test_almkd_recipe_runs_on_digits_with_lambda_per_sample_each_epoch(tmp_path, capsys):
    summary, run_dir = _run_recipe_file(
        "almkd.toml", tmp_path, "stages.teacher.epochs=1", "stages.student.epochs=3",
        "stages.student.components.almkd.params.select_every=1")
    assert "student" in summary
    student = _check_history(run_dir, "weight/almkd", 1, (0, 1), [1, 2], 3)
    np.testing.assert_allclose(student.sum(axis=2), 1.0, atol=2e-3)  # convex: (1 - l, l)
    # the analysis entry point reads the same history
    assert analysis.main([str(run_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["stage", "epoch"]
    assert [line.split()[:2] for line in out[1:]] == [["student", str(e)] for e in range(3)]
    with kdcore.History(run_dir) as h:
        rows = analysis.lambda_by_noise(h)
        clean = h.data("clean_mask").astype(bool)
        w = h.column("weight/almkd", len(h) - 1).astype(np.float64)
    share = w[:, 1] / (w[:, 0] + w[:, 1])
    assert rows[-1].share_noisy == pytest.approx(share[~clean].mean())
    assert rows[-1].share_clean == pytest.approx(share[clean].mean())
    assert rows[-1].kd_noisy == pytest.approx(w[~clean, 1].mean())
    assert rows[-1].ce_clean == pytest.approx(w[clean, 0].mean())


@pytest.mark.slow
def test_amal_recipe_runs_with_two_teachers_one_of_them_a_self_distillation_twin(tmp_path):
    # teacher_small takes the student's own architecture ([32]): a self-distillation teacher
    summary, run_dir = _run_recipe_file(
        "amal.toml", tmp_path, "stages.teacher.epochs=1", "stages.teacher_small.epochs=1",
        "stages.student.epochs=3", "stages.student.components.almkd.params.select_every=2",
        "models.teacher_small.params.hidden=[32]")
    assert set(summary) == {"teacher", "teacher_small", "student"}
    student = _check_history(run_dir, "weight/almkd", 2, (1e-7, 2 - 1e-7), [2], 3)
    # AMAL's init: every teacher 0.9, CE 1 - 0.9
    np.testing.assert_allclose(student[0], np.tile([0.1, 0.9, 0.9], (300, 1)), atol=1e-3)
    with kdcore.History(run_dir) as h:
        assert analysis.weight_columns(h) == ["weight/almkd"]
        names = h.metric_names()
    assert {"weight/almkd/teacher", "weight/almkd/teacher_small", "weight/almkd/ce",
            "weight/almkd/meta_loss_first"} <= set(names)


@pytest.mark.slow
def test_a_following_stage_continues_the_table(tmp_path):
    """The same label in the next stage carries the table over (kdcore's ``carry_state``)."""
    params = {"preset": "almkd", "select_every": 1}
    more = stage("student2", 1, ["student"], component("almkd", params=params))
    run_tiny(_tiny(more, params=params, epochs=2), tmp_path / "run")
    with kdcore.History(tmp_path / "run") as h:
        assert [s for s, _ in h.epochs()] == ["teacher", "student", "student", "student2"]
        table = h.column("weight/almkd")
        updated = h.metric("weight/almkd/updated")
    assert updated[-1] == 0.0  # epoch 0 of student2: warm, no update
    np.testing.assert_array_equal(table[3], table[2])


def _plan(recipe: dict):
    """The run's plan of ``recipe`` (its checks, no data loaded, nothing trained)."""
    return build_plan(recipe_from_dict(recipe), PluginHost())


@pytest.mark.parametrize(("params", "gold", "match"), [
    ({"teachers": ["student"]}, 5, r"'student' is the student itself"),
    ({}, 0, r"data\.gold_per_class"),
    ({"teachers": ["teacher", "teacher"]}, 5, r"names a role twice"),
])
def test_recipe_checks(params, gold, match):
    with pytest.raises(RecipeError, match=match):
        _plan(_tiny(params=params, gold=gold, epochs=1))


def test_its_table_of_weights_is_no_reader_s_one_weight_per_sample():
    """``weight/<name>`` holds a weight per term and sample, ``(N, M + 1)``: read as a label
    propagation's seed weights it had passed ``check`` and stopped the run at a shape
    mismatch."""
    params = {"seeds": "noisy", "graph": "student", "seed_weights": "weight/almkd"}
    lp = stage("lp", 1, ["student"], component("teacher_lp", params=params), component("ce"))
    with pytest.raises(RecipeError, match=re.escape(
            "reads ledger column 'weight/almkd' as one number per sample (a column of kind mask, "
            "weight, value or exact), but 'almkd' writes a row of numbers per sample there")):
        _plan(_tiny(lp, params={"teachers": ["teacher"]}))


def test_plan_refuses_a_teacher_role_that_does_not_exist():
    """``teachers`` is a tuple of ``Role``: the plan checks each names a model of the recipe."""
    with pytest.raises(RecipeError, match="'teachr'"):
        _plan(_tiny(params={"teachers": ["teachr"]}))
    with pytest.raises(RecipeError, match="'teacher_small'"):
        _plan(_tiny(params={"teachers": ["teacher", "teacher_small"]}))
    _plan(_tiny(params={"teachers": ["teacher"]}))  # the right wiring passes


@pytest.mark.slow
def test_the_val_split_needs_no_gold(tmp_path):
    run_tiny(_tiny(params={"meta_split": "val", "teachers": ["teacher"], "select_every": 1},
                   gold=0, epochs=2), tmp_path / "run")
    with kdcore.History(tmp_path / "run") as h:
        assert list(h.metric("weight/almkd/updated")[1:]) == [0.0, 1.0]


def test_a_trained_teacher_is_refused():
    recipe = _tiny(params={"teachers": ["teacher"]})
    recipe["stages"][1]["train"] = ["student", "teacher"]
    recipe["stages"][1]["components"][0]["models"] = ["student"]
    with pytest.raises(RecipeError, match="teachers must be frozen"):
        _plan(recipe)


def test_analysis_reports_a_missing_history(tmp_path, capsys):
    assert analysis.main([str(tmp_path)]) == 2
    assert "no history.h5" in capsys.readouterr().err


def test_check_refuses_a_meta_split_that_is_empty():
    """At set-up, as the first lambda update would, so that ``kdcore check`` says so."""
    from click.testing import CliRunner

    from kdcore.cli import main

    recipe = Path(__file__).parents[3] / "recipes" / "almkd.toml"
    sets = ["data.val_fraction=0.0", 'stages.student.components.almkd.params.meta_split="val"',
            'stages.teacher.keep="last"', 'stages.student.keep="last"']
    result = CliRunner().invoke(main, ["check", str(recipe)] + [
        a for s in sets for a in ("--set", s)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        "kdcore: error: component 'almkd': the 'val' split is empty; set data.gold_per_class "
        "(or data.val_fraction) so the lambda update has data")
