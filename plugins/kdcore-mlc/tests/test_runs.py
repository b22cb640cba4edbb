"""Short runs on digits: both recipes, exact resume, the student's late labels, user errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from loguru import logger

import kdcore
from kdcore.config import structure
from kdcore.meta import functional_forward
from kdcore.testing import assert_same_history
from kdcore_mlc import kdcore_configure
from kdcore_mlc.kdmlc import KDMLCStudent
from kdcore_mlc.losses import kdmlc_student_loss
from kdcore_mlc.mlc import MLC

RECIPES = Path(__file__).resolve().parents[3] / "recipes"

KDMLC = """
[run]
name = "kdmlc-tiny"
device = "cpu"
checkpoint_interval_s = 0  # every epoch: the resume tests kill mid-stage
threads = 1
[data]
dataset = "digits"
gold_per_class = 10
train_subset = 400
batch_size = 64
[data.noise]
model = "symmetric"
params = {{ rate = 0.4 }}
[models.teacher]
arch = "mlp"
params = {{ hidden = [32] }}
[models.student]
arch = "mlp"
params = {{ hidden = [16] }}
[[stages]]
name = "kdmlc"
epochs = {epochs}
train = ["teacher", "student"]
[[stages.components]]
use = "mlc"
models = ["teacher"]
params = {mlc}
[[stages.components]]
use = "kdmlc_student"
models = ["student"]
params = {student}
"""


@pytest.fixture(autouse=True)
def _quiet():
    logger.remove()
    yield


def _write(tmp_path: Path, epochs=2, mlc="{}", student="{}") -> Path:
    path = tmp_path / "kdmlc.toml"
    path.write_text(KDMLC.format(epochs=epochs, mlc=mlc, student=student))
    return path


def _run(recipe, tmp_path, name="run", extra=(), **kw):
    host = kdcore.PluginHost(extra=list(extra))
    return kdcore.run_recipe(recipe, out=str(tmp_path / name), host=host, **kw)


@pytest.mark.parametrize(("file", "roles"), [("mlc.toml", ["student"]),
                                             ("kdmlc.toml", ["teacher", "student"])])
def test_recipe_runs_on_digits(file, roles, tmp_path):
    stage = "student" if file == "mlc.toml" else "kdmlc"
    recipe = kdcore.load_recipe(RECIPES / file, [f"stages.{stage}.epochs=2", "run.threads=1",
                                                 "run.device=cpu"])
    summary = _run(recipe, tmp_path)
    assert sorted(summary) == sorted(roles)
    with kdcore.History(tmp_path / "run") as h:
        assert h.producers("target") == ["mlc", "mlc"]
        target = h.column("target", 1).astype(np.float64)
        np.testing.assert_allclose(target.sum(1), 1.0, atol=5e-3)  # soft labels (float16)
        iters = -(-len(target) // recipe.data.batch_size)
        assert list(h.metric("mlc/mlc/meta_steps")) == [iters, 2 * iters]  # K = 1
        assert np.isfinite(h.metric("mlc/mlc/meta_loss")).all()
        for role in roles:
            assert np.isfinite(h.metric(f"train/{role}/loss")).all()


class Interrupt(Exception):
    pass


class StopMidEpoch:
    """Raises in the middle of the second epoch, after the first epoch's checkpoint."""

    @kdcore.hookimpl
    def kdcore_batch_end(self, run, batch, losses):
        if run.epoch == 1 and batch.step % 7 == 3:
            raise Interrupt


def test_resume_mid_epoch_is_exact(tmp_path):
    """LCN, its AMSGrad state, a half-filled K-step sum and the gold stream all resume."""
    path = _write(tmp_path, epochs=3,
                  mlc='{ gradient_steps = 2, skip = true, meta_lr = 1e-2 }',
                  student='{ clean_half = true, soft_target = "lcn" }')
    recipe = kdcore.load_recipe(path)
    straight = _run(recipe, tmp_path, "straight")
    with pytest.raises(Interrupt):
        _run(recipe, tmp_path, "killed", extra=[StopMidEpoch()])
    resumed = _run(recipe, tmp_path, "killed", resume=True)
    assert resumed == straight
    assert_same_history(tmp_path / "killed", tmp_path / "straight")


