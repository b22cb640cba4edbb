"""The LP components inside a run: they rewrite base_target, keep selected samples, log."""

from __future__ import annotations

import numpy as np
import torch

import kdcore
from kdcore.testing import component, run_tiny, stage, teacher_stage, tiny_recipe

# the teacher is wider than kdcore.testing's; the student keeps the default lr (0.05)
MODELS = {"teacher": {"arch": "mlp", "params": {"hidden": [64]}, "optimizer": {"lr": 0.1}},
          "student": {"arch": "mlp", "params": {"hidden": [16]}}}
SMALL_LOSS = component("small_loss", params={"scope": "pass", "mask_loss": False})
KEEP_SELECTED = {"keep_selected": "select/small_loss"}


def _recipe(*, select_in_refine: bool = True) -> dict:
    """Teacher, LP warm-up, teacher-LP refinement and mutual LP (``select_in_refine=False``
    drops the refine stage's small-loss selection)."""
    refine_selection = [SMALL_LOSS] if select_in_refine else []
    return tiny_recipe(
        teacher_stage(3),
        stage("warmup", 1, ["student"], component("initial_lp"), component("ce")),
        stage("refine", 2, ["student"], *refine_selection,
              component("teacher_lp", params=KEEP_SELECTED), component("ce")),
        stage("mutual", 2, ["student"], SMALL_LOSS,
              component("mutual_lp", params=KEEP_SELECTED), component("ce")),
        models=MODELS, name="lp", train_subset=400, run={"checkpoint_interval_s": 30.0},
    )


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
        assert h.producers("target")[warm] == "initial_lp"
        # stage 1: selected samples keep their noisy labels
        r1 = rows.index(("refine", 1))
        sel = h.column("select/small_loss", r1)
        assert (h.column("target", r1).argmax(-1)[sel] == noisy[sel]).all()
        assert h.producers("target")[r1] == "teacher_lp"
        assert not np.isnan(h.metric("lp/teacher_lp/acc")[r1])
        # mutual: the graph alternates student (even) and teacher (odd)
        m0, m1 = rows.index(("mutual", 0)), rows.index(("mutual", 1))
        flags = h.metric("lp/mutual_lp/graph_is_teacher")
        assert flags[m0] == 0.0 and flags[m1] == 1.0
        # refined labels are measured against the clean labels every epoch
        assert 0 <= h.metric("label/acc")[r1] <= 1


def test_missing_selection_column_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(kdcore.KdcoreError, match="select/small_loss.*no earlier component"):
        run_tiny(_recipe(select_in_refine=False), tmp_path / "run")
    assert torch.is_tensor(torch.zeros(1))
