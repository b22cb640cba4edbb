"""Noise models: realised rates, conventions, validation and determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.config import bind_params
from kdcore.data.base import NoiseContext
from kdcore.data.loaders import cifar_n as cifar_n_loader
from kdcore.data.noise import (
    NOISE_MODELS,
    cifar_n,
    instance_dependent,
    pair_flip,
    realised_transition,
    symmetric,
    transition_matrix,
)
from kdcore.errors import KdcoreError, RecipeError


def _ctx(n: int, num_classes: int = 10, seed: int = 0, x: torch.Tensor | None = None):
    labels = torch.arange(n) % num_classes
    return NoiseContext(labels, num_classes, torch.Generator().manual_seed(seed), x=x)


def test_registry_names() -> None:
    expected = {"none", "symmetric", "pair_flip", "instance_dependent", "transition_matrix"}
    assert set(NOISE_MODELS) == expected | {"cifar_n", "label_file", "class_map"}


def test_none_returns_a_copy() -> None:
    ctx = _ctx(50)
    out = NOISE_MODELS["none"](ctx)
    assert torch.equal(out, ctx.labels) and out.data_ptr() != ctx.labels.data_ptr()


@pytest.mark.parametrize(("n", "rate"), [(1000, 0.3), (999, 0.45), (37, 0.2), (100, 1.0)])
def test_symmetric_flips_exactly_the_rate(n: int, rate: float) -> None:
    ctx = _ctx(n)
    noisy = symmetric(ctx, rate=rate)
    assert noisy.dtype == torch.int64 and noisy.shape == ctx.labels.shape
    assert int((noisy != ctx.labels).sum()) == round(rate * n)
    assert int(noisy.min()) >= 0 and int(noisy.max()) < 10


def test_symmetric_zero_rate_changes_nothing() -> None:
    ctx = _ctx(200)
    assert torch.equal(symmetric(ctx, rate=0.0), ctx.labels)


def test_symmetric_flips_are_uniform_over_other_classes() -> None:
    ctx = _ctx(20000)
    table = realised_transition(ctx.labels, symmetric(ctx, rate=0.4), 10)
    off_diagonal = table[~torch.eye(10, dtype=torch.bool)]
    assert torch.allclose(table.diagonal(), torch.full((10,), 0.6, dtype=torch.float64), atol=0.03)
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, 0.4 / 9), atol=0.015)


def test_symmetric_include_true_may_keep_the_label() -> None:
    n, rate = 20000, 0.5
    ctx = _ctx(n)
    noisy = symmetric(ctx, rate=rate, include_true=True)
    changed = int((noisy != ctx.labels).sum())
    # A redrawn label stays the same with probability 1/C: the realised rate is rate*(C-1)/C.
    assert changed <= round(rate * n)
    assert abs(changed / n - rate * 9 / 10) < 0.01
    table = realised_transition(ctx.labels, noisy, 10)
    assert torch.allclose(table.diagonal(), torch.full((10,), 0.55, dtype=torch.float64), atol=0.03)


@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan")])
def test_symmetric_rejects_bad_rate_when_called_directly(rate: float) -> None:
    with pytest.raises(KdcoreError, match=r"symmetric noise: 'rate' must be in \[0, 1\]"):
        symmetric(_ctx(10), rate=rate)


@pytest.mark.parametrize(
    ("name", "params", "key", "message"),
    [
        ("symmetric", {"rate": 1.5}, "rate", r"'rate' must be in \[0, 1\], got 1.5"),
        ("symmetric", {"rate": -0.1}, "rate", r"must be in \[0, 1\]"),
        ("pair_flip", {"rate": 2}, "rate", r"must be in \[0, 1\]"),
        ("pair_flip", {"rate": 0.2, "mapping": "prev"}, "mapping", "expected 'next' or 'random'"),
        ("instance_dependent", {"rate": 0.2, "std": -1.0}, "std", "must be >= 0"),
        ("instance_dependent", {"rate": 0.2, "std": float("inf")}, "std", "finite"),
        ("transition_matrix", {"matrix": []}, "matrix", "non-empty table"),
        ("transition_matrix", {"matrix": [[1.0, 0.0]]}, "matrix", "must be square"),
        ("transition_matrix", {"matrix": [[0.5, 0.6], [0.0, 1.0]]}, "matrix", "row 0 sums to 1.1"),
        ("transition_matrix", {"matrix": [[2.0, -1.0], [0.0, 1.0]]}, "matrix", "negative"),
        ("transition_matrix", {"matrix": [[float("inf"), 0], [0, 1]]}, "matrix", "non-finite"),
        ("transition_matrix", {}, "matrix", "missing required key 'matrix'"),
        ("symmetric", {}, "rate", "missing required key 'rate'"),
    ],
)
def test_bad_parameters_are_refused_before_any_data(name, params, key, message) -> None:
    """``kdcore check`` binds the recipe's parameters without loading or corrupting data."""
    with pytest.raises(RecipeError, match=message) as err:
        bind_params(NOISE_MODELS[name], params, "data.noise.params")
    assert err.value.key == f"data.noise.params.{key}"


