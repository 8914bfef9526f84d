"""Vocabulary and rasterisation of the procedural shapes: 6 colours x 7 shapes."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well separated RGB; the background is low-saturation grey, so colour is never
# confused with it. Each object gets a small jitter around these.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 35),
    "purple": (145, 55, 200),
    "orange": (250, 135, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "diamond", "ring")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
# LVIS-style category ids: the shape is the category, the colour an attribute.
CATEGORY_IDS: dict[str, int] = {s: i + 1 for i, s in enumerate(SHAPES)}
CORNERS: dict[str, int] = {
    "circle": 0, "ring": 0, "triangle": 3, "square": 4, "diamond": 4, "hexagon": 6, "star": 10,
}
# Shapes with at least one acute corner (the diamond is a tall rhombus).
POINTY: frozenset[str] = frozenset({"triangle", "star", "diamond"})
WITH_HOLE: frozenset[str] = frozenset({"ring"})
RING_INNER = 0.55  # inner / outer radius of the ring
DIAMOND_ASPECT = 0.62  # width / height of the diamond
STAR_INNER = 0.45  # inner / outer radius of the 5-point star
SQUARE_HALF = 0.8  # half side / radius, so a square's area is close to a circle's


def shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float,
               size: int) -> np.ndarray:
    """Rasterise one shape on a ``size x size`` canvas.

    Args:
        shape: one of :data:`SHAPES`.
        cx: centre x in pixels (x to the right, pixel centres at ``i + 0.5``).
        cy: centre y in pixels (y downwards).
        radius: outer radius in pixels (half the nominal size).
        angle: rotation in radians; ignored by circle, ring, square and diamond, which must
            keep their canonical pose to stay distinguishable (square vs diamond).
        size: canvas side S.

    Returns:
        bool array (S, S).
    """
    if shape in ("circle", "ring"):
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        dist2 = (xx - cx) ** 2 + (yy - cy) ** 2
        inner = (RING_INNER * radius) ** 2 if shape == "ring" else -1.0
        return (dist2 <= radius**2) & (dist2 > inner)
    return _polygon_mask(_vertices(shape, cx, cy, radius, angle), size)


def _vertices(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    """Polygon vertices (x, y) of the polygonal shapes."""
    if shape == "square":
        h = SQUARE_HALF * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        a = DIAMOND_ASPECT * r
        return [(cx, cy - r), (cx + a, cy), (cx, cy + r), (cx - a, cy)]
    if shape == "triangle":
        radii, n = [r], 3
    elif shape == "hexagon":
        radii, n = [r], 6
    elif shape == "star":
        radii, n = [r, STAR_INNER * r], 10
    else:
        raise ValueError(f"unknown shape {shape!r}")
    start = angle - math.pi / 2  # first vertex points up before rotation
    return [
        (cx + radii[k % len(radii)] * math.cos(start + 2 * math.pi * k / n),
         cy + radii[k % len(radii)] * math.sin(start + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _polygon_mask(vertices: list[tuple], size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(vertices, fill=1)
    return np.asarray(canvas, dtype=bool)
