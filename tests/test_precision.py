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
    from kdcore.runstate import Run

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


def cnn_recipe(**run: object) -> dict:
    return tiny_recipe(stage("student", 1, ["student"], component("ce")),
                       models={"student": {"arch": "cnn", "params": {"channels": [4, 8],
                                                                     "hidden": 16}}},
                       data={"params": {"flatten": False}}, run=run, train_subset=120)


@pytest.mark.slow
def test_channels_last_puts_conv_weights_and_batches_in_that_order(tmp_path, monkeypatch):
    from kdcore import loop
    from kdcore.prepare import prepare_run

    def conv_weights(channels_last):
        recipe = recipe_from_dict(cnn_recipe(channels_last=channels_last))
        run = prepare_run(build_plan(recipe, PluginHost()), PluginHost(), tmp_path)
        return run, [m.weight for m in run.models["student"].modules()
                     if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]

    run, weights = conv_weights(True)
    assert run.channels_last and weights
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
               for w in weights)
    run, weights = conv_weights(None)  # the default: off on the CPU
    assert not run.channels_last and all(w.is_contiguous() for w in weights)

    seen: list[bool] = []
    original = loop.Trainer._train_batch

    def spy(self, stage, index, inputs, observes):
        seen.append(self.run.channels_last)
        return original(self, stage, index, inputs, observes)

    monkeypatch.setattr(loop.Trainer, "_train_batch", spy)
    on = run_tiny(cnn_recipe(channels_last=True), tmp_path / "on")
    off = run_tiny(cnn_recipe(channels_last=False), tmp_path / "off")
    assert seen[0] and not seen[-1]
    assert on["student"]["last_test_acc"] == pytest.approx(off["student"]["last_test_acc"],
                                                           abs=0.05)


@pytest.mark.slow
def test_compile_compiles_each_model_in_place_after_its_weights(tmp_path, monkeypatch):
    compiled: list[type] = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: compiled.append(type(self).__name__))
    run_tiny(kd_recipe("fp32") | {"run": {**kd_recipe("fp32")["run"], "compile": True}},
             tmp_path / "run")
    assert sorted(compiled) == ["MLP", "MLP"]  # teacher and student, once each
    state = torch.load(tmp_path / "run" / "models" / "student.pt")
    assert not any(k.startswith("_orig_mod") for k in state)  # names unchanged
