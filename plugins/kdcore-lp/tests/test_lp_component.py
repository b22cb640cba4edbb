"""The LP components inside a run: they rewrite base_target, keep selected samples, log."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import kdcore
from kdcore import PluginHost, RecipeError
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import TinyNet, component, harness, run_tiny, stage, teacher_stage, tiny_recipe
from kdcore_lp import TeacherLP

# the teacher is wider than kdcore.testing's; the student keeps the default lr (0.05)
MODELS = {"teacher": {"arch": "mlp", "params": {"hidden": [64]}, "optimizer": {"lr": 0.1}},
          "student": {"arch": "mlp", "params": {"hidden": [16]}}}
SMALL_LOSS = component("small_loss", params={"scope": "pass", "mask_loss": False})
KEEP_SELECTED = {"keep_selected": "select/small_loss"}


def _recipe(*, select_in_refine: bool = True, lp_params: dict | None = None) -> dict:
    """Teacher, LP warm-up, teacher-LP refinement and mutual LP (``select_in_refine=False``
    drops the refine stage's small-loss selection; ``lp_params`` override the teacher LP's)."""
    refine_selection = [SMALL_LOSS] if select_in_refine else []
    return tiny_recipe(
        teacher_stage(3),
        stage("warmup", 1, ["student"], component("initial_lp"), component("ce")),
        stage("refine", 2, ["student"], *refine_selection,
              component("teacher_lp", params={**KEEP_SELECTED, **(lp_params or {})}),
              component("ce")),
        stage("mutual", 2, ["student"], SMALL_LOSS,
              component("mutual_lp", params=KEEP_SELECTED), component("ce")),
        models=MODELS, name="lp", train_subset=400, run={"checkpoint_interval_s": 30.0},
    )


@pytest.mark.slow
def test_lp_pipeline_refines_labels_and_keeps_selected(tmp_path):
    run_tiny(_recipe(), tmp_path / "run")
    with kdcore.History(tmp_path / "run") as h:
        rows = h.epochs()
        noisy = h.data("noisy_label")
        # warm-up: 5th percentile keeps noisy labels, the rest follow the propagated teacher
        warm = rows.index(("warmup", 0))
        target = h.column("target", warm).argmax(-1)
        lp_label = h.column("lp/initial_lp/label", warm)
        conf = h.column("lp/initial_lp/confidence", warm).astype(np.float64)
        relabel = conf >= np.quantile(conf, 0.05)
        assert (target[relabel] == lp_label[relabel]).all()
        assert (target[~relabel] == noisy[~relabel]).all()
        assert (h.column("lp/initial_lp/refined", warm) == target).all()
        assert h.column_kind("lp/initial_lp/refined") == "label"
        assert h.producers("target")[warm] == "initial_lp"
        # stage 1: selected samples keep their noisy labels
        r1 = rows.index(("refine", 1))
        sel = h.column("select/small_loss", r1)
        assert (h.column("target", r1).argmax(-1)[sel] == noisy[sel]).all()
        assert (h.column("lp/teacher_lp/refined", r1) == h.column("target", r1).argmax(-1)).all()
        assert h.producers("target")[r1] == "teacher_lp"
        assert not np.isnan(h.metric("lp/teacher_lp/acc")[r1])
        # mutual: the graph alternates by the student's absolute epoch, student on even and
        # teacher on odd ones; the student trained 3 epochs before (warm-up 1, refine 2)
        m0, m1 = rows.index(("mutual", 0)), rows.index(("mutual", 1))
        flags = h.metric("lp/mutual_lp/graph_is_teacher")
        assert flags[m0] == 1.0 and flags[m1] == 0.0
        # refined labels are measured against the clean labels every epoch
        assert 0 <= h.metric("label/acc")[r1] <= 1


def test_teacher_lp_rewrites_base_target_and_keeps_the_selected_samples():
    g = torch.Generator().manual_seed(0)
    n, c = 90, 3
    x = torch.randn(n, 6, generator=g)
    clean = torch.randint(0, c, (n,), generator=g)
    noisy = torch.where(torch.rand(n, generator=g) < 0.4, torch.randint(0, c, (n,), generator=g),
                        clean)
    torch.manual_seed(0)
    h = harness(TeacherLP, {**KEEP_SELECTED, "k": 5}, x=x, noisy_label=noisy, clean_label=clean,
                num_classes=c, models={"teacher": TinyNet(c=c), "student": TinyNet(c=c)},
                name="teacher_lp")
    selected = torch.rand(n, generator=g) < 0.5
    h.run.ledger.add("select/small_loss", selected, producer="small_loss", kind="mask")
    h.setup()
    h.epoch_start(0)
    led = h.run.ledger
    labels = led["base_target"].argmax(1)
    assert led.producer("base_target") == "teacher_lp"
    assert torch.equal(labels[selected], noisy[selected])
    assert torch.equal(labels[~selected], led["lp/teacher_lp/label"][~selected])
    assert led["lp/teacher_lp/confidence"].shape == (n,)
    assert h.metrics["lp/teacher_lp/changed"] == pytest.approx(
        float((labels != noisy).double().mean()))
    assert h.metrics["lp/teacher_lp/graph_is_teacher"] == 1.0
    # the batch's targets are the epoch's base targets, untouched by refine
    batch = h.batch([4, 2, 7])
    assert torch.equal(h.component.refine(h.ctx, batch, batch.targets),
                       led["base_target"][[4, 2, 7]])


def _plan(data: dict):
    return build_plan(recipe_from_dict(data), PluginHost())


def test_missing_selection_column_is_a_clear_error():
    with pytest.raises(RecipeError, match="'teacher_lp'.*reads ledger column "
                                          "'select/small_loss'.*nothing placed before it"):
        _plan(_recipe(select_in_refine=False))


def _refine(*before: dict, **lp: object) -> dict:
    """Teacher, then a stage whose teacher LP (``lp`` its parameters) follows ``before``."""
    return tiny_recipe(teacher_stage(1), stage("refine", 1, ["student"], *before,
                                               component("teacher_lp", params=lp),
                                               component("ce")), models=MODELS)


@pytest.mark.parametrize(("when", "hook"), [("stage_start", "on_stage_start"),
                                            ("epoch_start", "on_epoch_start")])
def test_the_propagation_reads_and_writes_its_columns_before_the_batches(when, hook):
    data = _refine(when=when, seed_weights="select/small_loss", keep_selected="select/small_loss")
    data["stages"].insert(1, stage("select", 1, ["student"], SMALL_LOSS, component("ce")))
    lp = _plan(data).stages[2].components[0]
    assert lp.reads_at_start() == {"select/small_loss": hook}
    assert lp.writes_at_start() == {"base_target": hook, "lp/teacher_lp/label": hook,
                                    "lp/teacher_lp/confidence": hook,
                                    "lp/teacher_lp/refined": hook}
    assert _plan(_refine(when=when)).stages[1].components[0].reads_at_start() == {}


def test_seed_weights_and_selections_are_read_only_where_written_before_the_batches():
    """What the propagation reads at its stage's start is there then: AWE's seed weights are
    written in ``on_epoch_start`` (too late for a propagation in ``on_stage_start``), its loss
    weights in the batches; small-loss selection at each epoch start."""
    seeds = component("awe", params={"seed_mode": "cosine", "loss_mode": "cosine"})
    _plan(_refine(seeds, seed_weights="awe/seed_weight", when="epoch_start"))
    with pytest.raises(RecipeError, match=re.escape(
            "'teacher_lp' (teacher_lp) reads ledger column 'awe/seed_weight' in on_stage_start, "
            "before stage 'refine' trains its first batch, but 'awe' (awe) writes it in "
            "on_epoch_start")):
        _plan(_refine(seeds, seed_weights="awe/seed_weight", when="stage_start"))
    with pytest.raises(RecipeError, match=re.escape(
            "reads ledger column 'weight/awe' in on_epoch_start, before stage 'refine' trains "
            "its first batch, but 'awe' (awe) writes it only from the stage's batches on")):
        _plan(_refine(seeds, seed_weights="weight/awe"))
    batch_scope = component("small_loss", params={"scope": "batch", "rate": 0.2})
    _plan(_refine(batch_scope, keep_selected="select/small_loss"))
    with pytest.raises(RecipeError, match="'select/small_loss' in on_stage_start"):
        _plan(_refine(batch_scope, keep_selected="select/small_loss", when="stage_start"))


def test_plan_checks_the_roles_the_settings_use():
    _plan(_recipe())
    with pytest.raises(RecipeError, match="'teacher_lp'.*model role 'teachr'.*did you mean"):
        _plan(_recipe(lp_params={"teacher": "teachr"}))
    with pytest.raises(RecipeError, match="'teacher_lp'.*reads ledger column 'awe/seed_weight'"):
        _plan(_recipe(lp_params={"seed_weights": "awe/seed_weight"}))
    # a student graph seeded by the selected labels uses no teacher
    _plan(_recipe(lp_params={"teacher": "nobody", "graph": "student"}))
