"""pixellm.overlay: labels sit outside the masks they name, inside the canvas, off each other."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixellm.overlay import blend, draw_overlay, palette, place_labels


def _up(a: np.ndarray, scale: int) -> np.ndarray:
    return a.repeat(scale, 0).repeat(scale, 1)


def _disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def test_label_does_not_cover_its_mask(rgb):
    mask = _disk(64, 64, 32, 32, 10)
    out = np.asarray(draw_overlay(rgb, [mask], ["1: the red circle in the middle"]))
    scale = 256 // 64
    assert out.shape == (256, 256, 3)
    plain = _up(blend(rgb, [mask]), scale)
    region = _up(mask, scale)
    assert np.array_equal(out[region], plain[region])  # the mask's pixels: just the alpha-blend
    drawn = np.any(out != plain, axis=-1)
    assert drawn.sum() > 100  # the label (and its leader line) are drawn, outside the mask
    # the leader line runs from the label to the mask: some drawn pixel touches the mask
    near = np.zeros_like(region)
    near[1:] |= region[:-1]
    near[:-1] |= region[1:]
    near[:, 1:] |= region[:, :-1]
    near[:, :-1] |= region[:, 1:]
    assert (drawn & near & ~region).any()


def test_labels_inside_canvas_and_apart():
    h = w = 64
    corners = [np.zeros((h, w), bool) for _ in range(4)]
    corners[0][:6, :6] = True
    corners[1][:6, -6:] = True
    corners[2][-6:, :6] = True
    corners[3][-6:, -6:] = True
    labels = [f"{i + 1}: a rather long label for a corner" for i in range(4)]
    boxes = place_labels(corners, labels, (256, 256), scale=4)
    assert len(boxes) == 4
    for b in boxes:
        x0, y0, x1, y1 = b.box
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
    for i, a in enumerate(boxes):  # no two labels overlap
        for b in boxes[i + 1:]:
            assert min(a.box[2], b.box[2]) <= max(a.box[0], b.box[0]) or \
                min(a.box[3], b.box[3]) <= max(a.box[1], b.box[1])
    for m, b in zip(corners, boxes):  # and none covers a mask
        x0, y0, x1, y1 = b.box
        assert not _up(np.logical_or.reduce(corners), 4)[y0:y1, x0:x1].any()
        assert b.anchor is not None and m[int(b.anchor[1] // 4), int(b.anchor[0] // 4)]


def test_label_too_long_for_a_small_image_is_shortened():
    mask = np.zeros((8, 8), bool)
    mask[3:5, 3:5] = True
    img = draw_overlay(np.zeros((8, 8, 3), np.uint8), [mask], ["1: " + "word " * 40], min_side=64)
    assert img.size == (64, 64)
    (b,) = place_labels([mask], ["1: " + "word " * 40], (64, 64), scale=8)
    assert b.text.endswith("…") and 0 <= b.box[0] and b.box[2] <= 64 and b.box[3] <= 64


def test_empty_mask_and_no_mask(rgb):
    empty = np.zeros((64, 64), bool)
    full = _disk(64, 64, 40, 40, 8)
    img = draw_overlay(rgb, [empty, full], ["1: nothing", "2: disk"])
    assert img.size == (256, 256)
    boxes = place_labels([empty, full], ["1: nothing", "2: disk"], img.size, scale=4)
    assert boxes[0].anchor is None and boxes[1].anchor is not None
    plain = draw_overlay(rgb, [], [])
    assert np.array_equal(np.asarray(plain), _up(rgb, 4))  # nothing to draw: the upscaled image


def test_mask_over_the_whole_image_does_not_crash(rgb):
    img = draw_overlay(rgb, [np.ones((64, 64), bool)], ["1: everything"])
    assert img.size == (256, 256)


def test_legend_strip_under_the_image(rgb):
    masks = [_disk(64, 64, 20, 20, 6), _disk(64, 64, 44, 44, 6)]
    img = draw_overlay(rgb, masks, ["1", "2"], legend=["1: a red circle", "2: a blue square"])
    assert img.width >= 256 and img.height > 256
    strip = np.asarray(img)[256:]
    for c in palette(2):  # each line's swatch in its mask's colour
        assert (strip == np.asarray(c, np.uint8)).all(axis=-1).sum() >= 25
    assert np.asarray(img)[:256].shape == (256, img.width, 3)


def test_large_image_keeps_its_size_and_is_quick():
    import time

    big = np.zeros((600, 900, 3), np.uint8)
    rng = np.random.default_rng(1)
    masks = [rng.random((600, 900)) > 0.995 for _ in range(3)]
    t = time.perf_counter()
    img = draw_overlay(big, masks, ["1: speckle", "2: speckle", "3: speckle"])
    assert img.size == (900, 600) and isinstance(img, Image.Image)
    assert time.perf_counter() - t < 10
