"""COCO segmentations (polygons, compressed and uncompressed RLE) to masks and back, via
pycocotools."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .errors import DatasetFormatError

# Boxes may stick out of the image by this many pixels (rounding in real annotations).
BBOX_TOLERANCE = 1.0


def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Convert a COCO segmentation to one compressed RLE.

    Args:
        segmentation: a list of polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixel coordinates),
            or an RLE dict ``{"size": [H, W], "counts": str | bytes | list[int]}``.
        height: image height H.
        width: image width W.

    Returns:
        compressed RLE dict accepted by ``pycocotools.mask.decode``.
    """
    if isinstance(segmentation, list):
        # A polygon object may come in several parts: merge them into one mask.
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        return {"size": list(segmentation["size"]), "counts": counts.encode("ascii")}
    return segmentation


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation.

    Returns:
        bool array of shape (H, W).
    """
    return mask_utils.decode(to_rle(segmentation, height, width)).astype(bool)


def decode_many(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Decode several segmentations of one image.

    Returns:
        bool array of shape (K, H, W); (0, H, W) when ``segmentations`` is empty.
    """
    out = np.zeros((len(segmentations), height, width), dtype=bool)
    for k, segmentation in enumerate(segmentations):
        out[k] = decode(segmentation, height, width)
    return out


def decode_checked(file: str, index: int | None, segmentations: Sequence[Any], height: int,
                   width: int) -> np.ndarray:
    """:func:`decode_many`, turning pycocotools' errors on corrupt RLE into
    :class:`DatasetFormatError` (reason ``"bad_rle"``) that names the file and record."""
    for segmentation in segmentations:
        # pycocotools decodes compressed counts without bounds checks: verify them first.
        if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str | bytes):
            try:
                total = sum(compressed_counts(segmentation["counts"]))
            except ValueError as err:
                raise DatasetFormatError(file, index, "bad_rle", str(err)) from err
            if total != height * width:
                raise DatasetFormatError(file, index, "bad_rle", f"compressed RLE covers {total} "
                                         f"pixels, not H*W = {height * width}")
    try:
        return decode_many(segmentations, height, width)
    except (ValueError, TypeError, KeyError) as err:
        raise DatasetFormatError(file, index, "bad_rle", f"cannot decode mask: {err}") from err


