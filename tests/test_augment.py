"""Batch augmentations: shapes, determinism, and what each one does to the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore.config import bind_params
from kdcore.data.augment import AUGMENTATIONS, MAX_CUTOUT, MAX_PADDING, cutout, random_crop_flip
from kdcore.errors import KdcoreError, RecipeError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 16, size: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=_gen(99))


def test_registry_names() -> None:
    assert AUGMENTATIONS == {"crop_flip": random_crop_flip, "cutout": cutout}


@pytest.mark.parametrize(
    ("fn", "params"), [(random_crop_flip, {"padding": 2}), (cutout, {"size": 3})]
)
def test_shape_dtype_and_determinism(fn, params: dict) -> None:
    x = _batch()
    out = fn(x, _gen(1), **params)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, fn(x, _gen(1), **params))
    assert not torch.equal(out, fn(x, _gen(2), **params))
    assert not torch.equal(out, x)


def test_crop_flip_without_padding_or_flip_is_identity() -> None:
    x = _batch()
    assert torch.equal(random_crop_flip(x, _gen(), padding=0, flip=False), x)


def test_flip_only_mirrors_some_images() -> None:
    x = _batch(n=64)
    out = random_crop_flip(x, _gen(), padding=0, flip=True)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 10 < int(mirrored.sum()) < 54


def _window(image: torch.Tensor, top: int, left: int, side: int, flipped: bool) -> torch.Tensor:
    window = image[:, top : top + side, left : left + side]
    return window.flip(-1) if flipped else window


def test_every_crop_is_a_window_of_the_zero_padded_image() -> None:
    x, padding = _batch(n=32, size=6), 2
    out = random_crop_flip(x, _gen(3), padding=padding, flip=True)
    padded = F.pad(x, (padding,) * 4)
    offsets_seen = set()
    for i in range(x.shape[0]):
        matches = [
            (top, left, flipped)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            for flipped in (False, True)
            if torch.equal(out[i], _window(padded[i], top, left, 6, flipped))
        ]
        assert matches, f"image {i} is not a crop of its padded input"
        offsets_seen.add(matches[0][:2])
    assert len(offsets_seen) > 5  # offsets really vary


def test_cutout_zeroes_one_square_per_image() -> None:
    size, side = 4, 16
    x = torch.ones(300, 3, side, side)
    out = cutout(x, _gen(), size=size)
    holes = out == 0
    # The hole goes through every channel.
    assert torch.equal(holes[:, 0], holes[:, 1]) and torch.equal(holes[:, 0], holes[:, 2])
    interior = 0
    for hole in holes[:, 0]:
        rows = hole.any(1).nonzero().flatten()
        cols = hole.any(0).nonzero().flatten()
        assert rows.numel() and cols.numel()  # the centre is always inside the image
        box = hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert bool(box.all()) and int(hole.sum()) == box.numel()  # one solid rectangle
        assert box.shape[0] <= size and box.shape[1] <= size
        touches_border = rows[0] == 0 or cols[0] == 0 or rows[-1] == side - 1
        touches_border = touches_border or cols[-1] == side - 1
        if not touches_border:
            interior += 1
            assert box.shape == (size, size)
    assert interior > 50


def test_cutout_odd_size_interior_hole() -> None:
    out = cutout(torch.ones(200, 1, 12, 12), _gen(5), size=3)
    sizes = (out == 0).flatten(1).sum(1)
    # 3x3 inside the image; a centre in a corner leaves a 2x2 hole.
    assert int(sizes.max()) == 9 and int(sizes.min()) == 4


def test_cutout_size_zero_changes_nothing() -> None:
    x = _batch()
    assert torch.equal(cutout(x, _gen(), size=0), x)


def test_flat_or_integer_input_is_refused() -> None:
    with pytest.raises(KdcoreError, match="float image batches"):
        random_crop_flip(torch.randn(4, 64), _gen())
    with pytest.raises(KdcoreError, match="float image batches"):
        cutout(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _gen(), size=2)


@pytest.mark.parametrize(
    ("name", "params", "key", "message"),
    [
        ("cutout", {}, "size", "missing required key 'size'"),
        ("cutout", {"size": -1}, "size", r"'size' must be in \[0, 1024\], got -1"),
        ("cutout", {"size": MAX_CUTOUT + 1}, "size", r"must be in \[0, 1024\]"),
        ("cutout", {"size": 2.5}, "size", "expected an integer"),
        ("cutout", {"size": 4, "sigma": 1}, "sigma", "unknown key 'sigma'"),
        ("crop_flip", {"padding": -2}, "padding", r"must be in \[0, 64\]"),
        ("crop_flip", {"padding": MAX_PADDING + 1}, "padding", r"must be in \[0, 64\]"),
        ("crop_flip", {"flip": "yes"}, "flip", "expected true or false"),
    ],
)
def test_bad_parameters_are_refused_when_bound(name, params, key, message) -> None:
    with pytest.raises(RecipeError, match=message) as err:
        bind_params(AUGMENTATIONS[name], params, "data.augment[0].params")
    assert err.value.key == f"data.augment[0].params.{key}"


def test_bounds_themselves_bind() -> None:
    assert bind_params(cutout, {"size": 0}) == {"size": 0}
    assert bind_params(random_crop_flip, {"padding": MAX_PADDING}) == {"padding": MAX_PADDING}


@pytest.mark.parametrize(
    ("fn", "params", "message"),
    [(cutout, {"size": -1}, "cutout: 'size' must be in"),
     (random_crop_flip, {"padding": -1}, "crop_flip: 'padding' must be in")],
)
def test_direct_calls_check_their_parameters_too(fn, params, message) -> None:
    with pytest.raises(KdcoreError, match=message):
        fn(_batch(), _gen(), **params)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 2), (5, 7), (9, 3)])
def test_a_padding_with_which_a_crop_could_miss_the_image_is_refused(height, width):
    """On 1x1 images crop_flip's default padding of 4 cut 80 of 81 windows from the padding
    alone, and a ResNet's loss diverged; a padding below the smaller side always keeps some of
    the image."""
    side = min(height, width)
    ones = torch.ones(256, 1, height, width)
    if side > 1:
        kept = random_crop_flip(ones, _gen(), padding=side - 1)
        assert bool((kept.flatten(1) != 0).any(1).all())
    # one padding more, and the window at offset (0, 0) is padding alone
    padded = np.pad(np.ones((height, width)), side)
    assert not padded[:height, :width].any()
    with pytest.raises(KdcoreError) as info:
        random_crop_flip(ones, _gen(), padding=side)
    assert str(info.value) == (
        f"crop_flip: padding {side} is not below the images' smaller side ({height}x{width}): "
        f"some crops would hold no pixel of the image (on 1x1 images a ResNet's loss "
        f"diverged); use a padding of at most {side - 1}")


def test_check_says_an_augmentations_refusal_of_the_data_where_the_recipe_sets_it(tmp_path):
    from click.testing import CliRunner

    from kdcore.cli import main

    images = {"params": {"flatten": False}}
    fine = _augmented_recipe(tmp_path, {"name": "crop_flip", "params": {"padding": 7}},
                             data=images)
    assert CliRunner().invoke(main, ["check", str(fine)]).exit_code == 0
    for augment, said in (
            ({"name": "crop_flip", "params": {"padding": 8}}, "crop_flip: padding 8 is not "
                                                               "below the images' smaller side"),
            ({"name": "cutout", "params": {"size": 2}}, "cutout augments float image batches")):
        recipe = _augmented_recipe(tmp_path, augment, data=None if "size" in augment["params"]
                                   else images)
        result = CliRunner().invoke(main, ["check", str(recipe)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith(
            f"kdcore: error: {recipe}: data.augment[0]: {said}"), result.output


# -- the documented draws, one by one (a seed gives the same batches in every version) --------


def _np_crop_flip(x: np.ndarray, gen: torch.Generator, padding: int, flip: bool) -> np.ndarray:
    """The docstring's algorithm: per image a top and a left offset in 0..2 * padding (all
    tops first, then all lefts), then a mirror draw below 1/2, on the zero-padded image."""
    n, _, h, w = x.shape
    top = torch.randint(0, 2 * padding + 1, (n,), generator=gen).numpy()
    left = torch.randint(0, 2 * padding + 1, (n,), generator=gen).numpy()
    mirror = (torch.rand(n, generator=gen).numpy() < 0.5) if flip else np.zeros(n, bool)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.stack([padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w] for i in range(n)])
    out[mirror] = out[mirror][..., ::-1]
    return out


def _np_cutout(x: np.ndarray, gen: torch.Generator, size: int) -> np.ndarray:
    """A ``size`` square whose centre (cy, cx) is uniform; rows cy - size // 2 on, clipped."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=gen).numpy()
    cx = torch.randint(0, w, (n,), generator=gen).numpy()
    out = x.copy()
    for i in range(n):
        top, left = cy[i] - size // 2, cx[i] - size // 2
        out[i, :, max(top, 0):max(top + size, 0), max(left, 0):max(left + size, 0)] = 0
    return out


