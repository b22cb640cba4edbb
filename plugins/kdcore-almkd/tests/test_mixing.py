"""The closed-form look-ahead against autograd, the update against the released code's formulas,
golden values, the bounds and the alignment of lambda rows with samples."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import kdcore
from kdcore.config import structure
from kdcore.losses import kd_kl, one_hot, soft_cross_entropy
from kdcore.meta import functional_forward, named_trainable, virtual_sgd_step
from kdcore_almkd.component import PRESETS, AlmKDParams
from kdcore_almkd.mixing import (
    UpdateConfig,
    chain_to_parameters,
    effective_weights,
    last_layer_inner,
    logit_gradients,
    lookahead_gradient,
    mixed_loss,
    update_lambdas,
)

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "fixtures" / "golden.json").read_text())
D = torch.float64


def _reference():
    spec = importlib.util.spec_from_file_location("almkd_reference", HERE / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference()


# -- a tiny last-layer problem ------------------------------------------------------------------


def _problem(num_teachers: int, n: int = 8, c: int = 4, d: int = 6, nv: int = 7, seed: int = 0,
             spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, c).to(D)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(c, d, generator=g, dtype=D) * spread)
        lin.bias.copy_(torch.randn(c, generator=g, dtype=D))
    h = torch.randn(n, d, generator=g, dtype=D).relu()
    targets = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=D), dim=1)  # soft rows
    teachers = [2 * spread * torch.randn(n, c, generator=g, dtype=D) for _ in range(num_teachers)]
    hv = torch.randn(nv, d, generator=g, dtype=D).relu()
    yv = torch.randint(c, (nv,), generator=g)
    return lin, h, targets, teachers, hv, yv


def _weights(lam: torch.Tensor, mixing: str, m: int) -> torch.Tensor:
    """The mixing map written out again (not the plugin's), for the autograd side."""
    if mixing == "free":
        return lam
    return torch.cat([1 - lam] + [lam / m] * m, dim=1)


def _autograd_meta_gradient(lin, h, targets, teachers, sizes, lam, mixing, hv, yv, lr, t,
                            val_weight):
    """dJ/dlambda through an explicit virtual SGD step of the last layer (kdcore.meta)."""
    lam = lam.clone().requires_grad_(True)
    w = _weights(lam, mixing, len(teachers))
    params = named_trainable(lin)
    z = functional_forward(lin, params, h)
    loss, start = 0.0, 0
    for b in sizes:  # each batch's loss is a mean; the chunk's losses add up
        rows = slice(start, start + b)
        terms = [soft_cross_entropy(z[rows], targets[rows])]
        terms += [kd_kl(z[rows], tl[rows], t) for tl in teachers]
        loss = loss + (w[rows] * torch.stack(terms, dim=1)).sum(dim=1).mean()
        start += b
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    virtual = virtual_sgd_step(params, grads, torch.optim.SGD(lin.parameters(), lr=lr))
    j = val_weight * F.cross_entropy(functional_forward(lin, virtual, hv), yv)
    if val_weight < 1:
        j = j + (1 - val_weight) * soft_cross_entropy(
            functional_forward(lin, virtual, h), targets).mean()
    return torch.autograd.grad(j, lam)[0], j.detach()


def _closed_form(lin, h, targets, teachers, sizes, lam, mixing, hv, yv, lr, t, val_weight):
    with torch.no_grad():
        z, zv = lin(h), lin(hv)
    scale = torch.cat([torch.full((b,), 1.0 / b, dtype=D) for b in sizes])
    delta = logit_gradients(z, targets, teachers, t, scale)
    dw, j = lookahead_gradient(
        effective_weights(lam, mixing, len(teachers)), delta, h, zv, hv,
        one_hot(yv, z.shape[1], D), lr, val_weight=val_weight, chunk_logits=z,
        chunk_targets=targets)
    return chain_to_parameters(dw, mixing), j


CASES = [  # (mixing, teachers, val_weight): AMAL's and ALM-KD's forms, and their crossings
    ("free", 2, 1.0),
    ("convex", 1, 0.75),
    ("convex", 3, 0.75),
    ("free", 1, 0.75),
    ("convex", 1, 1.0),
]


@pytest.mark.parametrize(("mixing", "m", "val_weight"), CASES)
def test_closed_form_lookahead_gradient_equals_autograd(mixing, m, val_weight):
    lin, h, targets, teachers, hv, yv = _problem(m)
    g = torch.Generator().manual_seed(1)
    lam = torch.rand(8, m + 1 if mixing == "free" else 1, generator=g, dtype=D)
    sizes, lr, t = (5, 3), 0.3, 4.0
    expected, j_auto = _autograd_meta_gradient(lin, h, targets, teachers, sizes, lam, mixing,
                                               hv, yv, lr, t, val_weight)
    got, j = _closed_form(lin, h, targets, teachers, sizes, lam, mixing, hv, yv, lr, t,
                          val_weight)
    assert float(expected.abs().max()) > 1e-6  # a non-trivial gradient
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(j, j_auto, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("mixing", "m", "val_weight"), CASES[:2])
def test_update_steps_equal_autograd_steps(mixing, m, val_weight):
    """Two repetitions on one chunk: each a clipped step along the autograd meta-gradient."""
    lin, h, targets, teachers, hv, yv = _problem(m, seed=3)
    p = m + 1 if mixing == "free" else 1
    lam0 = torch.full((8, p), 0.5, dtype=D)
    lr, t, step = 0.3, 4.0, 40.0
    bounds = (1e-7, 2 - 1e-7) if mixing == "free" else (1e-7, 1 - 1e-7)
    cfg = UpdateConfig(mixing=mixing, temperature=t, lr=lr, step=step, repetitions=2,
                       bounds=bounds, val_weight=val_weight, batch_size=5, grad_fit=2)
    with torch.no_grad():
        z, zv = lin(h), lin(hv)
    got, _ = update_lambdas(
        lam0, cfg, logits=z, features=h, targets=targets, teacher_logits=teachers,
        val_logits=zv, val_features=hv, val_targets=one_hot(yv, 4, D), order=torch.arange(8),
        val_batches=[torch.arange(len(yv))])
    lam = lam0
    for _ in range(2):
        grad, _ = _autograd_meta_gradient(lin, h, targets, teachers, (5, 3), lam, mixing, hv,
                                          yv, lr, t, val_weight)
        lam = (lam - step * grad).clamp(*bounds)
    assert not torch.equal(lam, lam0)
    torch.testing.assert_close(got, lam, rtol=1e-9, atol=1e-12)


def test_inner_product_closed_form_equals_materialised_vectors():
    """<g, U> = delta . (U_b + U_W h) without building g = [delta; vec(delta h^T)]."""
    g = torch.Generator().manual_seed(5)
    n, k, c, d = 6, 3, 4, 5
    delta = torch.randn(n, k, c, generator=g, dtype=D)
    h = torch.randn(n, d, generator=g, dtype=D)
    u_b = torch.randn(c, generator=g, dtype=D)
    u_w = torch.randn(c, d, generator=g, dtype=D)
    full = torch.cat([delta, (delta.unsqueeze(-1) * h[:, None, None, :]).flatten(2)], dim=2)
    expected = full @ torch.cat([u_b, u_w.flatten()])
    torch.testing.assert_close(last_layer_inner(delta, h, u_b, u_w), expected)


# -- golden values and the released code's formulas ----------------------------------------------


def _golden_inputs():
    i = GOLDEN["inputs"]
    t = {k: torch.tensor(i[k], dtype=D) for k in
         ("logits", "features", "targets", "weights", "val_logits", "val_features",
          "amal_init", "almkd_init")}
    t["teachers"] = [torch.tensor(x, dtype=D) for x in i["teacher_logits"]]
    t["val_targets"] = one_hot(torch.tensor(i["val_labels"]), 3, D)
    return i, t


def test_golden_mixed_loss():
    i, t = _golden_inputs()
    got = mixed_loss(t["logits"], t["targets"], t["teachers"], t["weights"], i["temperature"])
    np.testing.assert_allclose(got.numpy(), GOLDEN["values"]["mixed_loss"], rtol=1e-12)
    # the fixture is what the independent NumPy reference computes
    again = REF.mixed_loss(*(np.asarray(i[k], dtype=float) for k in ("logits", "targets")),
                           [np.asarray(x) for x in i["teacher_logits"]],
                           np.asarray(i["weights"]), i["temperature"])
    np.testing.assert_allclose(again, GOLDEN["values"]["mixed_loss"], rtol=1e-12)


def _golden_update(preset: str):
    i, t = _golden_inputs()
    common = dict(temperature=i["temperature"], lr=i["lr"], batch_size=i["batch"],
                  grad_fit=i["grad_fit"])
    if preset == "amal":
        cfg = UpdateConfig(mixing="free", step=i["amal_step"], repetitions=5,
                           bounds=(1e-7, 2 - 1e-7), val_weight=1.0, **common)
        lam, teachers = t["amal_init"], t["teachers"]
        val_batches = [torch.tensor(v) for v in i["val_batches"]]
    else:
        cfg = UpdateConfig(mixing="convex", step=i["almkd_step"], repetitions=10,
                           bounds=(1e-7, 1 - 1e-7), val_weight=0.75, **common)
        lam, teachers = t["almkd_init"][:, None], t["teachers"][:1]
        val_batches = [torch.arange(4)]
    out, _ = update_lambdas(
        lam, cfg, logits=t["logits"], features=t["features"], targets=t["targets"],
        teacher_logits=teachers, val_logits=t["val_logits"], val_features=t["val_features"],
        val_targets=t["val_targets"], order=torch.tensor(i["order"]), val_batches=val_batches)
    return out


def test_golden_amal_update():
    got = _golden_update("amal")
    np.testing.assert_allclose(got.numpy(), GOLDEN["values"]["amal_update"], rtol=1e-9,
                               atol=1e-12)


def test_golden_almkd_update():
    got = _golden_update("almkd")[:, 0]
    np.testing.assert_allclose(got.numpy(), GOLDEN["values"]["almkd_update"], rtol=1e-9,
                               atol=1e-12)


def test_golden_updates_are_the_reference_formulas():
    """The fixture is what the released code's literal update rules give (NumPy reference)."""
    spec = importlib.util.spec_from_file_location("almkd_make_golden", HERE / "make_golden.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    values = make.compute(REF)
    for key in ("mixed_loss", "amal_update", "almkd_update"):
        np.testing.assert_allclose(values[key], GOLDEN["values"][key], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("preset", ["amal", "almkd"])
def test_preset_steps_match_the_released_code(preset):
    """With the presets' own constants (1500 on dL/dlam; 2000 eta on <g_KD - g_CE, u>)."""
    m = 2 if preset == "amal" else 1
    n, c, d = 40, 5, 6
    g = torch.Generator().manual_seed(11)
    z = torch.randn(n, c, generator=g, dtype=D)
    h = torch.randn(n, d, generator=g, dtype=D).relu()
    q = one_hot(torch.randint(c, (n,), generator=g), c, D)
    teachers = [torch.randn(n, c, generator=g, dtype=D) for _ in range(m)]
    zv = torch.randn(30, c, generator=g, dtype=D)
    hv = torch.randn(30, d, generator=g, dtype=D).relu()
    yv = one_hot(torch.randint(c, (30,), generator=g), c, D)
    order = torch.randperm(n, generator=g)
    s = AlmKDParams(preset=preset).settings()
    lr = 0.01
    cfg = UpdateConfig(mixing=s.mixing, temperature=4.0, lr=lr, step=s.step,
                       repetitions=s.repetitions, bounds=(s.lambda_min, s.lambda_max),
                       val_weight=s.val_weight, batch_size=8, grad_fit=2)
    if preset == "amal":
        lam = torch.full((n, 3), 0.9, dtype=D)
        lam[:, 0] = 0.1
        val_batches = [torch.arange(0, 12), torch.arange(12, 24), torch.arange(24, 30)]
    else:
        lam = torch.rand(n, 1, generator=g, dtype=D)
        val_batches = [torch.arange(30)]
    got, _ = update_lambdas(lam, cfg, logits=z, features=h, targets=q, teacher_logits=teachers,
                            val_logits=zv, val_features=hv, val_targets=yv, order=order,
                            val_batches=val_batches)
    args = (z.numpy(), h.numpy(), q.numpy())
    if preset == "amal":
        ref = REF.amal_update(lam.numpy(), *args, [t.numpy() for t in teachers], zv.numpy(),
                              hv.numpy(), yv.numpy(), order=order.numpy(), batch=8, fit=2,
                              val_batches=[v.numpy() for v in val_batches], eta=lr,
                              temperature=4.0)
    else:
        ref = REF.almkd_update(lam[:, 0].numpy(), *args, teachers[0].numpy(), zv.numpy(),
                               hv.numpy(), yv.numpy(), order=order.numpy(), batch=8, fit=2,
                               eta=lr, temperature=4.0)[:, None]
    inside = (ref > 1e-6) & (ref < s.lambda_max - 1e-6)
    assert inside.any()  # some lambdas are not pinned to a bound
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-7, atol=1e-9)


# -- invariants -----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**20), preset=st.sampled_from(["amal", "almkd"]),
       log_step=st.floats(-2.0, 7.0), teachers=st.integers(1, 3),
       lr=st.floats(1e-3, 2.0), spread=st.floats(0.1, 20.0), val_weight=st.floats(0.0, 1.0))
def test_lambdas_stay_within_bounds(seed, preset, log_step, teachers, lr, spread, val_weight):
    params = AlmKDParams(preset=preset, step=10.0**log_step, val_weight=val_weight)
    s = params.settings()
    g = torch.Generator().manual_seed(seed)
    n, c, d = 24, 4, 5
    z = spread * torch.randn(n, c, generator=g)
    h = spread * torch.randn(n, d, generator=g).relu()
    q = one_hot(torch.randint(c, (n,), generator=g), c)
    ts = [spread * torch.randn(n, c, generator=g) for _ in range(teachers)]
    zv = spread * torch.randn(10, c, generator=g)
    hv = spread * torch.randn(10, d, generator=g).relu()
    yv = one_hot(torch.randint(c, (10,), generator=g), c)
    p = teachers + 1 if s.mixing == "free" else 1
    lam = s.lambda_min + (s.lambda_max - s.lambda_min) * torch.rand(n, p, generator=g)
    cfg = UpdateConfig(mixing=s.mixing, temperature=4.0, lr=lr, step=s.step, repetitions=3,
                       bounds=(s.lambda_min, s.lambda_max), val_weight=s.val_weight,
                       batch_size=5, grad_fit=2)
    new, _ = update_lambdas(lam, cfg, logits=z, features=h, targets=q, teacher_logits=ts,
                            val_logits=zv, val_features=hv, val_targets=yv,
                            order=torch.randperm(n, generator=g),
                            val_batches=[torch.arange(5), torch.arange(5, 10)])
    assert torch.isfinite(new).all()
    assert float(new.min()) >= s.lambda_min and float(new.max()) <= s.lambda_max
    w = effective_weights(new, s.mixing, teachers)
    assert w.shape == (n, teachers + 1)
    if s.mixing == "convex":
        assert float(w.min()) >= 0
        torch.testing.assert_close(w.sum(dim=1), torch.ones(n))


def _permutation_problem(seed=7, n=12, c=4, d=5, m=2):
    g = torch.Generator().manual_seed(seed)
    data = {
        "logits": torch.randn(n, c, generator=g, dtype=D),
        "features": torch.randn(n, d, generator=g, dtype=D).relu(),
        "targets": one_hot(torch.randint(c, (n,), generator=g), c, D),
    }
    teachers = [torch.randn(n, c, generator=g, dtype=D) for _ in range(m)]
    val = dict(val_logits=torch.randn(6, c, generator=g, dtype=D),
               val_features=torch.randn(6, d, generator=g, dtype=D).relu(),
               val_targets=one_hot(torch.randint(c, (6,), generator=g), c, D))
    lam = torch.rand(n, m + 1, generator=g, dtype=D) * 1.5
    return data, teachers, val, lam


def test_update_rows_follow_the_samples_under_shuffling():
    """One chunk of three equal batches: the visiting order must not matter, and permuting the
    samples (their data and their lambda rows) must permute the result the same way."""
    data, teachers, val, lam = _permutation_problem()
    n = lam.shape[0]
    cfg = UpdateConfig(mixing="free", temperature=4.0, lr=0.2, step=30.0, repetitions=5,
                       bounds=(1e-7, 2 - 1e-7), val_weight=1.0, batch_size=4, grad_fit=3)
    vb = [torch.arange(6)]

    def run(lam, data, teachers, order):
        out, _ = update_lambdas(lam, cfg, teacher_logits=teachers, order=order,
                                val_batches=vb, **data, **val)
        return out

    base = run(lam, data, teachers, torch.arange(n))
    assert not torch.allclose(base, lam)
    g = torch.Generator().manual_seed(0)
    shuffled = run(lam, data, teachers, torch.randperm(n, generator=g))
    torch.testing.assert_close(shuffled, base)
    perm = torch.randperm(n, generator=g)
    moved = run(lam[perm], {k: v[perm] for k, v in data.items()}, [t[perm] for t in teachers],
                torch.randperm(n, generator=g))
    torch.testing.assert_close(moved, base[perm])


# -- parameters -----------------------------------------------------------------------------------


def test_presets_and_individual_overrides():
    amal = AlmKDParams().settings()
    assert (amal.mixing, amal.init, amal.lambda0, amal.repetitions, amal.step, amal.val_weight,
            amal.val_batch) == ("free", "constant", 0.9, 5, 1500.0, 1.0, 1000)
    assert (amal.lambda_min, amal.lambda_max) == (1e-7, 2 - 1e-7)
    almkd = AlmKDParams(preset="almkd").settings()
    assert (almkd.mixing, almkd.init, almkd.repetitions, almkd.step, almkd.val_weight,
            almkd.val_batch, almkd.lambda_max) == (
                "convex", "uniform", 10, 2000.0, 0.75, 0, 1 - 1e-7)
    mixed = AlmKDParams(preset="almkd", repetitions=3, val_batch=50).settings()
    assert (mixed.repetitions, mixed.val_batch, mixed.step) == (3, 50, 2000.0)
    assert set(PRESETS["amal"]) == set(PRESETS["almkd"])
    assert AlmKDParams(select_every=4).first_update == 4
    assert AlmKDParams(select_every=4, warm_epochs=1).first_update == 1


@pytest.mark.parametrize(("params", "match"), [
    ({"preset": "almkd", "lambda_max": 2.0}, r"params\.lambda_max.*<= 1"),
    ({"lambda_min": 1.0, "lambda_max": 0.5}, r"params\.lambda_min"),
    ({"teachers": []}, r"params\.teachers.*at least one"),
    ({"val_weight": 1.5}, r"params\.val_weight.*\[0, 1\]"),
    ({"grad_fit": 0}, r"params\.grad_fit.*positive"),
    ({"preset": "mlc"}, r"params\.preset.*'amal' or 'almkd'"),
    ({"select_evry": 2}, r"did you mean 'select_every'"),
])
def test_bad_parameters_name_the_key(params, match):
    with pytest.raises(kdcore.RecipeError, match=match):
        structure(AlmKDParams, params, "stages[1].components[0].params")


@pytest.mark.parametrize(("n", "sizes"), [(7, [2, 2, 3]), (6, [2, 2, 2]), (5, [2, 3]),
                                          (1, [1]), (2, [2])])
def test_chunks_cut_batches_as_the_engine_does(n, sizes):
    """A lone last sample joins the batch before it, so its 1/|B| is the one training gives it."""
    from kdcore_almkd.mixing import chunks_of

    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    chunks = chunks_of(order, 2, 2)
    assert torch.equal(torch.cat([rows for rows, _ in chunks]), order)
    scales = torch.cat([scale for _, scale in chunks])
    want = torch.cat([torch.full((s,), 1.0 / s, dtype=torch.float64) for s in sizes])
    assert torch.equal(scales, want)
    assert [len(rows) for rows, _ in chunks] == [sum(sizes[i:i + 2])
                                                 for i in range(0, len(sizes), 2)]