def test_good_parameters_bind_unchanged() -> None:
    matrix = [[0.9, 0.1], [0.2, 0.8]]
    assert bind_params(transition_matrix, {"matrix": matrix}) == {"matrix": matrix}
    assert bind_params(instance_dependent, {"rate": 0, "std": 0}) == {"rate": 0.0, "std": 0.0}


def test_pair_flip_next() -> None:
    ctx = _ctx(1000)
    noisy = pair_flip(ctx, rate=0.25)
    changed = noisy != ctx.labels
    assert int(changed.sum()) == 250
    assert torch.equal(noisy[changed], (ctx.labels[changed] + 1) % 10)


def test_pair_flip_random_mapping_is_one_other_class_per_class() -> None:
    ctx = _ctx(2000)
    noisy = pair_flip(ctx, rate=0.4, mapping="random")
    changed = noisy != ctx.labels
    assert int(changed.sum()) == 800
    for c in range(10):
        targets = torch.unique(noisy[changed & (ctx.labels == c)])
        assert targets.numel() == 1 and int(targets) != c
    with pytest.raises(KdcoreError, match="mapping must be"):
        pair_flip(ctx, rate=0.4, mapping="previous")


def test_transition_matrix_samples_rows() -> None:
    ctx = _ctx(20000, num_classes=2)
    matrix = [[0.8, 0.2], [0.3, 0.7]]
    table = realised_transition(ctx.labels, transition_matrix(ctx, matrix=matrix), 2)
    assert torch.allclose(table, torch.tensor(matrix, dtype=torch.float64), atol=0.02)
    ctx = _ctx(30, num_classes=3)
    everything_to_zero = [[1.0, 0.0, 0.0]] * 3
    assert torch.equal(transition_matrix(ctx, matrix=everything_to_zero), torch.zeros(30).long())


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1.0, 0.0], [0.0, 1.0]], "is 2x2, expected 3x3"),
        ([[1.0, 0.0, 0.0], [0.5, 0.6, -0.1], [0.0, 0.0, 1.0]], "row 1 has a negative"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.2]], "row 2 sums to 0.6"),
        ([[1.0, 0.0], [0.0, 1.0], [0.5]], "must be square"),
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, float("nan"), 1.0]], "row 2 has a negative"),
    ],
)
def test_transition_matrix_validation(matrix: list[list[float]], message: str) -> None:
    with pytest.raises(KdcoreError, match=message):
        transition_matrix(_ctx(9, num_classes=3), matrix=matrix)


def test_transition_matrix_tolerates_rounding() -> None:
    third = 1.0 / 3.0 + 1e-8
    out = transition_matrix(_ctx(9, num_classes=3), matrix=[[third, third, 1 / 3]] * 3)
    assert out.shape == (9,)