PROBES: list[dict[str, object]] = []


class StudentGradProbe(kdcore.Component):
    """Checks, after each step, which corrected labels the student's gradient came from."""

    def setup(self, run):
        self.run = run
        self.mlc = next(c for c in run.components if isinstance(c, MLC))
        self.kd = next(c for c in run.components if isinstance(c, KDMLCStudent))

    def transfer(self, batch):  # before any backward: snapshot the student's weights and LCN
        model = self.run.models["student"]
        batch.scratch["probe"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return None

    def after_step(self, batch):
        model = self.run.models["student"]
        with torch.no_grad():
            post = self.mlc.lcn.correct(self.mlc.features(batch), batch.noisy_label)[0]
        pre = self.mlc.corrected(batch)
        leaves = {n: w.clone().requires_grad_(True) for n, w in batch.scratch["probe"].items()}
        logits = functional_forward(model, leaves, batch.x)[0]
        teacher = batch.out("teacher").logits.detach()
        expect = {}
        for which, labels in (("pre", pre), ("post", post)):
            loss = kdmlc_student_loss(logits, labels, teacher, self.kd.params.beta,
                                      self.kd.params.temperature).mean()
            expect[which] = torch.autograd.grad(loss, list(leaves.values()), retain_graph=True)
        actual = [p.grad.clone() for p in model.parameters()]
        PROBES.append({"actual": actual, **expect})


class ProbePlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"student_grad_probe": StudentGradProbe}


@pytest.mark.parametrize("after", [True, False])
def test_student_learns_from_labels_after_the_meta_step(after, tmp_path):
    path = _write(tmp_path, epochs=1, mlc="{ meta_lr = 1e-2 }",
                  student=f"{{ labels_after_meta_step = {str(after).lower()} }}")
    path.write_text(path.read_text() + '[[stages.components]]\nuse = "student_grad_probe"\n'
                    'models = ["student"]\n')
    PROBES.clear()
    _run(kdcore.load_recipe(path), tmp_path, extra=[ProbePlugin()])
    assert len(PROBES) == 7  # ceil(400 / 64) steps
    used, other = ("post", "pre") if after else ("pre", "post")
    for probe in PROBES:
        for got, want in zip(probe["actual"], probe[used], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
        # the two label sets give visibly different gradients: the check can tell them apart
        assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7)
                   for a, b in zip(probe[used], probe[other], strict=True))


def test_recipe_errors_are_clear(tmp_path):
    no_gold = kdcore.load_recipe(_write(tmp_path), ["data.gold_per_class=0"])
    with pytest.raises(kdcore.RecipeError, match="data.gold_per_class"):
        _run(no_gold, tmp_path)
    adam = kdcore.load_recipe(_write(tmp_path), ['models.teacher.optimizer.name="adam"'])
    with pytest.raises(kdcore.RecipeError, match="mirrors SGD"):
        _run(adam, tmp_path)
    lonely = kdcore.load_recipe(_write(tmp_path), ["stages.kdmlc.components.mlc.enabled=false"])
    with pytest.raises(kdcore.RecipeError, match="needs an 'mlc' component"):
        _run(lonely, tmp_path)
    with pytest.raises(kdcore.RecipeError, match="did you mean 'beta'"):
        _run(kdcore.load_recipe(_write(tmp_path, student="{ betta = 0.3 }")), tmp_path)
    with pytest.raises(kdcore.RecipeError, match=r"clean_half needs"):
        _run(kdcore.load_recipe(_write(tmp_path, mlc='{ method = "hmlc_K" }',
                                       student="{ clean_half = true }")), tmp_path)


