"""AWE against plain NumPy transcriptions: the survivors of ``benchmarks/mutants.py kdcore-awe``.

Each formula (WeightNet, prototypes, ambiguity, both weight forms, seed weights, the WeightNet's
SGD step) is recomputed here from its definition, in float64 NumPy, on the harness's data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.testing import TinyNet as Net
from kdcore.testing import harness
from kdcore_awe import AWE, WeightNet, ambiguity_profile, class_prototypes
from kdcore_awe.awe import AWEParams

N, C = 40, 4


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _weightnet_np(net: WeightNet, amb: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    w1, b1 = _np(net.net[0].weight), _np(net.net[0].bias)
    alpha = float(net.net[1].weight.detach())
    w2, b2 = _np(net.net[2].weight), _np(net.net[2].bias)
    x = np.concatenate([amb, np.eye(c)[labels]], axis=1)
    h = x @ w1.T + b1
    h = np.where(h > 0, h, alpha * h)
    return _sigmoid(h @ w2.T + b2)[:, 0]


def _prototypes_np(f: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    out = np.zeros((c, f.shape[1]))
    for k in range(c):
        if (labels == k).any():
            out[k] = f[labels == k].mean(0)
    return out


def _cos_np(f: np.ndarray, p: np.ndarray) -> np.ndarray:
    fn = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    pn = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return fn @ pn.T


def _harness(params, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 6, generator=g)
    noisy = torch.randint(0, C, (N,), generator=g)
    torch.manual_seed(seed)
    return harness(AWE, params, x=x, noisy_label=noisy, num_classes=C,
                   models={"student": Net(c=C)}, name="awe", terms=("ce",)).setup()


def _train_outputs(h):
    with torch.no_grad():
        logits, feats = h.run.models["student"](h.run.data.train.x)
    return _np(logits), _np(feats)


def test_weightnet_is_linear_prelu_linear_sigmoid():
    torch.manual_seed(3)
    net = WeightNet(C)
    with torch.no_grad():
        net.net[1].weight.fill_(0.3)  # a slope that tells PReLU from ReLU and identity
    amb = torch.randn(7, C)
    labels = torch.tensor([0, 1, 2, 3, 3, 1, 0])
    out = net(amb, torch.eye(C)[labels])
    assert out.shape == (7,)
    np.testing.assert_allclose(_np(out), _weightnet_np(net, _np(amb), labels.numpy(), C),
                               rtol=1e-5, atol=1e-6)


def test_prototypes_are_class_means_in_the_features_dtype():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(9, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 2, 2, 1, 0, 2, 0])  # counts 5, 1, 3; class 3 empty
    protos = class_prototypes(f, labels, 4)
    assert protos.dtype == torch.float64 and protos.shape == (4, 3)
    np.testing.assert_allclose(protos.numpy(), _prototypes_np(f.numpy(), labels.numpy(), 4),
                               rtol=1e-12, atol=1e-12)


def test_ambiguity_is_the_cosine_of_features_and_prototypes():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(6, 3, generator=g, dtype=torch.float64) * 5
    p = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.1
    np.testing.assert_allclose(ambiguity_profile(f, p).numpy(), _cos_np(f.numpy(), p.numpy()),
                               rtol=1e-10, atol=1e-12)


def test_documented_defaults():
    p = AWEParams()
    assert (p.student, p.loss_mode, p.seed_mode, p.selection) == ("student", "learned", "none", "")
    assert (p.lr, p.momentum, p.weight_decay) == (0.0, 0.9, 5e-4)
    assert (p.zero_grad, p.batch_mean_weight, p.seed_alignment) == (True, False, "index")


def test_weightnet_optimiser_takes_the_sgd_settings():
    h = _harness({"lr": 0.3, "momentum": 0.5, "weight_decay": 0.01})
    assert isinstance(h.component.optimizer, torch.optim.SGD)
    group = h.component.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.3, 0.5, 0.01)
    assert len(group["params"]) == len(list(h.component.net.parameters()))


def test_cosine_loss_weights_from_current_target_prototypes():
    h = _harness({"loss_mode": "cosine"})
    h.epoch_start(0)
    # targets that differ from the noisy labels: the prototypes follow base_target
    targets = torch.roll(h.run.ledger["noisy_label"], 1)
    h.run.ledger.add("base_target", torch.eye(C)[targets], producer="labels", kind="target",
                     snapshot=False)
    _, feats = _train_outputs(h)
    labels = targets.numpy()
    amb = _cos_np(feats, _prototypes_np(feats, labels, C))
    expected = _sigmoid(amb[np.arange(N), labels])
    index = torch.tensor([5, 3, 17, 0, 39, 22])
    w = h.component.weight(h.ctx, h.batch(index))
    assert w.shape == (6,)
    np.testing.assert_allclose(_np(w), expected[index.numpy()], rtol=1e-5, atol=1e-6)


def test_no_loss_weights_in_none_mode():
    h = _harness({"loss_mode": "none"})
    h.epoch_start(0)
    assert h.component.weight(h.ctx, h.batch(torch.arange(4))) is None


@pytest.mark.parametrize("training", [True, False])
def test_learned_loss_weights_are_the_weightnet_and_keep_its_mode(training):
    h = _harness({"loss_mode": "learned"})
    h.epoch_start(0)
    net = h.component.net
    net.train(training)
    _, feats = _train_outputs(h)
    labels = h.run.ledger["noisy_label"].numpy()
    amb = _cos_np(feats, _prototypes_np(feats, labels, C))
    index = torch.tensor([1, 8, 30, 12])
    w = h.component.weight(h.ctx, h.batch(index))
    assert net.training is training
    np.testing.assert_allclose(_np(w), _weightnet_np(net, amb[index.numpy()],
                                                     labels[index.numpy()], C),
                               rtol=1e-5, atol=1e-6)
    assert w.requires_grad  # trained through the weighted loss


def test_batch_mean_weight_expands_the_mean():
    h = _harness({"loss_mode": "cosine", "batch_mean_weight": True})
    h.epoch_start(0)
    _, feats = _train_outputs(h)
    labels = h.run.ledger["noisy_label"].numpy()
    amb = _cos_np(feats, _prototypes_np(feats, labels, C))
    index = np.array([2, 9, 11, 33, 4])
    w = h.component.weight(h.ctx, h.batch(torch.as_tensor(index)))
    expected = _sigmoid(amb[index, labels[index]]).mean()
    np.testing.assert_allclose(_np(w), np.full(5, expected), rtol=1e-5, atol=1e-6)


def test_loss_prototypes_are_recomputed_per_epoch_and_stage_only():
    h = _harness({"loss_mode": "cosine"})
    h.epoch_start(0)
    _, feats = _train_outputs(h)
    noisy = h.run.ledger["noisy_label"]
    first = h.component.loss_prototypes(h.ctx).clone()
    np.testing.assert_allclose(_np(first), _prototypes_np(feats, noisy.numpy(), C),
                               rtol=1e-5, atol=1e-6)
    moved = torch.roll(noisy, 3)
    h.run.ledger.add("base_target", torch.eye(C)[moved], producer="labels", kind="target",
                     snapshot=False)
    torch.testing.assert_close(h.component.loss_prototypes(h.ctx), first)  # cached
    expected = _prototypes_np(feats, moved.numpy(), C)
    h.epoch_start(0)  # an epoch start (after LP) forgets them even at the same epoch number
    np.testing.assert_allclose(_np(h.component.loss_prototypes(h.ctx)), expected,
                               rtol=1e-5, atol=1e-6)
    h.run.ledger.add("base_target", torch.eye(C)[noisy], producer="labels", kind="target",
                     snapshot=False)
    h.run.epoch = 1  # a new epoch (without on_epoch_start) recomputes them
    np.testing.assert_allclose(_np(h.component.loss_prototypes(h.ctx)), _np(first),
                               rtol=1e-6, atol=1e-7)
    h.run.ledger.add("base_target", torch.eye(C)[moved], producer="labels", kind="target",
                     snapshot=False)
    h.run.stage_index = 1  # so does a new stage at the same epoch number
    np.testing.assert_allclose(_np(h.component.loss_prototypes(h.ctx)), expected,
                               rtol=1e-5, atol=1e-6)


def _expected_seed(h, selection: np.ndarray | None):
    logits, feats = _train_outputs(h)
    labels = logits.argmax(1)
    if selection is not None:
        labels = np.where(selection, h.run.ledger["noisy_label"].numpy(), labels)
    amb = _cos_np(feats, _prototypes_np(feats, labels, C))
    return labels, amb


@pytest.mark.parametrize("with_selection", [True, False])
def test_cosine_seed_weights_use_the_selected_labels(with_selection):
    params = {"seed_mode": "cosine", "loss_mode": "none"}
    mask = np.arange(N) % 3 != 0
    h = _harness({**params, "selection": "select/small_loss"} if with_selection else params)
    if with_selection:
        h.run.ledger.add("select/small_loss", torch.as_tensor(mask).float(), producer="sel",
                         kind="mask")
    h.epoch_start(0)
    labels, amb = _expected_seed(h, mask if with_selection else None)
    assert (labels != h.run.ledger["noisy_label"].numpy()).any()
    np.testing.assert_allclose(_np(h.run.ledger["awe/seed_weight"]),
                               _sigmoid(amb[np.arange(N), labels]), rtol=1e-5, atol=1e-6)
    assert h.run.ledger.column("awe/seed_weight").kind == "weight"


def test_learned_seed_weights_are_the_weightnet_without_grad():
    h = _harness({"seed_mode": "learned", "loss_mode": "none"})
    h.epoch_start(0)
    labels, amb = _expected_seed(h, None)
    np.testing.assert_allclose(_np(h.run.ledger["awe/seed_weight"]),
                               _weightnet_np(h.component.net, amb, labels, C),
                               rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in h.component.net.parameters())


def test_no_seed_weights_in_none_mode():
    h = _harness({"seed_mode": "none", "loss_mode": "cosine"})
    h.epoch_start(0)
    assert "awe/seed_weight" not in h.run.ledger


def test_release_shuffled_seed_weights_permute_by_the_component_generator():
    h = _harness({"seed_mode": "cosine", "loss_mode": "none",
                  "seed_alignment": "release_shuffled"})
    h.epoch_start(0)
    labels, amb = _expected_seed(h, None)
    aligned = _sigmoid(amb[np.arange(N), labels])
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose(_np(h.run.ledger["awe/seed_weight"]), aligned[perm],
                               rtol=1e-5, atol=1e-6)


def _stepped(params, student_lr=0.125):
    """One ``after_step`` on gradients of ``sum(w * loss)``; returns the harness, the parameters
    before and their gradients."""
    h = _harness({"loss_mode": "learned", "momentum": 0.5, "weight_decay": 0.1, **params})
    h.run.optimizers["student"] = torch.optim.SGD(h.run.models["student"].parameters(),
                                                  lr=student_lr)
    h.epoch_start(0)
    w = h.component.weight(h.ctx, h.batch(torch.arange(10)))
    (w * torch.linspace(0.5, 2.0, 10)).sum().backward()
    net = h.component.net
    before = [_np(p).copy() for p in net.parameters()]
    grads = [_np(p.grad).copy() for p in net.parameters()]
    h.component.after_step(h.ctx, h.batch(torch.arange(10)))
    return h, before, grads


@pytest.mark.parametrize(("lr", "used"), [(0.0, 0.125), (0.25, 0.25)])
def test_weightnet_sgd_step_follows_the_student_lr_or_its_own(lr, used):
    h, before, grads = _stepped({"lr": lr})
    for p, p0, g in zip(h.component.net.parameters(), before, grads):
        # first SGD step with momentum: buffer = grad + wd * p; p -= lr * buffer
        np.testing.assert_allclose(_np(p), p0 - used * (g + 0.1 * p0), rtol=1e-5, atol=1e-7)
        assert p.grad is None  # zero_grad(set_to_none=True)
    assert h.component.optimizer.param_groups[0]["lr"] == used


def test_release_d3_keeps_the_weightnet_gradients():
    h, _, grads = _stepped({"zero_grad": False})
    for p, g in zip(h.component.net.parameters(), grads):
        np.testing.assert_allclose(_np(p.grad), g)


@pytest.mark.parametrize("zero_grad", [False, True])
def test_accumulated_gradients_are_state_and_a_stage_starts_without_them(zero_grad):
    # D3's gradients accumulate over a stage's steps: a run resumed mid-stage had started
    # them from 0 (its WeightNet's state held the weights and the optimiser only)
    h, _, grads = _stepped({"zero_grad": zero_grad})
    state = h.component.state_dict()
    assert sorted(state) == (["grads", "net", "optimizer"] if not zero_grad else
                             ["net", "optimizer"])
    fresh = _harness({"loss_mode": "learned", "zero_grad": zero_grad})
    fresh.component.load_state_dict(state)
    for p, q, g in zip(fresh.component.net.parameters(), h.component.net.parameters(), grads):
        torch.testing.assert_close(p.detach(), q.detach())
        if zero_grad:
            assert p.grad is None
        else:  # a copy: the stage that continues does not add to the saved one
            np.testing.assert_allclose(_np(p.grad), g)
            assert p.grad.data_ptr() != q.grad.data_ptr()
    fresh.component.on_stage_start(fresh.ctx)  # what the next stage carries: no gradients
    assert all(p.grad is None for p in fresh.component.net.parameters())
    fresh.component.load_state_dict({k: v for k, v in state.items() if k != "grads"})
    assert all(p.grad is None for p in fresh.component.net.parameters())  # an older state


def test_a_continued_weightnet_trains_with_this_stages_momentum_and_weight_decay():
    # torch's load_state_dict restores the saved param groups' settings: a stage continuing
    # an AWE with weight_decay 10 had trained its WeightNet with 10, whatever it said
    h, _, _ = _stepped({})  # momentum 0.5, weight decay 0.1
    later = _harness({"loss_mode": "learned", "momentum": 0.25, "weight_decay": 0.0})
    later.component.load_state_dict(h.component.state_dict())
    groups = later.component.optimizer.param_groups
    assert [(g["momentum"], g["weight_decay"]) for g in groups] == [(0.25, 0.0)] * len(groups)
    saved = h.component.optimizer.state_dict()["state"]
    kept = later.component.optimizer.state_dict()["state"]  # the momentum buffers carry on
    assert sorted(kept) == sorted(saved) and all(
        torch.equal(kept[k]["momentum_buffer"], saved[k]["momentum_buffer"]) for k in saved)


@pytest.mark.parametrize("mode", ["cosine", "none"])
def test_no_weightnet_step_unless_learned(mode):
    h = _harness({"loss_mode": mode})
    net = h.component.net
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in net.parameters()]
    h.component.after_step(h.ctx, h.batch(torch.arange(4)))
    for p, p0 in zip(net.parameters(), before):
        torch.testing.assert_close(p.detach(), p0)


def test_checkpoint_round_trip_restores_net_and_momentum():
    h, _, _ = _stepped({"lr": 0.25})
    fresh = _harness({"loss_mode": "learned", "momentum": 0.5, "weight_decay": 0.1, "lr": 0.25},
                     seed=5)
    fresh.component.load_state_dict(h.component.state_dict())
    for p, q in zip(h.component.net.parameters(), fresh.component.net.parameters()):
        torch.testing.assert_close(p.detach(), q.detach())
    for p, q in zip(h.component.net.parameters(), fresh.component.net.parameters()):
        torch.testing.assert_close(h.component.optimizer.state[p]["momentum_buffer"],
                                   fresh.component.optimizer.state[q]["momentum_buffer"])