def _inputs(n: int, d: int = 20, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_instance_dependent_mean_rate() -> None:
    ctx = _ctx(5000, x=_inputs(5000))
    noisy = instance_dependent(ctx, rate=0.3)
    assert abs(float((noisy != ctx.labels).double().mean()) - 0.3) < 0.03


def test_instance_dependent_with_zero_std_gives_every_sample_the_rate() -> None:
    ctx = _ctx(5000, x=_inputs(5000))
    assert torch.equal(instance_dependent(ctx, rate=0.0, std=0.0), ctx.labels)
    assert bool((instance_dependent(ctx, rate=1.0, std=0.0) != ctx.labels).all())
    noisy = instance_dependent(ctx, rate=0.3, std=0.0)
    assert abs(float((noisy != ctx.labels).double().mean()) - 0.3) < 0.03


def test_instance_dependent_depends_on_the_input() -> None:
    # Samples of one class with the same input share one flip distribution, peaked on the class
    # their projection favours; with different inputs the flips spread over the other classes.
    def largest_flip_share(x: torch.Tensor) -> float:
        ctx = _ctx(4000, x=x)
        table = realised_transition(ctx.labels, instance_dependent(ctx, rate=0.5), 10)
        return float(table[0, 1:].max() / table[0, 1:].sum())

    assert largest_flip_share(_inputs(1, seed=1).expand(4000, 20).clone()) > 0.4
    assert largest_flip_share(_inputs(4000)) < 0.3


def test_instance_dependent_accepts_uint8_images_and_needs_inputs() -> None:
    images = torch.randint(0, 256, (300, 1, 4, 4), generator=torch.Generator().manual_seed(2))
    ctx = _ctx(300, x=images.to(torch.uint8))
    assert instance_dependent(ctx, rate=0.2).shape == (300,)
    with pytest.raises(KdcoreError, match="needs the inputs"):
        instance_dependent(_ctx(10), rate=0.2)
    with pytest.raises(KdcoreError, match="must match"):
        instance_dependent(_ctx(10, x=_inputs(9)), rate=0.2)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("symmetric", {"rate": 0.4}),
        ("symmetric", {"rate": 0.4, "include_true": True}),
        ("pair_flip", {"rate": 0.3, "mapping": "random"}),
        ("instance_dependent", {"rate": 0.3}),
        ("transition_matrix", {"matrix": [[0.6] + [0.4 / 9] * 9] * 10}),
    ],
)
def test_deterministic_given_the_generator_only(name: str, params: dict) -> None:
    fn = NOISE_MODELS[name]
    torch.manual_seed(1)
    first = fn(_ctx(500, seed=7, x=_inputs(500)), **params)
    torch.manual_seed(2)  # the global RNG must not matter
    second = fn(_ctx(500, seed=7, x=_inputs(500)), **params)
    other_seed = fn(_ctx(500, seed=8, x=_inputs(500)), **params)
    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("none", {}),
        ("symmetric", {"rate": 0.4}),
        ("pair_flip", {"rate": 0.3, "mapping": "random"}),
        ("instance_dependent", {"rate": 0.3}),
        ("instance_dependent", {"rate": 0.3, "std": 0.0}),
        ("transition_matrix", {"matrix": [[0.6] + [0.4 / 9] * 9] * 10}),
        ("class_map", {"rate": 0.5, "mapping": [[1, 2]]}),
    ],
)
@pytest.mark.parametrize("shape", [(0, 8), (0, 1, 4, 4)])
def test_an_empty_split_gets_no_labels(name: str, params: dict, shape: tuple[int, ...]) -> None:
    # the validation split of data.val_fraction = 0: instance_dependent had stopped check's
    # set-up ("cannot reshape tensor of 0 elements into shape [0, -1]")
    noisy = NOISE_MODELS[name](_ctx(0, x=torch.zeros(shape, dtype=torch.uint8)), **params)
    assert noisy.dtype == torch.int64 and noisy.shape == (0,)


