"""Procedural scenes: coloured shapes on a textured background, with visible masks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shapes import COLOURS, shape_mask

# Sizes are given for a 64-pixel image and scale with the image side.
BASE_SIZE = 64
MIN_DIAMETER, MAX_DIAMETER = 6.0, 12.0  # 9 to 18 px on the default 96-px canvas
MIN_VISIBLE_FRACTION = 0.6  # every object keeps at least 60% of its pixels visible
MIN_VISIBLE_PIXELS = 12.0  # ... and at least this many (at 64 px; 27 px at 96)
PLACEMENT_TRIES = 60
COLOUR_JITTER = 12  # per-object shift of the base colour, per channel
PIXEL_NOISE = 5.0  # std of per-pixel noise on objects and background


@dataclass(frozen=True)
class SceneObject:
    """One painted object.

    Attributes:
        colour: colour name (a key of ``COLOURS``).
        shape: shape name (the category).
        mask: bool (H, W), the pixels where the object is visible after occlusion.
        centroid: (x, y) mean of the visible pixel centres, in pixels.
        area: number of visible pixels.
    """

    colour: str
    shape: str
    mask: np.ndarray
    centroid: tuple[float, float]
    area: int

    @property
    def phrase(self) -> str:
        """``"red circle"``."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A rendered image and its objects (in paint order, later ones on top).

    Attributes:
        image: uint8 (H, W, 3) RGB.
        objects: the visible objects.
    """

    image: np.ndarray
    objects: tuple[SceneObject, ...]

    def masks(self) -> np.ndarray:
        """bool (N, H, W) visible masks in object order."""
        size = self.image.shape[0]
        if not self.objects:
            return np.zeros((0, size, size), dtype=bool)
        return np.stack([o.mask for o in self.objects])


def render_scene(rng: np.random.Generator, *, size: int, pairs: Sequence[tuple[str, str]],
                 num_objects: int) -> Scene:
    """Place up to ``num_objects`` shapes, each (colour, shape) pair at most once.

    Objects are placed one by one on top of the previous ones; a placement is rejected when
    it would hide more than 40% of an earlier object, leave it fewer than the minimum
    pixels, or touch an object of the same colour (same-colour blobs would merge).
    An object that cannot be placed after ``PLACEMENT_TRIES`` tries is dropped, so the
    scene may hold fewer objects.

    Args:
        rng: the random generator (the only source of randomness).
        size: image side S in pixels.
        pairs: the (colour, shape) pairs allowed in this split.
        num_objects: how many objects to try to place.

    Returns:
        the scene; masks are (S, S) bool.
    """
    scale = size / BASE_SIZE
    chosen = rng.choice(len(pairs), size=min(num_objects, len(pairs)), replace=False)
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    kept: list[tuple[str, str]] = []
    for idx in chosen:
        colour, shape = pairs[int(idx)]
        placed = _place(rng, shape, colour, size, scale, full, visible, kept)
        if placed is not None:
            visible = [v & ~placed for v in visible] + [placed]
            full.append(placed)
            kept.append((colour, shape))
    image = _paint(rng, size, full, [c for c, _ in kept])
    objects = tuple(_object(c, s, m) for (c, s), m in zip(kept, visible, strict=True))
    return Scene(image=image, objects=objects)


def _window(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The mask's bounding box grown by ``pad`` pixels, clipped to the canvas."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (slice(max(int(rows[0]) - pad, 0), int(rows[-1]) + pad + 1),
            slice(max(int(cols[0]) - pad, 0), int(cols[-1]) + pad + 1))


def _place(rng, shape, colour, size, scale, full, visible, kept) -> np.ndarray | None:
    """Try random poses until one satisfies the occlusion rules; None when none does.

    The checks only look at the candidate's bounding box (grown by the 2-px colour gap),
    where it can touch or hide other objects.
    """
    min_px = MIN_VISIBLE_PIXELS * scale**2
    areas = [(int(v.sum()), int(f.sum())) for v, f in zip(visible, full, strict=True)]
    for _ in range(PLACEMENT_TRIES):
        radius = rng.uniform(MIN_DIAMETER, MAX_DIAMETER) * scale / 2
        cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
        mask = shape_mask(shape, cx, cy, radius, rng.uniform(0, 2 * np.pi), size)
        if mask.sum() < min_px:
            continue
        win = _window(mask, 2)
        grown = ndimage.binary_dilation(mask[win], iterations=2)
        if any(kept[k][0] == colour and (grown & full[k][win]).any() for k in range(len(kept))):
            continue
        if all(_still_visible(vis - int((v[win] & mask[win]).sum()), whole, min_px)
               for v, (vis, whole) in zip(visible, areas, strict=True)):
            return mask
    return None


def _still_visible(area: int, full_area: int, min_px: float) -> bool:
    return area >= MIN_VISIBLE_FRACTION * full_area and area >= min_px


def _object(colour: str, shape: str, mask: np.ndarray) -> SceneObject:
    ys, xs = np.nonzero(mask)
    centroid = (float(xs.mean() + 0.5), float(ys.mean() + 0.5))
    return SceneObject(colour=colour, shape=shape, mask=mask, centroid=centroid,
                       area=int(mask.sum()))


def _paint(rng: np.random.Generator, size: int, masks: list[np.ndarray],
           colours: list[str]) -> np.ndarray:
    """Textured background, then the objects in order, each a jittered, noisy colour."""
    image = _background(rng, size)
    for mask, colour in zip(masks, colours, strict=True):
        base = np.array(COLOURS[colour], dtype=np.float64)
        base = base + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        image[mask] = base + rng.normal(0, PIXEL_NOISE, size=(int(mask.sum()), 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast, low-saturation grey: smooth blotches plus pixel noise."""
    level = rng.uniform(55, 150)
    tint = rng.uniform(-10, 10, size=3)
    coarse = rng.normal(0, 12, size=(5, 5, 3))
    smooth = ndimage.zoom(coarse, (size / 5, size / 5, 1), order=1)[:size, :size]
    noise = rng.normal(0, PIXEL_NOISE, size=(size, size, 3))
    return level + tint + smooth + noise
