"""Region descriptions: a caption, tags and attributes for every object, in the COCO-style
caption layout of the DynRefer family's converted RefCOCOg / Visual Genome files.

A caption names the object by its attributes and ties it to its nearest neighbour::

    "the small red circle at the top left, above the blue ring"

The attributes are the object's colour, shape (its category), size class (visible area against
the image's) and position (the image's thirds of its centroid). Its tags are the tag
vocabulary's words of its own phrase (the part before the comma): the neighbour's words are
not its tags.

The file layout (``regions_<split>.json``, written by ``pixellm-data`` beside the MUSE and
LVIS files)::

    {"images": [{"id", "file_name", "height", "width"}],
     "annotations": [{"id", "image_id", "bbox": [x, y, w, h], "segmentation", "area",
                      "caption", "tags": [...], "attributes": {"colour", "shape", "size",
                      "position"}}],
     "tags": [the tag vocabulary], "attributes": {group: [values]}}

Real files (the paper's converted ones) carry only ``images`` and ``annotations`` with
``caption`` and ``bbox`` or ``segmentation``: :func:`load_regions` reads both, parsing the tags
from the caption when a record has none.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DatasetFormatError
from .scene import Scene, SceneObject
from .shapes import COLOURS, SHAPES

SIZES = ("small", "medium", "large")
# visible area / image area at the size-class boundaries: the thirds of the generator's objects
# (9 to 18 px wide on a 96-px canvas, less what occlusion hides)
SIZE_BOUNDS = (0.0077, 0.0117)
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
POSITION_WORDS = ("top", "bottom", "left", "right", "center")
TAGS: tuple[str, ...] = (*COLOURS, *SHAPES, *SIZES, *POSITION_WORDS)
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}
CLASSES: tuple[str, ...] = SHAPES  # what region recognition names


def size_class(area: float, image_area: float) -> str:
    """``small`` / ``medium`` / ``large`` from the visible area's fraction of the image."""
    frac = area / image_area
    return SIZES[int(frac >= SIZE_BOUNDS[0]) + int(frac >= SIZE_BOUNDS[1])]


def position(centroid: tuple[float, float], width: int, height: int) -> str:
    """The image third of a centroid (x, y): one of :data:`POSITIONS`."""
    col = min(int(3 * centroid[0] / width), 2)
    row = min(int(3 * centroid[1] / height), 2)
    return POSITIONS[3 * row + col]