def test_realised_transition() -> None:
    clean = torch.tensor([0, 0, 0, 0, 1, 1, 3])
    noisy = torch.tensor([0, 0, 0, 2, 1, 0, 3])
    table = realised_transition(clean, noisy, 4)
    assert table.dtype == torch.float64 and table.shape == (4, 4)
    assert table[0].tolist() == [0.75, 0.0, 0.25, 0.0]
    assert table[1].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert table[2].tolist() == [0.0] * 4  # no class-2 sample
    present = torch.tensor([0, 1, 3])
    assert torch.allclose(table[present].sum(dim=1), torch.ones(3, dtype=torch.float64))


# -- CIFAR-N ------------------------------------------------------------------------------------


def _fake_release(path: Path) -> None:
    """Ten samples per class; half of each class's worse labels name the next class."""
    clean = np.repeat(np.arange(10), 10)
    worse = np.where(np.tile(np.arange(10), 10) < 5, clean, (clean + 1) % 10)
    torch.save({"clean_label": clean, "worse_label": worse, "aggre_label": clean.copy()}, path)


def test_cifar_n_applies_the_estimated_matrix(tmp_path: Path) -> None:
    path = tmp_path / "CIFAR-10_human.pt"
    _fake_release(path)
    ctx = _ctx(10000)
    noisy = cifar_n(ctx, path=str(path))
    changed = noisy != ctx.labels
    assert torch.equal(noisy[changed], (ctx.labels[changed] + 1) % 10)
    assert abs(float(changed.double().mean()) - 0.5) < 0.03
    assert torch.equal(cifar_n(ctx, path=str(tmp_path), label="aggre_label"), ctx.labels)


def test_cifar_n_errors(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "CIFAR-10_human.pt"
    _fake_release(path)
    with pytest.raises(KdcoreError, match="CIFAR-10N annotation of 10 classes, but the dataset "
                       "has 5 classes"):
        cifar_n(_ctx(20, num_classes=5), path=str(path))
    with pytest.raises(KdcoreError, match="did you mean 'worse_label'"):
        cifar_n(_ctx(20), path=str(path), label="worst_label")
    with pytest.raises(KdcoreError, match="not found"):
        cifar_n(_ctx(20), path=str(tmp_path / "missing.pt"))
    monkeypatch.setattr(cifar_n_loader, "find_cifar_n_file", lambda name: None)
    with pytest.raises(KdcoreError, match=r"CIFAR-10_human.pt .*kdcore\[cifar-n\]"):
        cifar_n(_ctx(20))
    with pytest.raises(KdcoreError, match=r"CIFAR-100_human.pt .*kdcore\[cifar-n\]"):
        cifar_n(_ctx(20, num_classes=100), label="noisy_label")


def test_a_noise_context_gives_flat_int64_labels_and_shapes_a_result_back() -> None:
    """What a third-party noise model uses (docs/plugins.md): the labels flat and int64, and
    its result with the labels' shape, as int64 whatever it computed in."""
    labels = torch.tensor([[0, 2, 1], [3, 1, 0]], dtype=torch.int32)
    ctx = NoiseContext(labels, 4, torch.Generator())
    flat = ctx.flat_labels()
    assert flat.dtype == torch.int64 and flat.tolist() == [0, 2, 1, 3, 1, 0]
    back = ctx.shaped_as_labels(torch.tensor([1, 1, 2, 0, 3, 3], dtype=torch.int16))
    assert back.dtype == torch.int64 and back.tolist() == [[1, 1, 2], [0, 3, 3]]
    with pytest.raises(KdcoreError) as err:
        NoiseContext(labels, 3, torch.Generator()).flat_labels()
    assert str(err.value) == "labels must lie in 0..2 for noise to be applied"
