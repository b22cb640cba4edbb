"""``ssl_pretrain``'s sizes and settings are refused by ``kdcore check`` where the run could not
use them: a projection head too large for memory (built whatever its size before), a crop
padding ``crop_flip`` refuses (found at the stage's first batch before), infinite noise (a
non-finite loss at the first batch)."""

from __future__ import annotations

import math
import re

import pytest

import kdcore_ff.ssl as ssl_module
from kdcore.errors import KdcoreError
from kdcore.testing import check_tiny, component, stage, tiny_recipe

IMAGES = {"student": {"arch": "cnn", "params": {"channels": [4, 8]}, "optimizer": {"lr": 0.05}}}


def _ssl(**params) -> dict:
    return tiny_recipe(stage("s", 1, ["student"], component("ssl_pretrain", params=params),
                             component("ce")),
                       models=IMAGES, data={"params": {"flatten": False}})


def test_a_projection_head_that_cannot_fit_is_refused():
    with pytest.raises(KdcoreError, match=re.escape(
            "component 'ssl_pretrain': the projection head of 'student' (128 x 1000000000000 x "
            "64) needs ")) as err:
        check_tiny(_ssl(projection_hidden=10**12))
    assert str(err.value).endswith(" (lower projection_hidden or projection_dim)")


def test_the_head_is_counted_as_built(monkeypatch):
    seen = []
    monkeypatch.setattr(ssl_module, "check_fits", lambda what, n, *a, **k: seen.append((what, n)))
    check_tiny(_ssl(projection_hidden=24, projection_dim=8))
    head = ssl_module.make_head(128, 24, 8)  # the CNN of [4, 8] channels: 128 features
    assert seen == [("component 'ssl_pretrain': the projection head of 'student' (128 x 24 x 8)",
                     4 * sum(p.numel() for p in head.parameters()))]


@pytest.mark.parametrize("padding", [65, 10**12])
def test_a_crop_padding_crop_flip_refuses_is_refused_in_set_up(padding):
    with pytest.raises(KdcoreError, match=re.escape(
            "component 'ssl_pretrain': crop_padding: crop_flip: 'padding' must be in [0, 64], "
            f"got {padding}")):
        check_tiny(_ssl(crop_padding=padding))


def test_the_largest_padding_the_images_take_is_taken():
    """crop_flip takes a padding below the images' smaller side (digits: 8 pixels), so that
    every view holds some of its image; its bound of 64 is for images larger than that."""
    check_tiny(_ssl(crop_padding=7))
    with pytest.raises(KdcoreError, match=re.escape(
            "component 'ssl_pretrain': crop_padding: crop_flip: padding 8 is not below the "
            "images' smaller side (8x8): some crops would hold no pixel of the image")):
        check_tiny(_ssl(crop_padding=8))


def test_infinite_noise_is_refused():
    with pytest.raises(KdcoreError, match=re.escape(
            "'noise_std' must be a finite number, got inf")):
        check_tiny(_ssl(noise_std=math.inf))