def relation(subject: SceneObject, other: SceneObject) -> str:
    """Where ``subject`` is from ``other`` on the axis where their centroids differ most."""
    dx = subject.centroid[0] - other.centroid[0]
    dy = subject.centroid[1] - other.centroid[1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def describe_object(scene: Scene, index: int) -> dict:
    """Caption, tags and attributes of ``scene.objects[index]`` (a pure function of the scene).

    Returns:
        ``{"caption": str, "tags": [str], "attributes": {"colour", "shape", "size",
        "position"}}``.
    """
    obj = scene.objects[index]
    h, w = scene.image.shape[:2]
    attrs = {"colour": obj.colour, "shape": obj.shape, "size": size_class(obj.area, h * w),
             "position": position(obj.centroid, w, h)}
    where = "at the center" if attrs["position"] == "center" else f"at the {attrs['position']}"
    subject = f"the {attrs['size']} {obj.colour} {obj.shape} {where}"
    others = [o for j, o in enumerate(scene.objects) if j != index]
    caption = subject
    if others:
        near = min(others, key=lambda o: (o.centroid[0] - obj.centroid[0]) ** 2 + (o.centroid[1] - obj.centroid[1]) ** 2)
        caption = f"{subject}, {relation(obj, near)} the {near.colour} {near.shape}"
    return {"caption": caption, "tags": parse_tags(subject), "attributes": attrs}


def words(text: str) -> list[str]:
    """Lower-cased word tokens of a caption (what the caption metrics and tags read)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def parse_tags(caption: str, vocabulary: Sequence[str] = TAGS) -> list[str]:
    """The vocabulary's words in the caption's own phrase (before the first comma), in
    vocabulary order."""
    present = set(words(caption.split(",")[0]))
    return [t for t in vocabulary if t in present]


def regions_file(images: list[dict], annotations: list[dict]) -> dict:
    """The ``regions_<split>.json`` dict of some images and their region annotations."""
    return {"images": images, "annotations": annotations, "tags": list(TAGS),
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()}, "classes": list(CLASSES)}


@dataclass(frozen=True)
class RegionRecord:
    """One described region.

    file_name: image path relative to the images root. image_id, id: the annotation's ids.
    box: XYXY pixel box (float). segmentation: the COCO segmentation (polygons or RLE) or
    None. caption: the reference caption. tags: its tags. attributes: group -> value (empty for
    files that have none). height, width: the image's.
    """

    file_name: str
    image_id: int
    id: int
    box: tuple[float, float, float, float]
    caption: str
    tags: tuple[str, ...]
    height: int
    width: int
    segmentation: object = None
    attributes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RegionSet:
    """A parsed regions file: its records and vocabularies."""

    records: list[RegionRecord]
    tags: tuple[str, ...]
    attributes: dict[str, tuple[str, ...]]
    classes: tuple[str, ...]


def _box(ann: dict, path: Path, i: int, height: int, width: int) -> tuple[float, float, float, float]:
    if "bbox" in ann:
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetFormatError(path, i, "bad_bbox", f"bbox must be [x, y, w, h] numbers, got {bbox!r}")
        x, y, w, h = (float(v) for v in bbox)
    elif "segmentation" in ann:
        from pycocotools import mask as mask_utils

        try:
            seg = ann["segmentation"]
            rles = mask_utils.frPyObjects(seg, height, width)
            x, y, w, h = (float(v) for v in mask_utils.toBbox(mask_utils.merge(rles) if isinstance(rles, list) else rles))
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise DatasetFormatError(path, i, "bad_segmentation", f"unreadable segmentation: {e}") from e
    else:
        raise DatasetFormatError(path, i, "missing_field", "an annotation needs 'bbox' or 'segmentation'")
    if w <= 0 or h <= 0:
        raise DatasetFormatError(path, i, "empty_box", f"empty box {[x, y, w, h]}")
    return (x, y, x + w, y + h)


def load_regions(path: str | Path, *, tags: Sequence[str] | None = None) -> RegionSet:
    """Read a regions file (this project's or the paper's converted layout).

    Args:
        path: the JSON file. tags: the tag vocabulary for records without tags (None: the
            file's ``tags``, else :data:`TAGS`).
    Raises:
        DatasetFormatError: unreadable JSON, or a record without an image, a caption or a box,
            naming the annotation.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        anns = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetFormatError(path, None, "not_regions", f"not a regions file ({type(e).__name__}: {e})") from e
    vocab = tuple(tags if tags is not None else data.get("tags", TAGS))
    records = []
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise DatasetFormatError(path, i, "missing_image", "missing or unknown image_id")
        caption = ann.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetFormatError(path, i, "missing_field", "missing or empty caption")
        im = images[ann["image_id"]]
        height, width = int(im.get("height", 0)), int(im.get("width", 0))
        records.append(RegionRecord(
            file_name=im["file_name"], image_id=int(ann["image_id"]), id=int(ann.get("id", i)),
            box=_box(ann, path, i, height, width), caption=caption.strip(),
            tags=tuple(ann["tags"]) if "tags" in ann else tuple(parse_tags(caption, vocab)),
            height=height, width=width, segmentation=ann.get("segmentation"),
            attributes=dict(ann.get("attributes", {}))))
    attrs = {k: tuple(v) for k, v in data.get("attributes", {}).items()}
    return RegionSet(records=records, tags=vocab, attributes=attrs, classes=tuple(data.get("classes", ())))


def region_annotations(scene: Scene, anns: list[dict]) -> list[dict]:
    """The regions-file annotations of a scene: its LVIS annotations (same ids, boxes and
    segmentations) with a caption, tags and attributes each."""
    out = []
    for j, ann in enumerate(anns):
        d = describe_object(scene, j)
        out.append({k: ann[k] for k in ("id", "image_id", "bbox", "area", "segmentation")} | d)
    return out


def caption_stats(captions: Sequence[str]) -> dict:
    """Mean words per caption and vocabulary size (for ``meta.json``)."""
    toks = [words(c) for c in captions]
    return {"captions": len(toks), "mean_words": float(np.mean([len(t) for t in toks])) if toks else 0.0,
            "vocabulary": len({w for t in toks for w in t})}
