"""What every image loader shares (kdcore.data.images): reading one file as RGB of one size,
the per-channel statistics that normalise a split, and the rows those statistics read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.data.images import STATS_IMAGES, channel_stats, read_image, sample_rows


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_any_pil_mode_is_read_as_rgb_uint8_of_the_asked_size(tmp_path, mode):
    # (an adaptive palette holds the colour exactly; the default one would dither it)
    extra = {"palette": Image.Palette.ADAPTIVE} if mode == "P" else {}
    Image.new("RGB", (7, 5), (200, 100, 50)).convert(mode, **extra).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png", 4)
    assert image.shape == (3, 4, 4) and image.dtype == np.uint8
    want = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))[0, 0]
    assert (image[:, 0, 0] == want).all() and (image == image[:, :1, :1]).all()  # one colour


@pytest.mark.parametrize(("mode", "suffix"), [("I;16", ".png"), ("I;16", ".tif"),
                                              ("I", ".tif")])
def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(tmp_path, mode, suffix):
    """PIL's convert("RGB") clipped every value past 255: a 16-bit PNG came out white."""
    values = np.array([[0, 128, 257, 385], [386, 32767, 32768, 65278],
                       [65279, 65407, 65408, 65535], [1000, 2000, 40000, 60000]])
    image = Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))
    image.save(tmp_path / f"a{suffix}")
    assert Image.open(tmp_path / f"a{suffix}").mode == mode
    read = read_image(tmp_path / f"a{suffix}", 4)  # its own size: no resampling
    want = np.rint(values / 257).astype(np.uint8)  # 65535 / 257 = 255
    assert want[0].tolist() == [0, 0, 1, 1] and want[2].tolist() == [254, 255, 255, 255]
    assert all(np.array_equal(read[c], want) for c in range(3))


@pytest.mark.parametrize(("values", "mode", "said"), [
    (np.full((3, 3), 0.5, np.float32), "F", "its pixels are floating point (mode F), which "
     "have no one scale to 8 bits; save 8- or 16-bit images, or give the arrays through the npz "
     "dataset"),
    (np.full((3, 3), 65536, np.int32), "I", "its pixels run from 65536 to 65536 (32-bit "
     "integers, mode I); save 8- or 16-bit images"),
    (np.full((3, 3), -1, np.int32), "I", "its pixels run from -1 to -1 (32-bit integers, mode "
     "I); save 8- or 16-bit images"),
])
def test_an_image_of_floats_or_32_bit_integers_is_refused(tmp_path, values, mode, said):
    from kdcore.errors import KdcoreError

    Image.fromarray(values).save(tmp_path / "a.tif")
    assert Image.open(tmp_path / "a.tif").mode == mode
    with pytest.raises(KdcoreError) as info:
        read_image(tmp_path / "a.tif", 3)
    assert str(info.value) == f"cannot read image {tmp_path / 'a.tif'}: {said}"


def test_resizing_is_bilinear_and_the_channels_come_first(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    want = np.asarray(Image.fromarray(pixels).resize((5, 5), Image.Resampling.BILINEAR))
    assert np.array_equal(read_image(tmp_path / "a.png", 5), want.transpose(2, 0, 1))
    nearest = np.asarray(Image.fromarray(pixels).resize((5, 5), Image.Resampling.NEAREST))
    assert not np.array_equal(want, nearest)  # (so the comparison above tells them apart)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n broken"])
def test_a_file_that_is_not_an_image_is_one_message_naming_it(tmp_path, content):
    from kdcore.errors import KdcoreError

    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(KdcoreError) as err:
        read_image(tmp_path / "x.png", 4)
    assert str(err.value).startswith(f"cannot read image {tmp_path / 'x.png'}: ")
    with pytest.raises(KdcoreError, match="cannot read image .*missing.png"):
        read_image(tmp_path / "missing.png", 4)


@pytest.mark.parametrize("bad", [[1], [0, 4], [0, 2, 3, 5], [0, 2, 3, 5, 6], []])
def test_a_split_read_names_its_first_unreadable_image_and_counts_the_others(tmp_path, bad):
    """Every image is tried, so that one run finds all of a folder's damaged files."""
    from kdcore.data.base import FileDataset
    from kdcore.errors import KdcoreError

    paths = []
    for i in range(7):
        path = tmp_path / f"{i}.png"
        if i in bad:
            path.write_bytes(b"not an image")
        else:
            Image.new("RGB", (3, 3), (i, 0, 0)).save(path)
        paths.append(str(path))
    split = FileDataset(paths=tuple(paths), y=torch.zeros(7, dtype=torch.int64), num_classes=1,
                        size=2)
    if not bad:
        assert split.read(slice(None))[:, 0, 0, 0].tolist() == list(range(7))
        return
    with pytest.raises(KdcoreError) as err:
        split.read(slice(None))
    message = str(err.value)
    first = f"cannot read image {paths[bad[0]]}: "
    assert message.startswith(first) and message.count("cannot read image") == 1
    others = [paths[i] for i in bad[1:]]
    if not others:
        assert "more of the" not in message
    else:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        assert message.endswith(f"; {len(others)} more of the 7 images cannot be read either: "
                                f"{listed}")
    with pytest.raises(KdcoreError) as err:  # a batch: counted among its own rows
        split.read(torch.tensor([bad[-1], min(set(range(7)) - set(bad))]))
    assert "more of the" not in str(err.value)


def test_channel_statistics_are_the_population_mean_and_std_of_the_scaled_pixels():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8)
    x[:, 2] = 77  # a constant channel: its std is kept off zero
    mean, std = channel_stats(torch.from_numpy(x))
    scaled = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std[:2], scaled.std(axis=(0, 2, 3))[:2], rtol=1e-12)
    assert std[2] == 1e-6 and mean[2] == pytest.approx(77 / 255, rel=1e-12)
    assert all(isinstance(v, float) for v in mean + std) and len(mean) == len(std) == 3


