"""The lambda step scales with the batch size: ``step * |B| / reference_batch_size`` (README,
reading 7). Checked against hand-written values, against the NumPy reference of the released
update (``reference.py``) run with the scaled step at batch sizes 64 and 128, and by the rule's
invariance (a batch that holds a smaller batch's samples twice gives the same lambdas)."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

import kdcore
from kdcore.data.base import ArrayDataset
from kdcore.losses import one_hot
from kdcore.testing import TinyNet, harness
from kdcore_almkd.component import AlmKD, AlmKDParams
from kdcore_almkd.mixing import UpdateConfig, effective_step, update_lambdas

HERE = Path(__file__).parent
RECIPES = HERE.parents[2] / "recipes"
D = torch.float64

# the released code's constants at its batch of 128, and what they become at 64, by hand
HAND_STEPS = {("amal", 128): 1500.0, ("amal", 64): 750.0,
              ("almkd", 128): 2000.0, ("almkd", 64): 1000.0}


def test_effective_step_is_proportional_to_the_batch_size():
    for (preset, batch), want in HAND_STEPS.items():
        step = AlmKDParams(preset=preset).settings().step
        assert effective_step(step, batch) == want
    assert effective_step(1500.0, 32, 64) == 750.0
    assert effective_step(1500.0, 256) == 3000.0
    with pytest.raises(ValueError, match="positive"):
        effective_step(1500.0, 0)


def test_reference_batch_size_is_a_checked_parameter():
    assert AlmKDParams().reference_batch_size == 128
    with pytest.raises(kdcore.RecipeError, match=r"params\.reference_batch_size.*positive"):
        kdcore.config.structure(AlmKDParams, {"reference_batch_size": 0},
                                "stages[1].components[0].params")


# -- the component's update against the NumPy reference --------------------------------------


def Net(seed: int) -> TinyNet:  # noqa: N802 (a model class in all but name)
    torch.manual_seed(seed)
    net = TinyNet(8, 3, 5, activation="tanh")
    with torch.no_grad():  # spread logits: gradients that move lambda off its start
        net.classifier.weight.mul_(3.0)
    return net


def _update_through_component(preset: str, batch: int, n: int = 256, nv: int = 60):
    """Build ``almkd`` in the harness at ``data.batch_size = batch``, give it a gold split and
    the student's optimiser, run one update (epoch 10) and return what the reference needs."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    student, teacher = Net(0), Net(1)
    h = harness(AlmKD, {"preset": preset, "teachers": ["teacher"], "shuffle": False},
                x=x, noisy_label=y, num_classes=3, models={"student": student, "teacher": teacher},
                train=("student",), name="almkd")
    run = h.run
    run.recipe = attrs.evolve(run.recipe, data=attrs.evolve(run.recipe.data, batch_size=batch))
    run.data.gold = ArrayDataset(torch.randn(nv, 8, generator=g),
                                 torch.randint(0, 3, (nv,), generator=g), 3)
    lr = 0.1
    run.optimizers["student"] = torch.optim.SGD(student.parameters(), lr=lr)
    h.setup()
    lam0 = h.component.lam.clone()
    h.epoch_start(10)  # select_every = 10: an update epoch
    assert h.metrics["weight/almkd/updated"] == 1.0
    with torch.no_grad():
        zs, hs = student(x)
        zt, _ = teacher(x)
        zv, hv = student(run.data.gold.x)
    inputs = dict(lam=lam0.double().numpy(), z=zs.double().numpy(), h=hs.double().numpy(),
                  q=one_hot(y, 3, D).numpy(), t=zt.double().numpy(), zv=zv.double().numpy(),
                  hv=hv.double().numpy(), yv=one_hot(run.data.gold.y, 3, D).numpy(), lr=lr)
    return h, inputs


def _reference_update(ref, preset: str, batch: int, step: float, i: dict) -> np.ndarray:
    """The released code's update (``reference.py``), with the step written out by hand."""
    n = i["z"].shape[0]
    common = dict(order=np.arange(n), batch=batch, fit=2, eta=i["lr"], temperature=4.0)
    if preset == "amal":
        return ref.amal_update(i["lam"], i["z"], i["h"], i["q"], [i["t"]], i["zv"], i["hv"],
                               i["yv"], val_batches=[np.arange(len(i["zv"]))], step=step,
                               **common)
    return ref.almkd_update(i["lam"][:, 0], i["z"], i["h"], i["q"], i["t"], i["zv"], i["hv"],
                            i["yv"], coef=step, **common)[:, None]