def compressed_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string (the inverse of pycocotools' rleToString).

    Each run is 5-bit groups offset by 48 with a continuation bit (0x20) and a sign bit (0x10)
    on the last group; from the third run on, it is stored as a delta to the run two before.

    Raises:
        ValueError: a truncated string or a negative run.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else counts
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("compressed RLE string ends inside a run")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise ValueError(f"compressed RLE has a negative run ({x})")
        runs.append(x)
    return runs


def encode(mask: np.ndarray) -> dict:
    """Encode an (H, W) bool mask as JSON-ready compressed RLE (``counts`` is a str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_uncompressed(mask: np.ndarray) -> dict:
    """Encode an (H, W) bool mask as uncompressed COCO RLE.

    Returns:
        ``{"size": [H, W], "counts": [int, ...]}``: column-major run lengths, starting with
        a (possibly empty) run of zeros, summing to H*W.
    """
    rle = encode(mask)
    return {"size": rle["size"], "counts": compressed_counts(rle["counts"])}


def encode_exact(mask: np.ndarray) -> list[list[int]] | dict:
    """Encode a mask in a form the official PixelLM loader decodes
    (``pycocotools.mask.frPyObjects(seg, H, W)`` then ``decode``), pixel for pixel.

    Polygons when the traced outline reproduces the mask exactly, else uncompressed RLE
    (masks with holes such as rings, or any outline pycocotools rasterises differently).

    Args:
        mask: bool (H, W), the visible pixels.

    Returns:
        ``[[x0, y0, x1, y1, ...], ...]``: one polygon per 4-connected part, vertices on pixel
        corners (pixel ``(r, c)`` spans x in [c, c+1], y in [r, r+1]); or
        ``{"size": [H, W], "counts": [int, ...]}``.
    """
    polygons = trace_polygons(mask)
    if polygons is not None and reproduces(polygons, mask):
        return polygons
    return encode_uncompressed(mask)


def reproduces(polygons: list[list[int]], mask: np.ndarray) -> bool:
    """Whether pycocotools rasterises ``polygons`` to exactly ``mask`` (an (H, W) bool),
    with parts that never overlap (so summing the parts, as PixelLM does, equals merging)."""
    height, width = mask.shape
    parts = mask_utils.decode(mask_utils.frPyObjects(polygons, height, width))  # (H, W, N)
    return bool(np.array_equal(parts.sum(axis=2, dtype=np.int64), mask.astype(np.int64)))


def trace_polygons(mask: np.ndarray) -> list[list[int]] | None:
    """Outline each 4-connected part of an (H, W) bool mask along pixel edges.

    Returns:
        one polygon ``[x0, y0, x1, y1, ...]`` (pixel-corner coordinates, x right, y down,
        clockwise on screen, collinear vertices dropped) per part; ``None`` when the mask
        is empty or has a hole (a loop that runs the other way), which polygons cannot carry.
    """
    ys, xs = np.nonzero(mask)
    if not ys.size:
        return None
    x0, y0 = int(xs.min()), int(ys.min())  # trace inside the box: far fewer pixels to scan
    polygons = []
    for loop in _boundary_loops(mask[y0:ys.max() + 1, x0:xs.max() + 1]):
        corners = _drop_collinear(loop)
        if _shoelace2(corners) <= 0:  # counter-clockwise: the outline of a hole
            return None
        polygons.append([v for x, y in corners for v in (x + x0, y + y0)])
    return polygons


def _boundary_loops(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Closed loops of directed pixel edges with the mask on their right (y down)."""
    edges = _directed_edges(mask)
    starts: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in edges:
        starts.setdefault(a, []).append(b)
    loops = []
    while starts:
        first = next(iter(starts))
        loop, point, end = [first], first, _take(starts, first, None)
        while end != first:
            loop.append(end)
            point, end = end, _take(starts, end, (end[0] - point[0], end[1] - point[1]))
        loops.append(loop)
    return loops


def _take(starts: dict, point: tuple[int, int], heading: tuple[int, int] | None):
    """Pop the edge leaving ``point``; where two leave (parts touching at a corner), take
    the right turn so the loop stays around one 4-connected part."""
    ends = starts[point]
    k = 0
    if heading is not None and len(ends) > 1:
        right = (point[0] - heading[1], point[1] + heading[0])
        k = ends.index(right) if right in ends else 0
    end = ends.pop(k)
    if not ends:
        del starts[point]
    return end


def _directed_edges(mask: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Pixel sides between the mask and the background, as (start, end) corners (x, y)."""
    padded = np.pad(mask.astype(bool), 1)
    inside = padded[1:-1, 1:-1]
    # (neighbour offset (dr, dc), corner offsets (x, y) of the side's start and end)
    sides = (((-1, 0), (0, 0), (1, 0)), ((0, 1), (1, 0), (1, 1)),
             ((1, 0), (1, 1), (0, 1)), ((0, -1), (0, 1), (0, 0)))
    h, w = mask.shape
    edges = []
    for (dr, dc), (sx, sy), (ex, ey) in sides:
        outside = ~padded[1 + dr:1 + dr + h, 1 + dc:1 + dc + w]
        rows, cols = np.nonzero(inside & outside)
        edges += [((int(c) + sx, int(r) + sy), (int(c) + ex, int(r) + ey))
                  for r, c in zip(rows, cols)]
    return edges


def _drop_collinear(loop: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Keep only the corners of a closed loop (vertices where the direction changes)."""
    n = len(loop)
    return [b for a, b, c in ((loop[i - 1], loop[i], loop[(i + 1) % n]) for i in range(n))
            if (b[0] - a[0]) * (c[1] - b[1]) != (b[1] - a[1]) * (c[0] - b[0])]


def _shoelace2(points: list[tuple[int, int]]) -> int:
    """Twice the signed area; positive for clockwise loops on screen (y down)."""
    return sum(x0 * y1 - x1 * y0
               for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))


def check_segmentation(segmentation: Any, height: int, width: int) -> tuple[str, str] | None:
    """Cheap structural check (no decoding).

    Returns:
        ``None`` when valid, else ``(reason, explanation)`` with reason ``"bad_polygon"`` or
        ``"bad_rle"``.
    """
    if isinstance(segmentation, list):
        return _check_polygons(segmentation)
    if isinstance(segmentation, dict):
        return _check_rle(segmentation, height, width)
    return ("bad_rle", f"segmentation is a {type(segmentation).__name__}, not polygons or RLE")


def _check_polygons(polygons: list) -> tuple[str, str] | None:
    """A polygon needs an even number of coordinates and at least 3 points."""
    if not polygons:
        return ("bad_polygon", "empty polygon list")
    for part, poly in enumerate(polygons):
        if not isinstance(poly, list) or not all(isinstance(v, Real) for v in poly):
            return ("bad_polygon", f"polygon part {part} is not a list of numbers")
        if len(poly) < 6 or len(poly) % 2:
            return ("bad_polygon", f"polygon part {part} has {len(poly)} coordinates "
                    "(needs an even number >= 6)")
    return None


def _check_rle(rle: dict, height: int, width: int) -> tuple[str, str] | None:
    """Size must match the image; list counts must cover exactly H*W pixels."""
    if "counts" not in rle or "size" not in rle:
        return ("bad_rle", "RLE without 'counts' or 'size'")
    if list(rle["size"]) != [height, width]:
        return ("bad_rle", f"RLE size {list(rle['size'])} != image size {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if any(not isinstance(c, int) or c < 0 for c in counts):
            return ("bad_rle", "uncompressed RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            return ("bad_rle", f"uncompressed RLE counts sum to {sum(counts)}, "
                    f"not H*W = {height * width}")
        return None
    if not isinstance(counts, str | bytes) or not counts:
        return ("bad_rle", "compressed RLE counts must be a non-empty string")
    return None


def check_bbox(bbox: Any, height: int, width: int) -> tuple[str, str] | None:
    """Check an ``[x, y, w, h]`` box lies inside the image (``BBOX_TOLERANCE`` pixels allowed).

    Returns:
        ``None`` when valid, else ``(reason, explanation)``.
    """
    if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(
        isinstance(v, Real) for v in bbox
    ):
        return ("bad_bbox", f"bbox {bbox!r} is not [x, y, w, h]")
    x, y, w, h = bbox
    tol = BBOX_TOLERANCE
    if w < 0 or h < 0 or x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return ("bbox_out_of_bounds", f"bbox {list(bbox)} outside the {width}x{height} image")
    return None