@pytest.mark.parametrize(("n", "at_most"), [(0, 5), (5, 5), (3, 5), (6, 5), (101, 10),
                                            (STATS_IMAGES * 3 + 7, STATS_IMAGES)])
def test_sample_rows_are_every_row_or_at_most_so_many_evenly_spaced_from_first_to_last(
        n, at_most):
    rows = sample_rows(n, at_most) if at_most != STATS_IMAGES else sample_rows(n)
    if n <= at_most:
        assert rows.tolist() == list(range(n))
        return
    want = np.unique(np.round(np.linspace(0, n - 1, at_most)).astype(np.int64))
    assert rows.dtype == torch.int64 and rows.tolist() == want.tolist()
    assert len(rows) == at_most and rows[0] == 0 and rows[-1] == n - 1


@pytest.mark.parametrize("chunk", [1, 4, 512])
def test_channel_statistics_over_chunks_are_those_of_the_whole_split(monkeypatch, chunk):
    import kdcore.data.images as images

    monkeypatch.setattr(images, "STATS_CHUNK", chunk)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (10, 3, 3, 2), dtype=np.uint8)
    mean, std = channel_stats(torch.from_numpy(x))
    scaled = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-13)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-13)


def test_channel_statistics_are_rounded_once_from_exact_sums():
    # half the pixels 0, half 255: mean and std 1/2 exactly; 1, 2, ..., 255 and 0 in a row:
    # (255 / 2) / 255 and sqrt((256^2 - 1) / 12) / 255, each the correctly rounded value
    x = torch.zeros(2, 2, 16, 16, dtype=torch.uint8)
    x[0, 0] = 255
    x[:, 1] = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    mean, std = channel_stats(x)
    assert mean == (0.5, 0.5) and std[0] == 0.5
    from fractions import Fraction

    variance = Fraction(256**2 - 1, 12) / 255**2
    assert std[1] == max(float(variance) ** 0.5, 1e-6)


def _folder(root, n: int = 6) -> str:
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (5, 3), (40 * i, 0, 0)).save(root / name / f"{i}.png")
    return str(root)


@pytest.mark.parametrize("stream", [False, True])
def test_a_split_that_cannot_be_held_is_refused_before_an_image_is_read(tmp_path, monkeypatch,
                                                                         stream):
    import kdcore.data.images as images
    from kdcore.data.loaders.folder import image_folder
    from kdcore.errors import RecipeError

    root = _folder(tmp_path / "train")
    # 12 images of 3 x 4 x 4 bytes, decoded and stacked: 1,152 bytes; half the free memory
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 2_303)
    read = []
    monkeypatch.setattr(images, "read_image", lambda *a: read.append(a))
    with pytest.raises(RecipeError) as err:
        image_folder(root=root, size=4, stream=stream)
    assert str(err.value) == (
        "image_folder: 12 images of 3 x 4 x 4 pixels held at once needs 1.1 KiB; 2.2 KiB are "
        "free on cpu (lower size" + ("" if stream else ", or set stream = true") + ")")
    assert read == []
    monkeypatch.undo()
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 2_304)
    assert len(image_folder(root=root, size=4, stream=stream).train) == 12


def test_streaming_holds_the_statistics_sample_and_a_test_split_one_image(tmp_path,
                                                                         monkeypatch):
    import kdcore.data.loaders.folder as folder

    seen = []
    monkeypatch.setattr(folder, "check_fits", lambda what, n, *a, **k: seen.append((what, n)))
    monkeypatch.setattr(folder, "sample_rows", lambda n: torch.arange(min(n, 5)))
    folder.image_folder(root=_folder(tmp_path / "train"), size=4, stream=True,
                        test_root=_folder(tmp_path / "test", 2))
    assert seen == [("image_folder: 5 images of 3 x 4 x 4 pixels held at once", 2 * 5 * 48),
                    ("image_folder: 1 image of 3 x 4 x 4 pixels held at once", 2 * 1 * 48)]
    seen.clear()  # in memory: every image of each split, the test split's too
    folder.image_folder(root=str(tmp_path / "train"), size=4, stream=False,
                        test_root=str(tmp_path / "test"))
    assert [n for _, n in seen] == [2 * 12 * 48, 2 * 4 * 48]


def test_channel_statistics_of_one_pixel_of_a_wide_image_and_of_no_image():
    one = torch.tensor([[[[10]], [[20]], [[30]], [[255]]]], dtype=torch.uint8)  # (1, 4, 1, 1)
    mean, std = channel_stats(one)
    assert mean == (10 / 255, 20 / 255, 30 / 255, 1.0) and std == (1e-6,) * 4
    wide = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 1, 4)  # fewer rows than channels
    mean, std = channel_stats(wide)
    np.testing.assert_allclose(mean, wide.double().mean(dim=(0, 2, 3)).numpy() / 255,
                               rtol=1e-15)
    mean, std = channel_stats(torch.zeros(0, 3, 2, 2, dtype=torch.uint8))
    assert len(mean) == len(std) == 3 and all(np.isnan(v) for v in mean + std)
