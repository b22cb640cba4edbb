"""SimCLR pre-training: NT-Xent golden values and invariants, the views, and the stage that
trains the backbone without labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import kdcore
from kdcore.testing import TinyNet, harness
from kdcore_ff import SSLPretrain, feature_view, nt_xent
from kdcore_ff.ssl import HEAD

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "ssl_golden.json").read_text())


def reference_nt_xent(z1: list[list[float]], z2: list[list[float]], t: float) -> list[float]:
    """NT-Xent transcribed from SimCLR's definition with plain Python floats."""
    def unit(v):
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v]

    zs = [unit(v) for v in z1 + z2]
    n, b = len(zs), len(z1)

    def sim(i, k):
        return sum(a * c for a, c in zip(zs[i], zs[k])) / t

    anchor = []
    for i in range(n):
        positive = (i + b) % n
        denominator = sum(math.exp(sim(i, k)) for k in range(n) if k != i)
        anchor.append(-sim(i, positive) + math.log(denominator))
    return [(anchor[j] + anchor[j + b]) / 2 for j in range(b)]


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_nt_xent_golden_values(case):
    g = GOLDEN[case]
    z1 = torch.tensor(g["z1"], dtype=torch.float64)
    z2 = torch.tensor(g["z2"], dtype=torch.float64)
    got = nt_xent(z1, z2, g["temperature"])
    torch.testing.assert_close(got, torch.tensor(g["loss"], dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    ref = reference_nt_xent(g["z1"], g["z2"], g["temperature"])
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-10,
                               atol=1e-12)
    # the batch mean is SimCLR's loss over all 2B anchors, as a library would compute it
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / g["temperature"]
    logits.fill_diagonal_(float("-inf"))
    b = len(z1)
    labels = torch.cat([torch.arange(b, 2 * b), torch.arange(b)])
    torch.testing.assert_close(got.mean(), torch.nn.functional.cross_entropy(logits, labels))


def test_nt_xent_invariants():
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    z2 = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    base = nt_xent(z1, z2, 0.3)
    scale = torch.rand(6, 1, generator=gen, dtype=torch.float64) * 5 + 0.1
    torch.testing.assert_close(nt_xent(z1 * scale, z2, 0.3), base)  # cosine similarities only
    torch.testing.assert_close(nt_xent(z2, z1, 0.3), base)  # the two views play the same role
    # every projection the same: each anchor picks its positive among 2B - 1 equal scores
    same = torch.ones(6, 5, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(same, same, 0.3),
                               torch.full((6,), math.log(11), dtype=torch.float64))
    # identical views, orthogonal samples: lower than random pairs; a gradient flows
    eye = torch.eye(5, dtype=torch.float64).requires_grad_(True)
    aligned = nt_xent(eye, eye, 0.3)
    assert float(aligned.detach().mean()) < float(nt_xent(z1[:5], z2[:5], 0.3).mean())
    aligned.sum().backward()
    assert torch.isfinite(eye.grad).all()


def test_feature_view():
    x = torch.rand(200, 64)
    same = feature_view(x, torch.Generator().manual_seed(0), noise_std=0.0, drop_prob=0.0)
    assert torch.equal(same, x)
    a = feature_view(x, torch.Generator().manual_seed(1), noise_std=0.1, drop_prob=0.25)
    b = feature_view(x, torch.Generator().manual_seed(1), noise_std=0.1, drop_prob=0.25)
    assert torch.equal(a, b)
    masked = a == 0
    assert abs(float(masked.float().mean()) - 0.25) < 0.02
    noise = (a - x)[~masked]
    assert abs(float(noise.std()) - 0.1) < 0.01 and abs(float(noise.mean())) < 0.01
    images = feature_view(torch.rand(3, 1, 8, 8), torch.Generator(), noise_std=0.1,
                          drop_prob=0.1)
    assert images.shape == (3, 1, 8, 8)


# -- the pre-training stage ---------------------------------------------------------------------


class Snap:
    def __init__(self):
        self.start = {}
        self.end = {}
        self.head = None

    @kdcore.hookimpl
    def kdcore_run_start(self, ctx):
        model = ctx.models["student"]
        self.head = getattr(model, HEAD, None)
        self.start = {k: v.clone() for k, v in model.state_dict().items()}

    @kdcore.hookimpl
    def kdcore_run_end(self, ctx, summary):
        self.end = {k: v.clone() for k, v in ctx.models["student"].state_dict().items()}


SSL = '{ temperature = 0.5, projection_dim = 16, noise_std = 0.1, drop_prob = 0.2 }'


@pytest.mark.slow
def test_ssl_stage_trains_the_backbone_without_labels(ff):
    runs = []
    for closed_rate in (0.2, 0.0):  # other noisy labels, same images and seeds
        snap = Snap()
        run_dir = ff.run(ff.stage("ssl", 3, ff.comp("ssl_pretrain", SSL)),
                         noise=f'{{ closed = "symmetric", closed_rate = {closed_rate} }}',
                         observers=[snap], name=f"run{closed_rate}")
        runs.append((snap, run_dir))
    (snap, run_dir), (other, _) = runs
    head = snap.head
    assert isinstance(head, torch.nn.Sequential)
    assert head[0].in_features == 16 and head[2].out_features == 16
    # the trunk and the head trained; the classifier got no gradient at all
    assert not torch.equal(snap.start["trunk.1.weight"], snap.end["trunk.1.weight"])
    assert not torch.equal(snap.start[f"{HEAD}.0.weight"], snap.end[f"{HEAD}.0.weight"])
    assert torch.equal(snap.start["classifier.weight"], snap.end["classifier.weight"])
    # the labels played no part: bit-identical weights with other noisy labels
    for key in snap.end:
        assert torch.equal(snap.end[key], other.end[key]), key
    with kdcore.History(run_dir) as h:
        loss = h.metric("train/student/ssl_pretrain")
        assert loss[-1] < loss[0]
    saved = torch.load(run_dir / "models" / "student.pt", weights_only=True)
    assert any(k.startswith(f"{HEAD}.") for k in saved)  # the head travels with the weights


@pytest.mark.slow
def test_ssl_on_images_with_a_cnn(ff):
    data = ('{ base = "digits", base_params = { flatten = false }, open_classes = [8, 9], '
            'open_rate = 0.2 }')
    stages = ff.stage("ssl", 1, ff.comp("ssl_pretrain", '{ crop_padding = 1, flip = false, '
                                                        'projection_dim = 8 }'))
    snap = Snap()
    run_dir = ff.run(stages, data=data, observers=[snap],
                     overrides=('models.student.arch=cnn',
                                'models.student.params={ channels = [4], hidden = 16 }'))
    assert snap.head[0].in_features == 16
    with kdcore.History(run_dir) as h:
        assert math.isfinite(h.metric("train/student/ssl_pretrain")[0])


def test_head_shape_clash_is_a_clear_error(ff):
    stages = (ff.stage("a", 1, ff.comp("ssl_pretrain", "{ projection_dim = 8 }"))
              + ff.stage("b", 1, ff.comp("ssl_pretrain", "{ projection_dim = 16 }")))
    with pytest.raises(kdcore.RecipeError, match="already has a projection head"):
        ff.dry(stages)  # adapt_models, as the run is set up


def test_views_draw_from_the_components_own_generator():
    """Two views of the same inputs differ; the same seed gives the same views, and torch's
    global random stream is not used."""
    x = torch.rand(30, 6)
    y = torch.randint(0, 3, (30,))
    params = {"noise_std": 0.1, "drop_prob": 0.2, "projection_dim": 4}

    def views(seed):
        h = harness(SSLPretrain, params, x=x, noisy_label=y, seed=seed,
                    models={"student": Net()})
        h.component.adapt_models(h.ctx)
        h.setup()
        state = torch.random.get_rng_state()
        out = h.component.view(h.ctx, x), h.component.view(h.ctx, x)
        assert torch.equal(torch.random.get_rng_state(), state)
        return out

    a1, a2 = views(0)
    b1, b2 = views(0)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, a2)
    assert not torch.equal(views(1)[0], a1)


def test_head_is_added_in_place_and_trained_by_the_loss():
    x, y = torch.rand(12, 6), torch.randint(0, 3, (12,))
    model = Net()
    h = harness(SSLPretrain, {"projection_dim": 4}, x=x, noisy_label=y,
                models={"student": model})
    h.component.adapt_models(h.ctx)
    assert h.ctx.models["student"] is model and isinstance(getattr(model, HEAD), torch.nn.Module)
    h.component.adapt_models(h.ctx)  # again on resume: the same head, kept
    h.setup()
    loss = h.component.transfer(h.ctx, h.batch(torch.arange(12)))["student"]
    assert loss.shape == (12,)
    loss.mean().backward()
    assert getattr(model, HEAD)[0].weight.grad is not None
    assert model.trunk[0].weight.grad is not None and model.classifier.weight.grad is None


def Net() -> TinyNet:  # noqa: N802 (a model class in all but name)
    return TinyNet(6, 3, 8)
