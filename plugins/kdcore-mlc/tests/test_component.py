"""MLC's hooks on one batch, through kdcore's component harness (no recipe, no history)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdcore
from kdcore.losses import soft_cross_entropy
from kdcore.testing import TinyNet, harness
from kdcore_mlc.kdmlc import KDMLCStudent
from kdcore_mlc.mlc import MLC

C, N, GOLD = 3, 24, 10


def Tiny() -> TinyNet:  # noqa: N802 (a model class in all but name)
    """6 inputs -> 5 tanh features -> 3 classes."""
    return TinyNet(6, C, 5, activation="tanh")


def _mlc(params: dict | None = None, *, seed: int = 0):
    """An ``mlc`` component serving a tiny student, with an SGD optimiser and a gold split."""
    torch.manual_seed(0)
    x = torch.randn(N, 6)
    clean = torch.randint(0, C, (N,))
    noisy = torch.where(torch.rand(N) < 0.4, torch.randint(0, C, (N,)), clean)
    net = Tiny()
    h = harness(MLC, {"gold_batch_size": 4, "cls_dim": 4, "hidden": 8, "meta_lr": 1e-2,
                      **(params or {})},
                x=x, noisy_label=noisy, clean_label=clean, num_classes=C,
                models={"student": net}, train=("student",), name="mlc", seed=seed)
    h.run.optimizers["student"] = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    h.run.data.gold = kdcore.ArrayDataset(100 + torch.randn(GOLD, 6),
                                          torch.arange(GOLD) % C, C)
    h.setup()
    h.epoch_start(0)
    return h, net


def test_one_batch_through_refine_transfer_and_backward():
    h, net = _mlc()
    mlc, ctx = h.component, h.ctx
    batch = h.batch([5, 1, 7, 3, 12, 20])
    targets = mlc.refine(ctx, batch, batch.targets)
    # y^c: soft labels from the LCN on the detached features and the noisy labels
    features = net(batch.x)[1].detach()
    expected = mlc.lcn.correct(features, batch.noisy_label)[0].detach()
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    assert not targets.requires_grad
    # what it leaves for later components of the batch, under its label
    assert batch.store.require("mlc", "yc").requires_grad  # the graph to the LCN
    torch.testing.assert_close(mlc.corrected(batch), expected)
    gold = batch.store.require("mlc", "gold")
    assert torch.equal(batch.store.require("mlc", "gold_index"), gold.index)
    assert len(gold.meta_y) == len(gold.clean_y) == 2  # hmlc_K_mix: halves of 4 gold rows
    assert bool((gold.meta_x > 50).all())  # drawn from the gold split only
    late = batch.store.require("mlc", "labels_after_meta_step")
    with pytest.raises(kdcore.KdcoreError, match="before the meta step"):
        late()

    loss = mlc.transfer(ctx, batch)
    assert loss.dim() == 0
    # its per-sample CE against y^c is recorded in its declared column
    assert "loss/mlc" in mlc.written_columns()
    assert mlc.writes_at_start() == {}  # written in the batches: not there at a stage's start
    # in transfer: after every select and weight hook of the batch, before its backward
    assert mlc.writes_in_batch() == {"target": "refine", "loss/mlc": "transfer"}
    torch.testing.assert_close(h.run.ledger["loss/mlc"][batch.index],
                               soft_cross_entropy(net(batch.x)[0].detach(), expected))
    assert h.run.ledger.producer("loss/mlc") == "mlc"

    assert mlc.backward(ctx, batch, "teacher", loss) is False  # not its model
    before = [p.detach().clone() for p in mlc.lcn.parameters()]
    assert mlc.backward(ctx, batch, "student", loss) is True
    assert mlc.meta_steps == 1  # K = 1: the LCN stepped
    assert any(not torch.equal(a, b) for a, b in zip(before, mlc.lcn.parameters(),
                                                     strict=True))
    after = late()  # now the freshest LCN's labels
    assert not torch.allclose(after, expected)
    # the engine's SGD step on the gradients it left lands on the virtual point
    virtual = batch.store.require("mlc", "virtual")
    h.run.optimizers["student"].step()
    for name, param in net.named_parameters():
        torch.testing.assert_close(param.detach(), virtual[name], rtol=1e-5, atol=1e-7)


def test_gold_batches_come_from_the_component_generator():
    """Two harnesses of the same seed draw the same gold stream; another seed another one."""
    def stream(seed):
        h, _ = _mlc(seed=seed)
        out = []
        for start in range(0, 12, 4):
            batch = h.batch(torch.arange(start, start + 4))
            h.component.refine(h.ctx, batch, batch.targets)
            out.append(batch.store.require("mlc", "gold_index"))
        return torch.cat(out)

    assert torch.equal(stream(0), stream(0))
    assert not torch.equal(stream(0), stream(1))


def test_the_student_reads_its_corrector_by_label():
    """``kdmlc_student`` takes ``y^c`` from the batch values of the ``mlc`` it names."""
    h, net = _mlc()
    batch = h.batch([0, 1, 2, 3])
    h.component.refine(h.ctx, batch, batch.targets)
    student = harness(KDMLCStudent, {"corrector": "mlc", "soft_target": "lcn",
                                     "labels_after_meta_step": False},
                      x=h.run.data.train.x, noisy_label=h.run.data.train_noisy,
                      num_classes=C, models={"student": net}, name="kd").setup()
    assert student.component.corrector == "mlc"
    assert student.component.roles() == ()  # soft_target = "lcn": no teacher network
    out = student.component.transfer(student.ctx, batch)["student"]
    assert out.shape == (4,) and out.requires_grad
    other = harness(KDMLCStudent, {"corrector": "other"}, x=h.run.data.train.x,
                    noisy_label=h.run.data.train_noisy, num_classes=C,
                    models={"student": net}, name="kd").setup()
    with pytest.raises(KeyError, match="from 'other'"):
        other.component.transfer(other.ctx, batch)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def test_the_real_step_gradient_treats_the_corrected_labels_as_constants():
    """The LCN reads ``stopgrad(h)``: the gradient MLC leaves for the real step is that of
    ``mean sce(z, y^c)`` with ``y^c`` a constant, transcribed with NumPy for the tiny
    ``Linear -> tanh -> Linear`` model and the LCN's ``Embedding, Linear -> tanh -> Linear ->
    tanh -> Linear -> softmax`` (``hmlc_K``: no clean half in the loss). Without the detach,
    ``y^c`` would carry a second path into the trunk's gradient."""
    h, net = _mlc({"method": "hmlc_K"})
    mlc, ctx = h.component, h.ctx
    rows = [5, 1, 7, 3, 12, 20]
    batch = h.batch(rows)
    lcn = {n: _np(p) for n, p in mlc.lcn.named_parameters()}  # before its meta step
    params = {n: _np(p) for n, p in net.named_parameters()}
    mlc.refine(ctx, batch, batch.targets)
    loss = mlc.transfer(ctx, batch)
    assert mlc.backward(ctx, batch, "student", loss) is True

    x, noisy = _np(batch.x), batch.noisy_label.numpy()
    feats = np.tanh(x @ params["trunk.0.weight"].T + params["trunk.0.bias"])
    z = feats @ params["classifier.weight"].T + params["classifier.bias"]
    inp = np.concatenate([feats, lcn["embedding.weight"][noisy]], axis=1)
    a = np.tanh(inp @ lcn["net.0.weight"].T + lcn["net.0.bias"])
    a = np.tanh(a @ lcn["net.2.weight"].T + lcn["net.2.bias"])
    raw = a @ lcn["net.4.weight"].T + lcn["net.4.bias"]
    y = np.exp(raw - raw.max(1, keepdims=True))
    y /= y.sum(1, keepdims=True)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - y) / len(rows)  # d mean_i sum_c -y_ic log p_ic / dz, y constant (rows sum to 1)
    dpre = (dz @ params["classifier.weight"]) * (1.0 - feats ** 2)
    expected = {"classifier.weight": dz.T @ feats, "classifier.bias": dz.sum(0),
                "trunk.0.weight": dpre.T @ x, "trunk.0.bias": dpre.sum(0)}
    for name, param in net.named_parameters():
        np.testing.assert_allclose(_np(param.grad), expected[name], rtol=1e-4, atol=1e-7,
                                   err_msg=name)