@pytest.mark.parametrize("batch", [64, 128])
@pytest.mark.parametrize("preset", ["amal", "almkd"])
def test_update_at_64_and_128_matches_the_reference_with_the_scaled_step(preset, batch,
                                                                          reference):
    h, inputs = _update_through_component(preset, batch)
    got = h.component.lam.double().numpy()
    step = HAND_STEPS[(preset, batch)]
    assert h.metrics["weight/almkd/step"] == step
    want = _reference_update(reference, preset, batch, step, inputs)
    high = AlmKDParams(preset=preset).settings().lambda_max
    inside = (want > 1e-6) & (want < high - 1e-6)
    assert inside.mean() > 0.2  # many lambdas are not pinned to a bound
    assert np.abs(want - inputs["lam"]).max() > 0.05  # and they moved
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
    if batch != 128:  # the released constant, unscaled, gives another table
        unscaled = _reference_update(reference, preset, batch, HAND_STEPS[(preset, 128)],
                                     inputs)
        assert np.abs(unscaled - want).max() > 1e-2


# -- the rule's invariance --------------------------------------------------------------------


@pytest.mark.parametrize("mixing", ["free", "convex"])
def test_a_batch_of_twice_the_samples_gives_the_same_lambdas_only_when_scaled(mixing):
    """Batches of 128 that hold each sample of the batches of 64 twice: with the scaled step,
    every repetition moves each sample's lambda exactly as at 64 (``1/|B|`` halves each
    gradient, the step doubles, ``Delta`` is the same); with the constant step it moves twice
    as far."""
    g = torch.Generator().manual_seed(5)
    n, c, d = 128, 4, 6
    z = torch.randn(n, c, generator=g, dtype=D) * 2
    h = torch.randn(n, d, generator=g, dtype=D).relu()
    q = one_hot(torch.randint(c, (n,), generator=g), c, D)
    ts = [torch.randn(n, c, generator=g, dtype=D) * 2]
    zv = torch.randn(40, c, generator=g, dtype=D)
    hv = torch.randn(40, d, generator=g, dtype=D).relu()
    yv = one_hot(torch.randint(c, (40,), generator=g), c, D)
    if mixing == "free":
        lam, bounds, val_weight = torch.full((n, 2), 0.9, dtype=D), (1e-7, 2 - 1e-7), 1.0
        lam[:, 0] = 0.1
        step = 1500.0
    else:
        lam, bounds, val_weight = torch.rand(n, 1, generator=g, dtype=D), (1e-7, 1 - 1e-7), 0.75
        step = 2000.0

    def run(batch, step, twice):
        two = (lambda t: torch.cat([t, t])) if twice else (lambda t: t)
        first, second = torch.arange(64), torch.arange(64, 128)
        order = (torch.cat([first, first + n, second, second + n]) if twice
                 else torch.arange(n))  # batches [A, A'], [B, B'] against [A], [B]
        cfg = UpdateConfig(mixing=mixing, temperature=4.0, lr=0.1, step=step, repetitions=5,
                           bounds=bounds, val_weight=val_weight, batch_size=batch, grad_fit=2)
        out, _ = update_lambdas(two(lam), cfg, logits=two(z), features=two(h), targets=two(q),
                                teacher_logits=[two(t) for t in ts], val_logits=zv,
                                val_features=hv, val_targets=yv, order=order,
                                val_batches=[torch.arange(40)])
        return out

    at64 = run(64, effective_step(step, 64), twice=False)
    at128 = run(128, effective_step(step, 128), twice=True)
    assert (at64 - lam).abs().max() > 0.05
    torch.testing.assert_close(at128[:n], at64, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(at128[n:], at64, rtol=1e-10, atol=1e-12)
    unscaled = run(128, effective_step(step, 64), twice=True)  # the step of 64 at 128
    assert (unscaled[:n] - at64).abs().max() > 1e-2


# -- the recipes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "preset", "step"), [
    ("almkd.toml", "almkd", 1000.0), ("amal.toml", "amal", 750.0),
    ("almkd-fmnist.toml", "almkd", 2000.0), ("amal-fmnist.toml", "amal", 1500.0),
])
def test_recipes_resolve_to_the_scaled_step(name, preset, step):
    recipe = kdcore.load_recipe(RECIPES / name)
    (comp,) = [c for c in recipe.stages[-1].components if c.use == "almkd"]
    params = kdcore.config.structure(AlmKDParams, comp.params, "params")
    assert params.settings().step == HAND_STEPS[(preset, 128)]
    batch = params.batch_size or recipe.data.batch_size
    assert effective_step(params.settings().step, batch, params.reference_batch_size) == step
