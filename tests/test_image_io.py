"""Image loading and longest-side resize + pad."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pixellm.errors import InputError
from pixellm.image_io import load_image, resize_longest_and_pad, resize_mask_to_input, resized_size

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def test_conversions():
    gray = np.full((4, 6), 100, np.uint8)
    assert load_image(gray).shape == (4, 6, 3) and (load_image(gray) == 100).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0  # fully transparent red -> white background
    assert (load_image(rgba) == 255).all()
    sixteen = np.full((3, 3), 65535, np.uint16)
    assert (load_image(sixteen) == 255).all()
    assert (load_image(np.ones((2, 2, 3), np.float32)) == 255).all()
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(InputError, match="unsupported image type"):
        load_image(42)


@pytest.mark.parametrize("h,w", [(64, 64), (30, 60), (90, 45), (1, 200)])
def test_resize_longest_and_pad(h, w):
    rgb = np.full((h, w, 3), 255, np.uint8)
    pre = resize_longest_and_pad(rgb, size=32, mean=MEAN, std=STD)
    vh, vw = pre.valid_size
    assert pre.pixels.shape == (3, 32, 32) and max(vh, vw) == 32 and pre.original_size == (h, w)
    assert vh == max(1, round(h * 32 / max(h, w))) and vw == max(1, round(w * 32 / max(h, w)))
    assert resized_size(h, w, size=32) == (vh, vw)  # what the mask and evaluation resizes use
    assert torch.allclose(pre.pixels[:, :vh, :vw], torch.tensor(2.0))  # (1 - 0.5) / 0.25
    assert (pre.pixels[:, vh:, :] == 0).all() and (pre.pixels[:, :, vw:] == 0).all()


def test_mask_resize_matches_image_geometry():
    m = np.zeros((1, 30, 60), bool)
    m[0, :, :30] = True  # left half
    out = resize_mask_to_input(m, size=32)
    assert out.shape == (1, 32, 32) and out[0, :16, :16].all() and not out[0, :, 16:].any()
