"""run.precision: bf16 autocast trains on the CPU close to fp32; fp16 needs a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore import History, PluginHost, RecipeError
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import component, run_tiny, stage, tiny_recipe


def kd_recipe(precision: str) -> dict:
    return tiny_recipe(stage("teacher", 4, ["teacher"], component("ce")),
                       stage("student", 4, ["student"], component("ce"),
                             component("hinton_kd", weight=0.5)),
                       run={"precision": precision}, train_subset=400, noise_rate=0.2)


@pytest.mark.slow
def test_bf16_on_the_cpu_is_finite_and_close_to_fp32(tmp_path):
    full = run_tiny(kd_recipe("fp32"), tmp_path / "fp32")
    half = run_tiny(kd_recipe("bf16"), tmp_path / "bf16")
    with History(tmp_path / "fp32") as a, History(tmp_path / "bf16") as b:
        for name in ("train/student/loss", "train/teacher/loss"):
            assert np.isfinite(b.metric(name)[~np.isnan(a.metric(name))]).all()
        # the models did run in bfloat16: the losses are not fp32's to the bit
        assert not np.array_equal(a.metric("train/teacher/loss"), b.metric("train/teacher/loss"))
        assert b.column("logits/student").dtype == np.float16  # stored as every run's
    for role in ("teacher", "student"):
        assert half[role]["last_test_acc"] == pytest.approx(full[role]["last_test_acc"], abs=0.06)


def test_bf16_outputs_reach_components_in_float32():
    from pathlib import Path

    from kdcore.recipe import StageConfig
    from kdcore.run import Run

    recipe = recipe_from_dict(kd_recipe("bf16"))
    run = Run(recipe, Path("."), torch.device("cpu"), [])
    run.stage = StageConfig("s", 1, ["student"])
    run.models["student"] = torch.nn.Sequential(torch.nn.Linear(4, 3))
    run.models["student"].forward = lambda x, m=run.models["student"]: (m[0](x), m[0](x))
    out = run.forward("student", torch.randn(2, 4))
    assert out.logits.dtype == torch.float32 and out.logits.requires_grad
    with run.autocast():
        assert run.models["student"](torch.randn(2, 4))[0].dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU fp16 is allowed")
def test_fp16_is_refused_without_a_gpu():
    recipe = recipe_from_dict(kd_recipe("fp16"))
    with pytest.raises(RecipeError, match="fp16 needs a GPU"):
        build_plan(recipe, PluginHost())


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="fp16 autocast and its gradient scaler need CUDA; no GPU here")
@pytest.mark.slow
def test_fp16_on_a_gpu_is_finite_and_close_to_fp32(tmp_path):
    gpu = {"device": "cuda"}
    full = run_tiny({**kd_recipe("fp32"), "run": {**kd_recipe("fp32")["run"], **gpu}},
                    tmp_path / "fp32")
    half = run_tiny({**kd_recipe("fp16"), "run": {**kd_recipe("fp16")["run"], **gpu}},
                    tmp_path / "fp16")
    for role in ("teacher", "student"):
        assert half[role]["last_test_acc"] == pytest.approx(full[role]["last_test_acc"], abs=0.06)


def test_fp16_with_a_component_owning_backward_is_refused(monkeypatch):
    from kdcore.plan import _check_precision

    class Owner:
        name, spec = "meta", type("S", (), {"use": "mlc"})()

    stage_plan = type("P", (), {"backward": [Owner()]})()
    recipe = recipe_from_dict(kd_recipe("fp16"))
    with pytest.raises(RecipeError, match="own backward"):
        _check_precision(recipe, [stage_plan])
    _check_precision(recipe_from_dict(kd_recipe("bf16")), [stage_plan])  # bf16 needs no scaler