@pytest.mark.parametrize(("padding", "flip"), [(2, True), (3, False), (0, True)])
def test_crop_flip_follows_its_documented_draws(padding, flip):
    x = torch.randn(12, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    got = random_crop_flip(x, torch.Generator().manual_seed(4), padding=padding, flip=flip)
    want = _np_crop_flip(x.numpy(), torch.Generator().manual_seed(4), padding, flip)
    np.testing.assert_array_equal(got.numpy(), want)


def test_crop_flip_defaults_are_cifars_padding_4_and_a_flip():
    x = torch.randn(12, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    got = random_crop_flip(x, torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(
        got.numpy(), _np_crop_flip(x.numpy(), torch.Generator().manual_seed(5), 4, True))


@pytest.mark.parametrize("size", [1, 4, 5, 9])
def test_cutout_follows_its_documented_draws(size):
    x = torch.randn(16, 2, 6, 8, generator=torch.Generator().manual_seed(0)) + 5.0
    got = cutout(x, torch.Generator().manual_seed(6), size=size)
    want = _np_cutout(x.numpy(), torch.Generator().manual_seed(6), size)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("fn", [random_crop_flip, cutout])
def test_the_refusal_names_the_augmentation(fn):
    name = "crop_flip" if fn is random_crop_flip else "cutout"
    with pytest.raises(KdcoreError, match=rf"^{name} augments float image batches \(N, C, H, W\);"
                       r" got torch.float32 \(4, 3\) \(flat inputs cannot be cropped; drop "
                       r"data.augment or use images\)$"):
        fn(torch.zeros(4, 3), torch.Generator(), **({"size": 2} if fn is cutout else {}))


# -- a plugin's augmentation, checked where a run is set up ---------------------------------------

class _Calls:
    """Counts an augmentation's calls: the set-up's probe is the first."""

    def __init__(self) -> None:
        self.count = 0


CALLS = _Calls()


def _misbehaves_after_the_probe(x, generator):
    CALLS.count += 1
    return x if CALLS.count < 2 else x[:1]


def _global_noise(x, generator):
    """Draws from torch's global generator (as a careless third-party augmentation may)."""
    return x + 1e-3 * torch.rand(x.shape)


PLUGIN_AUGMENTATIONS = {
    "gives_none": lambda x, generator: None,
    "drops_rows": lambda x, generator: x[:1],
    "float64": lambda x, generator: x.double(),
    "ndarray": lambda x, generator: x.numpy(),
    "needs_images": lambda x, generator: x[:, :, 1:],
    "misbehaves_later": _misbehaves_after_the_probe,
    "global_noise": _global_noise,
    "identity": lambda x, generator: x,
    "divides_by_0": lambda x, generator: x / 0,
    "says_why": lambda x, generator: (_ for _ in ()).throw(ValueError("needs colour images.")),
}


class _AugmentPlugin:
    from kdcore import hookimpl

    @hookimpl
    def kdcore_add_augmentations(self):
        return PLUGIN_AUGMENTATIONS


AUGMENT_PLUGIN = _AugmentPlugin()


def _augmented_recipe(tmp_path, *names, data=None):
    from kdcore.testing import stage, tiny_recipe, write_recipe

    augment = [{"name": n} if isinstance(n, str) else n for n in names]
    recipe = tiny_recipe(stage("student", 1, ["student"], {"use": "ce"}), train_subset=120,
                         data={"augment": augment, **(data or {})})
    del recipe["models"]["teacher"]
    return write_recipe(recipe, tmp_path / ("-".join(a["name"] for a in augment) + ".toml"))


@pytest.mark.parametrize(("name", "message"), [
    ("gives_none", "augmentation 'gives_none' returned NoneType for a batch of torch.float32 "
                   "(2, 64) on cpu"),
    ("drops_rows", "augmentation 'drops_rows' returned torch.float32 (1, 64) on cpu for a batch "
                   "of torch.float32 (2, 64) on cpu"),
    ("float64", "augmentation 'float64' returned torch.float64 (2, 64) on cpu for a batch of "
                "torch.float32 (2, 64) on cpu"),
    ("ndarray", "augmentation 'ndarray' returned ndarray for a batch of torch.float32 (2, 64) "
                "on cpu"),
    ("needs_images", "augmentation 'needs_images' cannot take the data's inputs (torch.float32 "
                     "(2, 64)): IndexError: too many indices for tensor of dimension 2"),
    ("divides_by_0", "augmentation 'divides_by_0' made values that are not finite (NaN or "
                     "infinite) of finite inputs (torch.float32 (2, 64))"),
])
def test_an_augmentation_that_cannot_give_a_batch_of_its_input_is_refused_at_set_up(
        tmp_path, name, message):
    """Each passed `kdcore check` and stopped the first batch, blamed on the loss term 'ce'
    (exit 1: "component 'ce' (ce) in transfer raised AttributeError"); a third-party
    augmentation returns a batch of its input's shape, dtype and device."""
    from click.testing import CliRunner

    from kdcore.cli import main

    recipe = _augmented_recipe(tmp_path, name)
    plugin = ["--plugin", "tests.test_augment:AUGMENT_PLUGIN"]
    for command in (["check", str(recipe)],
                    ["run", str(recipe), "--out", str(tmp_path / "r"), "--quiet"]):
        result = CliRunner().invoke(main, [command[0], *plugin, *command[1:]])
        assert result.exit_code == 2, result.output
        line = result.output.strip().splitlines()[-1]
        assert line.startswith(f"kdcore: error: {recipe}: data.augment[0].name: {message}"), line
        assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "history.h5").exists()  # refused before the history began


def _check(recipe):
    from click.testing import CliRunner

    from kdcore.cli import main

    return CliRunner().invoke(main, ["check", "--plugin", "tests.test_augment:AUGMENT_PLUGIN",
                                     str(recipe)])


def test_the_probe_passes_each_augmentation_the_last_ones_batch_and_names_the_one_that_fails(
        tmp_path):
    result = _check(_augmented_recipe(tmp_path, "identity", "says_why"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith(
        "data.augment[1].name: augmentation 'says_why' cannot take the data's inputs "
        "(torch.float32 (2, 64)): ValueError: needs colour images"), result.output
    result = _check(_augmented_recipe(tmp_path, "identity", "drops_rows"))
    assert result.output.strip().endswith(
        "data.augment[1].name: augmentation 'drops_rows' returned torch.float32 (1, 64) on cpu "
        "for a batch of torch.float32 (2, 64) on cpu; an augmentation returns a batch of the "
        "same shape, dtype and device"), result.output


def test_the_probe_runs_the_built_in_augmentations_with_their_generator_and_parameters(
        tmp_path):
    """Images of an npz file through crop_flip and cutout, as the training loop calls them."""
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=rng.integers(0, 256, (120, 3, 8, 8), dtype=np.uint8),
             y_train=np.arange(120) % 4)
    recipe = _augmented_recipe(tmp_path, "crop_flip", {"name": "cutout", "params": {"size": 3}},
                               data={"dataset": "npz", "params": {"path": str(path)}})
    result = _check(recipe)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_an_augmentation_that_misbehaves_in_training_stops_the_run_naming_it(tmp_path):
    import kdcore

    CALLS.count = 0
    with pytest.raises(RecipeError) as err:
        kdcore.run(_augmented_recipe(tmp_path, "misbehaves_later"), out=tmp_path / "r",
                   plugins=[AUGMENT_PLUGIN])
    assert CALLS.count == 2  # the set-up's probe, then the first batch
    assert str(err.value).endswith(
        "data.augment[0].name: augmentation 'misbehaves_later' returned torch.float32 (1, 64) "
        "on cpu for a batch of torch.float32 (64, 64) on cpu; an augmentation returns a batch "
        "of the same shape, dtype and device")


@pytest.mark.slow
def test_the_set_up_probe_leaves_torchs_global_generator_as_it_was(tmp_path, monkeypatch):
    """An augmentation that draws from torch's global generator trains on the same draws
    with the probe as without it."""
    import kdcore
    from kdcore.history import History

    recipe = _augmented_recipe(tmp_path, "global_noise")
    kdcore.run(recipe, out=tmp_path / "probed", plugins=[AUGMENT_PLUGIN])
    monkeypatch.setattr("kdcore.engine.check_augmentations", lambda run: None)
    kdcore.run(recipe, out=tmp_path / "unprobed", plugins=[AUGMENT_PLUGIN])
    with History(tmp_path / "probed") as a, History(tmp_path / "unprobed") as b:
        assert np.array_equal(a.column("logits/student"), b.column("logits/student"))
