"""COCO segmentations (polygons, compressed and uncompressed RLE) to masks, via pycocotools."""

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