@pytest.mark.parametrize("file", ["mlc-fmnist.toml", "kdmlc-fmnist.toml"])
@pytest.mark.parametrize("noise", ["symmetric", "pair_flip"])
def test_fashion_mnist_recipes_resolve(file, noise):
    recipe = kdcore.load_recipe(RECIPES / file, [f"data.noise.model={noise}"])
    assert recipe.data.dataset == "fashion_mnist" and recipe.data.params == {"flatten": True}
    assert recipe.data.gold_per_class == 100
    assert recipe.data.noise.model == noise and recipe.data.noise.params == {"rate": 0.4}
    assert [s.epochs for s in recipe.stages] == [20]
    assert kdcore_configure(recipe=recipe) is None
    host = kdcore.PluginHost()
    for comp in recipe.stages[0].components:
        structure(host.components.get(comp.use).Params, comp.params)
    host.noise_models.get(noise)


VIRTUAL: list[int] = []


class VirtualEqualsReal(kdcore.Component):
    """After the optimiser stepped, the model must sit exactly at MLC's virtual point w'."""

    def setup(self, run):
        self.run = run

    def after_step(self, batch):
        virtual = batch.scratch["mlc/virtual"]
        for name, param in self.run.models["student"].named_parameters():
            torch.testing.assert_close(param.detach(), virtual[name], rtol=1e-5, atol=1e-7)
        VIRTUAL.append(len(virtual))


class VirtualPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"virtual_equals_real": VirtualEqualsReal}


TWO_STAGE = """
[[stages]]
name = "teacher"
epochs = 1
train = ["teacher"]
[[stages.components]]
use = "ce"
[[stages]]
name = "student"
epochs = 2
train = ["student"]
[[stages.components]]
use = "mlc"
[[stages.components]]
use = "hinton_kd"
params = { teacher = "teacher" }
[[stages.components]]
use = "virtual_equals_real"
"""


def test_alternative_reading_mlc_on_the_student_with_a_kd_term(tmp_path):
    """Spec 3.2's other reading: MLC on the student, whose loss also has a KD term.

    MLC's look-ahead takes the student's whole loss (both terms), and its virtual point is
    where the engine's real SGD step (cosine schedule, Nesterov momentum, weight decay) lands.
    """
    text = KDMLC.format(epochs=1, mlc="{}", student="{}")
    text = text[:text.index("[[stages]]")] + TWO_STAGE
    text = text.replace('params = { hidden = [16] }',
                        'params = { hidden = [16] }\noptimizer = { nesterov = true }\n'
                        'schedule = { name = "cosine" }')
    path = tmp_path / "alt.toml"
    path.write_text(text)
    VIRTUAL.clear()
    summary = _run(kdcore.load_recipe(path), tmp_path, extra=[VirtualPlugin()])
    assert sorted(summary) == ["student", "teacher"]
    assert len(VIRTUAL) == 14 and set(VIRTUAL) == {4}  # 2 epochs x 7 steps, 4 tensors


CARRY = """
[[stages]]
name = "one"
epochs = 1
train = ["{first}"]
[[stages.components]]
use = "mlc"
models = ["{first}"]
[[stages]]
name = "two"
epochs = 1
train = ["student"]
[[stages.components]]
use = "mlc"
models = ["student"]
params = {{ meta_lr = 1e-3 }}
"""


def test_a_later_stage_continues_the_lcn_or_says_why_not(tmp_path):
    text = KDMLC.format(epochs=1, mlc="{}", student="{}")
    head = text[:text.index("[[stages]]")]
    path = tmp_path / "carry.toml"
    path.write_text(head + CARRY.format(first="student"))
    _run(kdcore.load_recipe(path), tmp_path, "carried")
    with kdcore.History(tmp_path / "carried") as h:
        assert list(h.metric("mlc/mlc/meta_steps")) == [7, 14]  # the same LCN, continued
    path.write_text(head + CARRY.format(first="teacher"))
    with pytest.raises(kdcore.RecipeError, match="give it another name"):
        _run(kdcore.load_recipe(path), tmp_path, "mismatch")
