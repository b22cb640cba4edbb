"""The LP components inside a run: they rewrite base_target, keep selected samples, log."""

from __future__ import annotations

import numpy as np
import torch

import kdcore

RECIPE = """
[run]
name = "lp"
device = "cpu"
[data]
dataset = "digits"
train_subset = 400
[data.noise]
model = "symmetric"
params = { rate = 0.4 }
[models.teacher]
arch = "mlp"
params = { hidden = [64] }
optimizer = { lr = 0.1 }
[models.student]
arch = "mlp"
params = { hidden = [16] }
[[stages]]
name = "teacher"
epochs = 3
train = ["teacher"]
[[stages.components]]
use = "ce"
[[stages]]
name = "warmup"
epochs = 1
train = ["student"]
[[stages.components]]
use = "initial_lp"
[[stages.components]]
use = "ce"
[[stages]]
name = "refine"
epochs = 2
train = ["student"]
[[stages.components]]
use = "small_loss"
params = { scope = "pass", mask_loss = false }
[[stages.components]]
use = "teacher_lp"
params = { keep_selected = "select/small_loss" }
[[stages.components]]
use = "ce"
[[stages]]
name = "mutual"
epochs = 2
train = ["student"]
[[stages.components]]
use = "small_loss"
params = { scope = "pass", mask_loss = false }
[[stages.components]]
use = "mutual_lp"
params = { keep_selected = "select/small_loss" }
[[stages.components]]
use = "ce"
"""


def test_lp_pipeline_refines_labels_and_keeps_selected(tmp_path):
    path = tmp_path / "lp.toml"
    path.write_text(RECIPE)
    kdcore.run_recipe(kdcore.load_recipe(path), out=str(tmp_path / "run"))
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
    text = RECIPE.replace('use = "small_loss"\nparams = { scope = "pass", mask_loss = false }\n'
                          '[[stages.components]]\nuse = "teacher_lp"',
                          'use = "teacher_lp"', 1)
    path = tmp_path / "lp.toml"
    path.write_text(text)
    import pytest

    with pytest.raises(kdcore.KdcoreError, match="select/small_loss.*no earlier component"):
        kdcore.run_recipe(kdcore.load_recipe(path), out=str(tmp_path / "run"))
    assert torch.is_tensor(torch.zeros(1))
