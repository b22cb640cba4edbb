"""The checks that the mutation run of docs/mutation.md (target ``kdcore-mlc``) found missing:
the gold cycler and the K-step accumulator by hand, the LCN against a NumPy transcription,
``L_tr`` with and without the clean half, the look-ahead's edge cases (parameters the loss or
the gold forward does not use, a loss without alpha, the discount's scale), and the component's
loss, statistics, meta optimiser, messages and checkpoint checks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdcore
from kdcore.testing import TinyNet, harness
from kdcore_mlc import mlc as mlc_module
from kdcore_mlc.gold import GoldCycler
from kdcore_mlc.kdmlc import KDMLCStudent, find_corrector
from kdcore_mlc.lcn import LabelCorrectionNet
from kdcore_mlc.lookahead import MetaAccumulator, clean_gradient, lookahead
from kdcore_mlc.losses import mlc_training_loss
from kdcore_mlc.mlc import MLC

C, N, GOLD = 3, 24, 10


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# -- the gold cycler and the accumulator -------------------------------------------------------


def test_gold_cycler_by_hand():
    with pytest.raises(ValueError, match=r"^the gold split is empty$"):
        GoldCycler(0, 2)
    with pytest.raises(ValueError, match=r"^gold batch size must be positive, got 0$"):
        GoldCycler(3, 0)
    one = GoldCycler(1, 1)  # one gold row, batches of one: fine
    assert one.state_dict() == {"perm": None, "pos": 0, "passes": 0}
    assert one.next(torch.Generator()).tolist() == [0]
    cyc = GoldCycler(5, 3)
    gen, ref = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    p1, p2 = torch.randperm(5, generator=ref), torch.randperm(5, generator=ref)
    assert torch.equal(cyc.next(gen), p1[:3])
    assert (cyc.pos, cyc.passes) == (3, 1)
    assert torch.equal(cyc.next(gen), torch.cat([p1[3:], p2[:1]]))  # across the pass's end
    assert (cyc.pos, cyc.passes) == (1, 2)
    assert torch.equal(cyc.next(gen), p2[1:4])
    assert torch.equal(cyc.next(gen), torch.cat([p2[4:], torch.randperm(5, generator=ref)[:2]]))
    fresh = GoldCycler(5, 3)
    fresh.load_state_dict({"perm": None, "pos": 0, "passes": 0})
    assert fresh.perm is None and fresh.state_dict()["passes"] == 0


def test_meta_accumulator_by_hand():
    with pytest.raises(ValueError, match=r"^K must be at least 1, got 0$"):
        MetaAccumulator(0)
    a = torch.tensor([1.0, 2.0])
    b = torch.tensor([10.0, 20.0])
    acc = MetaAccumulator(3)
    assert not acc.add([a, None], 0.5)  # a None gradient on the first add
    assert acc.state_dict()["value"][1] is None
    assert not acc.add([b, a], None)  # no discount: the previous sum is dropped
    assert torch.equal(acc.value[0], b) and torch.equal(acc.value[1], a)  # None then a: a
    assert acc.add([None, b], 0.5)  # None keeps the previous sum
    assert torch.equal(acc.value[0], b) and torch.equal(acc.value[1], b + 0.5 * a)
    acc.reset()
    acc.add([None, a], 2.0)
    state = acc.state_dict()
    assert state["count"] == 4 and state["value"][0] is None
    other = MetaAccumulator(3)
    other.load_state_dict(state, torch.device("cpu"))
    assert other.value[0] is None and torch.equal(other.value[1], a) and other.count == 4


# -- the LCN and L_tr -----------------------------------------------------------------------------


def test_lcn_defaults_and_forward_against_numpy():
    lcn = LabelCorrectionNet(5, C)
    assert lcn.embedding.weight.shape == (C, 128) and lcn.net[-1].out_features == C
    assert lcn.net[0].out_features == 128
    torch.manual_seed(1)
    small = LabelCorrectionNet(5, C, cls_dim=4, hidden=6)
    h, y = torch.randn(7, 5), torch.tensor([0, 1, 2, 2, 1, 0, 1])
    w = [_np(p) for p in small.parameters()]  # embedding, then weight and bias per Linear
    x = np.concatenate([_np(h), w[0][y.numpy()]], axis=1)
    a1 = np.tanh(x @ w[1].T + w[2])
    a2 = np.tanh(a1 @ w[3].T + w[4])
    want = np.exp(_log_softmax(a2 @ w[5].T + w[6]))
    np.testing.assert_allclose(_np(small(h, y)), want, rtol=1e-5, atol=1e-7)


def _sce(z, q):
    return -(q * _log_softmax(z)).sum(axis=1)


@pytest.mark.parametrize("n_clean", [0, 1, 4])
def test_mlc_training_loss_against_numpy(n_clean):
    rng = np.random.default_rng(n_clean)
    z, q = rng.normal(size=(6, C)), rng.dirichlet(np.ones(C), size=6)
    zc, yc = rng.normal(size=(n_clean, C)), rng.integers(0, C, n_clean)
    got = mlc_training_loss(torch.tensor(z), torch.tensor(q), torch.tensor(zc), torch.tensor(yc))
    noisy = _sce(z, q).mean()
    if n_clean:
        clean = -_log_softmax(zc)[np.arange(n_clean), yc].mean()
        want = (6 * noisy + n_clean * clean) / (6 + n_clean)
    else:
        want = noisy
    assert float(got) == pytest.approx(want, rel=1e-12)
    # either half of the clean pair missing: the noisy term alone
    assert float(mlc_training_loss(torch.tensor(z), torch.tensor(q), torch.tensor(zc), None)
                 ) == pytest.approx(noisy, rel=1e-12)
    assert float(mlc_training_loss(torch.tensor(z), torch.tensor(q), None, torch.tensor(yc))
                 ) == pytest.approx(noisy, rel=1e-12)


# -- the look-ahead's edge cases --------------------------------------------------------------


class WithSpare(kdcore.KDModel):
    """A spare parameter registered first: in the training loss (a penalty) only, never in the
    forward pass, so neither the gold loss nor ``g0`` reaches it."""

    def __init__(self):
        super().__init__()
        self.spare = nn.Parameter(torch.tensor([0.5, -1.0]))
        self.trunk = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
        self.classifier = nn.Linear(5, C)
        self.unused = nn.Linear(2, 2)  # in no loss at all

    def forward_features(self, x):
        return self.trunk(x)


def _spare_setup():
    torch.manual_seed(0)
    model = WithSpare().double()
    lcn = LabelCorrectionNet(5, C, cls_dim=4, hidden=7).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    x, noisy = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, C, (8,))
    xg, yg = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, C, (5,))
    logits, feats = model(x)
    loss = mlc_training_loss(logits, lcn.correct(feats.detach(), noisy)[0]) + (
        model.spare ** 2).sum()
    return model, lcn, opt, loss, xg, yg


def test_lookahead_with_parameters_outside_the_gold_forward_or_the_loss():
    model, lcn, opt, loss, xg, yg = _spare_setup()
    g0 = clean_gradient(model, xg, yg)
    assert g0["spare"] is None and g0["unused.weight"] is None
    extra = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # alpha the loss ignores
    step = lookahead(model, loss, opt, xg, yg, [*lcn.parameters(), extra], g0=g0)
    assert step.names == ["spare", "trunk.0.weight", "trunk.0.bias", "classifier.weight",
                          "classifier.bias"]
    assert step.scales == [0.3] * 5  # plain SGD: eta * 1
    assert step.meta_grads[-1] is None and all(g is not None for g in step.meta_grads[:-1])
    # the discount by hand: w' = w - 0.3 g_tr, g' at w' on the gold batch, spare left out
    params = dict(model.named_parameters())
    virtual = {n: (params[n] - 0.3 * g).detach().requires_grad_(True)
               for n, g in zip(step.names, step.grads)}
    gold_loss = F.cross_entropy(torch.func.functional_call(model, virtual, (xg,))[0], yg)
    names = step.names[1:]
    g_prime = torch.autograd.grad(gold_loss, [virtual[n] for n in names])
    num = sum(float(((1 - 0.3) * gp * g0[n]).sum()) for n, gp in zip(names, g_prime))
    den = sum(float((g0[n] ** 2).sum()) for n in names)
    assert step.gamma == pytest.approx(num / den, rel=1e-9)
    assert step.meta_loss == pytest.approx(gold_loss.item(), rel=1e-12)


def test_discount_scales_with_the_clean_gradient_and_is_0_without_one():
    model, lcn, opt, loss, xg, yg = _spare_setup()
    g0 = {n: None if g is None else g.detach() for n, g in clean_gradient(model, xg, yg).items()}
    den = sum(float((g ** 2).sum()) for g in g0.values() if g is not None)
    factor = 2.0 / den ** 0.5  # the scaled clean gradient has a squared norm of 4
    gammas = []
    for scale in (1.0, factor, 0.0):  # 0: a clean gradient of norm 0
        g = {n: None if v is None else scale * v for n, v in g0.items()}
        model, lcn, opt, loss, xg, yg = _spare_setup()  # the same, with a fresh graph
        gammas.append(lookahead(model, loss, opt, xg, yg, list(lcn.parameters()), g0=g).gamma)
    assert den < 1 and gammas[0] != 0  # a squared norm below 1 and one above
    assert gammas[1] == pytest.approx(gammas[0] / factor, rel=1e-9)
    assert gammas[2] == 0.0


class Linear(kdcore.KDModel):
    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(4, C)

    def forward_features(self, x):
        return x


def test_lookahead_of_a_loss_without_alpha_has_no_meta_gradient():
    torch.manual_seed(0)
    model, lcn = Linear(), LabelCorrectionNet(4, C, cls_dim=2, hidden=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(5, 4))[0].sum()  # linear in w: g_tr is a constant
    step = lookahead(model, loss, opt, torch.randn(3, 4), torch.tensor([0, 1, 2]),
                     list(lcn.parameters()))
    assert step.meta_grads == [None] * len(list(lcn.parameters())) and step.gamma is None


# -- the component ----------------------------------------------------------------------------


def Tiny() -> TinyNet:  # noqa: N802 (a model class in all but name)
    """6 inputs -> 5 tanh features -> 3 classes."""
    return TinyNet(6, C, 5, activation="tanh")


def _mlc(params=None, *, gold=GOLD, train=("student",), optimizer=torch.optim.SGD,
         setup=True):
    torch.manual_seed(0)
    x = torch.randn(N, 6)
    clean = torch.randint(0, C, (N,))
    noisy = torch.where(torch.rand(N) < 0.4, torch.randint(0, C, (N,)), clean)
    net = Tiny()
    h = harness(MLC, {"gold_batch_size": 4, "cls_dim": 4, "hidden": 8, "meta_lr": 1e-2,
                      "augment_gold": False, **(params or {})},
                x=x, noisy_label=noisy, clean_label=clean, num_classes=C,
                models={"student": net}, train=train, serves=("student",), name="mlc")
    h.run.optimizers["student"] = optimizer(net.parameters(), lr=0.1)
    h.run.data.gold = kdcore.ArrayDataset(torch.randn(gold, 6), torch.arange(gold) % C, C)
    if setup:
        h.setup()
        h.epoch_start(0)
    return h, net


def test_transfer_is_l_tr_with_the_clean_half_against_numpy():
    h, net = _mlc()
    mlc, ctx = h.component, h.ctx
    batch = h.batch([2, 5, 7, 11, 13, 17])
    mlc.refine(ctx, batch, batch.targets)
    loss = mlc.transfer(ctx, batch)
    gold = batch.store.require("mlc", "gold")
    assert len(gold.meta_y) == len(gold.clean_y) == 2
    yc = _np(batch.store.require("mlc", "yc"))
    z, zc = _np(net(batch.x)[0]), _np(net(gold.clean_x)[0])
    clean = -_log_softmax(zc)[np.arange(2), gold.clean_y.numpy()].mean()
    assert loss.item() == pytest.approx((6 * _sce(z, yc).mean() + 2 * clean) / 8, rel=1e-5)
    assert loss.requires_grad


def test_hmlc_k_uses_the_whole_gold_batch_as_meta_and_keeps_its_index():
    h, _ = _mlc({"method": "hmlc_K", "gold_batch_size": 1})
    batch = h.batch([0, 1, 2])
    h.component.refine(h.ctx, batch, batch.targets)
    gold = batch.store.require("mlc", "gold")
    assert gold.clean_x is None and len(gold.meta_y) == 1
    assert torch.equal(gold.index, batch.store.require("mlc", "gold_index"))


def test_meta_optimiser_is_mlcs_amsgrad():
    h, _ = _mlc()
    group = h.component.meta_optimizer.param_groups[0]
    assert (group["lr"], group["amsgrad"], group["weight_decay"], group["eps"]) == (
        1e-2, True, 0.0, 1e-8)
    assert h.component.lcn.skip is False
    assert _mlc({"skip": True})[0].component.lcn.net[-1].out_features == C + 1


@pytest.mark.parametrize("steps", [1, 2])
def test_epoch_statistics_and_the_k_step_meta_update(monkeypatch, steps):
    seen = []
    original = mlc_module.lookahead

    def recording(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(mlc_module, "lookahead", recording)
    h, net = _mlc({"gradient_steps": steps, "skip": True})
    mlc, ctx = h.component, h.ctx
    lcn0 = copy.deepcopy(mlc.lcn)
    skip_a, skip_n = 0.0, 0
    for rows in ([0, 1, 2, 3, 4], [5, 6, 7]):
        batch = h.batch(rows)
        mlc.refine(ctx, batch, batch.targets)
        _, a = mlc.lcn.correct(mlc.features(batch), batch.noisy_label)
        skip_a, skip_n = skip_a + float(a.detach().sum()), skip_n + len(rows)
        loss = mlc.transfer(ctx, batch)
        assert mlc.backward(ctx, batch, "student", loss)
        ctx.optimizers["student"].step()
    metrics = {}
    mlc.on_epoch_end(ctx, metrics)
    want = {"mlc/mlc/meta_loss": (seen[0].meta_loss + seen[1].meta_loss) / 2,
            "mlc/mlc/skip_a": skip_a / skip_n, "mlc/mlc/meta_steps": float(2 // steps),
            "mlc/mlc/gold_passes": 1.0}  # 8 of the 10 gold rows
    if steps == 1:
        assert seen[0].gamma is None and seen[1].gamma is None
    else:
        assert seen[0].gamma is not None and seen[1].gamma is not None
        want["mlc/mlc/gamma"] = (seen[0].gamma + seen[1].gamma) / 2
        # one meta step with the discounted sum G_2 + gamma_2 G_1, by torch's own AMSGrad
        opt = torch.optim.Adam(lcn0.parameters(), lr=1e-2, eps=1e-8, amsgrad=True)
        for p, g1, g2 in zip(lcn0.parameters(), seen[0].meta_grads, seen[1].meta_grads):
            p.grad = g2 + seen[1].gamma * g1
        opt.step()
        for mine, ref in zip(mlc.lcn.parameters(), lcn0.parameters()):
            torch.testing.assert_close(mine, ref)
    assert metrics == pytest.approx(want, rel=1e-9)


def test_labels_after_the_meta_step_wait_for_this_steps_meta_update():
    h, _ = _mlc()
    h.run.step = 1
    batch = h.batch([0, 1])
    h.component.refine(h.ctx, batch, batch.targets)
    with pytest.raises(kdcore.KdcoreError, match="before the meta step of step 1"):
        batch.store.require("mlc", "labels_after_meta_step")()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"train": ("teacher",)}, r"^component 'mlc' serves 'student', which stage 'stage' does not "
                              r"train; MLC trains its main model"),
    ({"optimizer": torch.optim.Adam}, r"^component 'mlc': the look-ahead mirrors SGD only; set "
                                      r"models\.student\.optimizer\.name = \"sgd\"$"),
    ({"gold": 0}, r"^component 'mlc' needs a clean gold split: set data\.gold_per_class"),
    ({"params": {"gold_batch_size": 1}}, r"^component 'mlc': hmlc_K_mix splits the gold batch "
                                         r"in two and needs gold_batch_size >= 2$"),
])
def test_setup_messages(kwargs, match):
    kwargs = dict(kwargs)  # the parametrised dict is shared by every run of the test
    h, _ = _mlc(kwargs.pop("params", None), setup=False, **kwargs)
    with pytest.raises(kdcore.RecipeError, match=match):
        h.component.setup(h.ctx)


def test_setup_accepts_the_smallest_gold_batches():
    two, _ = _mlc({"gold_batch_size": 2})
    one, _ = _mlc({"method": "hmlc_K", "gold_batch_size": 1}, gold=1)
    assert (two.component.params.gold_batch_size, one.component.params.gold_batch_size) == (2, 1)


def test_a_continued_state_must_fit_and_takes_this_stages_meta_lr():
    first, _ = _mlc()
    state = first.component.state_dict()
    assert state["role"] == "student"
    later, _ = _mlc({"meta_lr": 5e-3})
    later.component.load_state_dict(copy.deepcopy(state))
    assert later.component.meta_optimizer.param_groups[0]["lr"] == 5e-3
    wider, _ = _mlc({"hidden": 9})
    with pytest.raises(kdcore.RecipeError, match=r"\(which served 'student'\), but its"):
        wider.component.load_state_dict(copy.deepcopy(state))
    moved = copy.deepcopy(state)
    moved["gold"]["perm"] = torch.arange(GOLD + 1)  # another gold split
    with pytest.raises(kdcore.RecipeError, match="gold split does not fit"):
        later.component.load_state_dict(moved)


# -- KDMLC ------------------------------------------------------------------------------------


def test_find_corrector_messages():
    stage = SimpleNamespace(name="s", components=[])
    assert find_corrector(stage, None) == (
        "needs exactly one mlc component (or set params.corrector) in stage 's'")
    assert find_corrector(stage, "m") == "needs an mlc component labelled 'm' in stage 's'"
    h = harness(KDMLCStudent, {}, x=torch.randn(4, 6), noisy_label=torch.arange(4) % C,
                num_classes=C, models={"student": Tiny()}, name="kd")
    with pytest.raises(kdcore.RecipeError, match=r"^component 'kd' needs exactly one mlc "
                                                 r"component \(or set params\.corrector\) in "
                                                 r"stage 'stage'$"):
        h.component.setup(h.ctx)


def test_student_clean_half_is_weighted_by_batch_sizes():
    h, net = _mlc()
    batch = h.batch([0, 1, 2, 3, 4])
    h.component.refine(h.ctx, batch, batch.targets)
    student = harness(KDMLCStudent, {"corrector": "mlc", "soft_target": "lcn", "beta": 0.0,
                                     "clean_half": True, "labels_after_meta_step": False},
                      x=h.run.data.train.x, noisy_label=h.run.data.train_noisy,
                      num_classes=C, models={"student": net}, name="kd").setup()
    out = student.component.transfer(student.ctx, batch)["student"]
    gold = batch.store.require("mlc", "gold")
    yc = _np(batch.store.require("mlc", "yc"))
    zc = _np(net(gold.clean_x)[0])
    clean = -_log_softmax(zc)[np.arange(2), gold.clean_y.numpy()].mean()
    want = (5 * _sce(_np(net(batch.x)[0]), yc) + 2 * clean) / 7  # beta 0: the CE term only
    np.testing.assert_allclose(_np(out), want, rtol=1e-5)


def test_a_gold_batch_is_held_to_the_recipes_batch_bound():
    """``gold_batch_size = 10**12`` passed ``check``; the first gold batch's indices took the
    machine's memory (the out-of-memory killer, or std::bad_alloc under a memory limit)."""
    from kdcore.config import structure
    from kdcore.validators import MAX_BATCH_SIZE
    from kdcore_mlc.mlc import MLCParams

    assert structure(MLCParams, {"gold_batch_size": MAX_BATCH_SIZE}).gold_batch_size == 2**20
    for size in (MAX_BATCH_SIZE + 1, 10**12, -1):
        with pytest.raises(kdcore.RecipeError, match=r"gold_batch_size' must be in \[0, 1048576\]"):
            structure(MLCParams, {"gold_batch_size": size})
