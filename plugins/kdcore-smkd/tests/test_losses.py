"""SMKD and DML losses: special cases, the exact DML relationship, schedules, golden values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdcore.losses import smooth_targets, soft_cross_entropy
from kdcore_smkd.losses import (
    certainty,
    dml_loss,
    global_trust,
    selection_mask,
    smkd_loss,
    threshold_at,
)

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "fixtures" / "smkd_golden.json").read_text())


def _load_make_golden():
    import importlib.util

    spec = importlib.util.spec_from_file_location("smkd_make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MG = _load_make_golden()


def _batch(seed: int = 0, b: int = 64, c: int = 10, peers: int = 1, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(b, c, generator=gen, dtype=torch.float64) * scale).requires_grad_(True)
    zp = [torch.randn(b, c, generator=gen, dtype=torch.float64) * scale for _ in range(peers)]
    y = torch.randint(0, c, (b,), generator=gen)
    return z, zp, F.one_hot(y, c).double(), y


def _grad(loss: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss.sum(), z)
    return g


# -- the special cases (spec §2.3): zero knowledge and all knowledge ---------------------------


@pytest.mark.parametrize("threshold", [1.0 + 1e-9, 1.5, 100.0])
@pytest.mark.parametrize("peers", [1, 2])
@pytest.mark.parametrize("certainty_measure", ["entropy", "max_prob"])
def test_threshold_above_one_is_label_smoothing(threshold, peers, certainty_measure):
    z, zp, q, y = _batch(peers=peers)
    for eps in (0.0, 0.1, 0.5, 0.9):
        got = smkd_loss(z, zp, q, threshold=threshold, epsilon=eps,
                        certainty_measure=certainty_measure)
        # independent training with label smoothing at eps, two ways
        torch.testing.assert_close(got, soft_cross_entropy(z, smooth_targets(q, eps)))
        torch.testing.assert_close(
            got, F.cross_entropy(z, y, reduction="none", label_smoothing=eps))
        assert not selection_mask(zp[0], threshold, certainty_measure).any()


@pytest.mark.parametrize("peers", [1, 2])
@pytest.mark.parametrize("form", ["target", "kl"])
def test_threshold_above_one_with_fallback_none_is_cross_entropy(peers, form):
    z, zp, q, y = _batch(peers=peers)
    for mode in ("constant", "adaptive"):
        got = smkd_loss(z, zp, q, threshold=1.01, epsilon=0.7, epsilon_mode=mode,
                        trust=0.9, fallback="none", form=form, temperature=4.0)
        torch.testing.assert_close(got, F.cross_entropy(z, y, reduction="none"))
        torch.testing.assert_close(_grad(got, z),
                                   _grad(F.cross_entropy(z, y, reduction="none"), z))


def test_threshold_above_one_kl_form_is_label_smoothing_minus_a_constant():
    z, zp, q, _ = _batch()
    got = smkd_loss(z, zp, q, threshold=2.0, epsilon=0.3, form="kl")
    ls = soft_cross_entropy(z, smooth_targets(q, 0.3))
    torch.testing.assert_close(got, ls - 0.3 * math.log(10))
    torch.testing.assert_close(_grad(got, z), _grad(ls, z))


@pytest.mark.parametrize("threshold", [0.0, -0.5])
@pytest.mark.parametrize("certainty_measure", ["entropy", "max_prob"])
def test_threshold_at_or_below_zero_is_half_of_dml(threshold, certainty_measure):
    """Exact: smkd(eta <= 0, eps = 0.5, form = "kl") = 0.5 * DML, value and gradient."""
    z, zp, q, _ = _batch()
    # a one-hot peer (certainty exactly 1) and a uniform one (certainty exactly 0) included
    zp[0][0] = torch.tensor([1e4] + [0.0] * 9, dtype=torch.float64)
    zp[0][1] = 0.0
    assert selection_mask(zp[0], threshold, certainty_measure).all()
    for fallback in ("uniform", "none"):
        got = smkd_loss(z, zp, q, threshold=threshold, epsilon=0.5, form="kl",
                        fallback=fallback, certainty_measure=certainty_measure)
        dml = dml_loss(z, zp, q)
        torch.testing.assert_close(got, 0.5 * dml)
        torch.testing.assert_close(_grad(got, z), 0.5 * _grad(dml, z))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_target_form_at_threshold_zero_is_half_dml_plus_peer_entropy(temperature):
    """The default form: 0.5 * DML + 0.5 * T^2 H(p_peer^T), a constant of the trained model."""
    z, zp, q, _ = _batch()
    got = smkd_loss(z, zp, q, threshold=0.0, epsilon=0.5, temperature=temperature)
    dml = dml_loss(z, zp, q, temperature=temperature)
    p_t = F.softmax(zp[0] / temperature, 1)
    entropy = -(p_t * p_t.log()).sum(1)
    torch.testing.assert_close(got, 0.5 * dml + 0.5 * temperature**2 * entropy)
    torch.testing.assert_close(_grad(got, z), 0.5 * _grad(dml, z))


def test_target_form_is_cross_entropy_to_the_mixed_target():
    """At T = 1, CE((1 - eps) q + eps k, p) with k = sg(p_peer) where selected, else u."""
    z, zp, q, _ = _batch(scale=2.0)
    for threshold in (0.2, 0.4, 0.6):
        sel = selection_mask(zp[0], threshold)
        assert 0 < int(sel.sum()) < len(sel)  # a real mix of selected and unselected
        k = torch.where(sel[:, None], F.softmax(zp[0], 1), torch.full_like(q, 0.1))
        got = smkd_loss(z, zp, q, threshold=threshold, epsilon=0.3)
        torch.testing.assert_close(got, soft_cross_entropy(z, 0.7 * q + 0.3 * k))
        k_none = torch.where(sel[:, None], F.softmax(zp[0], 1), q)
        got = smkd_loss(z, zp, q, threshold=threshold, epsilon=0.3, fallback="none")
        torch.testing.assert_close(got, soft_cross_entropy(z, 0.7 * q + 0.3 * k_none))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dml_with_two_peers_and_kl_form(reduction):
    """Three models: each peer's knowledge averaged, so smkd = 0.5 * DML(mean); for two
    models (one peer) sum and mean agree."""
    z, zp, q, _ = _batch(peers=2)
    got = smkd_loss(z, zp, q, threshold=0.0, epsilon=0.5, form="kl")
    torch.testing.assert_close(got, 0.5 * dml_loss(z, zp, q, peer_reduction="mean"))
    one = dml_loss(z, zp[:1], q, peer_reduction=reduction)
    torch.testing.assert_close(one, dml_loss(z, zp[:1], q))
    total = dml_loss(z, zp, q, peer_reduction="sum")
    kl = sum(F.kl_div(F.log_softmax(z, 1), F.softmax(p, 1), reduction="none").sum(1) for p in zp)
    torch.testing.assert_close(total, F.cross_entropy(z, q.argmax(1), reduction="none") + kl)


def test_peers_are_constant_targets():
    z, zp, q, _ = _batch()
    peer = zp[0].clone().requires_grad_(True)
    smkd_loss(z, [peer], q, threshold=0.0).sum().backward()
    dml_loss(z, [peer], q).sum().backward()
    assert peer.grad is None


# -- certainty, adaptive epsilon, schedules -----------------------------------------------------


def test_certainty_measures():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25] * 4, [0.7, 0.1, 0.1, 0.1]])
    ent = certainty(probs, "entropy")
    h = -(0.7 * math.log(0.7) + 3 * 0.1 * math.log(0.1))
    torch.testing.assert_close(ent, torch.tensor([1.0, 0.0, 1 - h / math.log(4)]))
    torch.testing.assert_close(certainty(probs, "max_prob"), torch.tensor([1.0, 0.25, 0.7]))
    assert certainty(torch.full((2, 7), 1 / 7), "entropy").min() >= 0.0  # clamped


def test_adaptive_epsilon_is_trust_times_peer_certainty():
    z, zp, q, _ = _batch()
    c = certainty(F.softmax(zp[0], 1))
    eps = 0.6 * c
    k = F.softmax(zp[0], 1)  # threshold 0: every sample selected
    got = smkd_loss(z, zp, q, threshold=0.0, epsilon_mode="adaptive", trust=0.6,
                    epsilon=0.123)  # the constant is ignored
    torch.testing.assert_close(got, soft_cross_entropy(z, (1 - eps)[:, None] * q
                                                        + eps[:, None] * k))


def test_global_trust_and_progressive_thresholds_at_known_steps():
    assert global_trust(50, 100, 10.0, 0.5) == 0.5
    assert global_trust(0, 100, 10.0, 0.5) == pytest.approx(1 / (1 + math.exp(5)))
    assert global_trust(100, 100, 10.0, 0.5) == pytest.approx(1 / (1 + math.exp(-5)))
    assert global_trust(30, 100, 6.0, 0.3) == 0.5
    assert global_trust(0, 100, 1e4, 0.5) == 0.0  # no overflow either way
    assert global_trust(100, 100, 1e4, 0.5) == 1.0
    kw = {"schedule": "progressive", "threshold": 0.9, "exp_base": 10.0, "transit": 0.5}
    assert threshold_at(50, 100, **kw) == 0.5
    assert threshold_at(0, 100, **kw) == pytest.approx(1 - 1 / (1 + math.exp(5)))  # 0.99331
    assert threshold_at(0, 100, **kw) == pytest.approx(0.9933071490757153)
    assert threshold_at(75, 100, **kw) == pytest.approx(1 / (1 + math.exp(2.5)))  # 0.07586
    assert threshold_at(25, 100, direction="tighten", **kw) == pytest.approx(
        1 / (1 + math.exp(2.5)))
    ts = [threshold_at(t, 100, **kw) for t in range(101)]
    assert all(a > b for a, b in zip(ts, ts[1:]))  # relaxes monotonically
    tight = [threshold_at(t, 100, direction="tighten", **kw) for t in range(101)]
    assert all(a < b for a, b in zip(tight, tight[1:]))
    assert threshold_at(7, 100, schedule="static", threshold=0.9) == 0.9


# -- golden values, cross-checked against a plain-Python transcription of the equations --------


def _softmax(row, t=1.0):
    m = max(v / t for v in row)
    e = [math.exp(v / t - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _certainty(p, measure):
    if measure == "max_prob":
        return max(p)
    h = -sum(v * math.log(v) for v in p if v > 0)
    return min(1.0, max(0.0, 1 - h / math.log(len(p))))


def _ce(target, p):
    return -sum(a * math.log(b) for a, b in zip(target, p))


def reference_smkd(z, peers, q, *, threshold, epsilon=0.5, epsilon_mode="constant", trust=1.0,
                   fallback="uniform", form="target", temperature=1.0,
                   certainty_measure="entropy", self_correction="none"):
    """Spec §2.3, one sample at a time, in plain Python (no torch, no kdcore helper)."""
    out = []
    for i, row in enumerate(z):
        p = _softmax(row)
        n = len(p)
        qi = list(q[i])
        if self_correction == "proselflc":
            e_s = trust * _certainty(p, certainty_measure)
            qi = [(1 - e_s) * a + e_s * b for a, b in zip(qi, p)]
        total = 0.0
        for peer in peers:
            pj = _softmax(peer[i])
            c = _certainty(pj, certainty_measure)
            eps = epsilon if epsilon_mode == "constant" else trust * c
            t = temperature
            if c >= threshold:
                pj_t, p_t = _softmax(peer[i], t), _softmax(row, t)
                d = t * t * _ce(pj_t, p_t)
                if form == "kl":
                    d -= t * t * _ce(pj_t, pj_t)  # KL = CE - H
            elif fallback == "uniform":
                u = [1 / n] * n
                d = _ce(u, p) - (math.log(n) if form == "kl" else 0.0)
            else:
                eps, d = 0.0, 0.0
            total += (1 - eps) * _ce(qi, p) + eps * d
        out.append(total / len(peers))
    return out


def reference_dml(z, peers, q, *, temperature=1.0, peer_reduction="sum"):
    out = []
    t = temperature
    for i, row in enumerate(z):
        kl = sum(t * t * (_ce(_softmax(pr[i], t), _softmax(row, t))
                          - _ce(_softmax(pr[i], t), _softmax(pr[i], t))) for pr in peers)
        if peer_reduction == "mean":
            kl /= len(peers)
        out.append(_ce(q[i], _softmax(row)) + kl)
    return out


def test_golden_values_match_the_code():
    computed = MG.compute()
    assert set(computed) == set(GOLDEN["values"])
    for name, values in GOLDEN["values"].items():
        assert computed[name] == pytest.approx(values, rel=1e-12, abs=1e-12), name


def test_golden_values_match_an_independent_transcription():
    # rel 1e-7: the transcription is plain Python floats
    i = GOLDEN["inputs"]
    peers = {"a": i["peer_a"], "b": i["peer_b"]}
    for name, (names, kw) in MG.SMKD_CASES.items():
        ref = reference_smkd(i["logits"], [peers[p] for p in names], i["targets"], **kw)
        assert GOLDEN["values"][name] == pytest.approx(ref, rel=1e-7), name
    for name, (names, kw) in MG.DML_CASES.items():
        ref = reference_dml(i["logits"], [peers[p] for p in names], i["targets"], **kw)
        assert GOLDEN["values"][name] == pytest.approx(ref, rel=1e-7), name
    for (t, total, kw), value in zip(MG.THRESHOLD_CASES, GOLDEN["values"]["thresholds"]):
        g = 1 / (1 + math.exp(-kw["exp_base"] * (t / total - kw["transit"])))
        assert value == pytest.approx(1 - g if kw["direction"] == "relax" else g, rel=1e-12)


def test_golden_inputs_mix_selected_and_unselected_samples():
    x = MG.tensors()
    mask = selection_mask(x["a"], 0.3)
    assert 0 < int(mask.sum()) < len(mask)
    # where nothing is selected the knowledge is uniform (LS) or absent (CE)
    v = GOLDEN["values"]
    assert v["static_uniform_target"][0] == v["static_none_target"][0]  # sample 0 selected
    assert v["static_uniform_target"][2] != v["static_none_target"][2]  # sample 2 is not
