"""Region descriptions, shared by every family: what a describer (the DynRefer family) returns
for a region, how regions are given, and how a segmentation predictor's targets get one.

A segmentation predictor describes its targets when a describer is attached
(``load_predictor(seg_dir, describer=dynrefer_dir)``) and ``predict(..., describe=True)`` is
asked: each :class:`~pixellm.predictor.Target` then carries a :class:`RegionDescription` of its
mask in ``description``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

TAG_THRESHOLD = 0.5  # a tag whose probability reaches this is predicted


@dataclass
class RegionDescription:
    """What a region is.

    caption: the generated description. tags: every tag with its probability, most likely
    first (:attr:`predicted_tags` are those >= ``tag_threshold``). attributes: attribute
    group -> [(value, probability)], most likely first (open-vocabulary prompts scored by the
    region-text head). category: [(class, probability)], most likely first (region
    recognition). views: the view parameters t the caption was read at (0: the region
    alone). box: the XYXY region box described (a mask's box for a mask).
    """

    caption: str
    tags: list[tuple[str, float]]
    attributes: dict[str, list[tuple[str, float]]]
    category: list[tuple[str, float]]
    views: list[float]
    box: tuple[float, float, float, float]
    attribute_views: list[float] = field(default_factory=list)
    tag_threshold: float = TAG_THRESHOLD  # the describer's: a tag at least this likely is predicted

    @property
    def predicted_tags(self) -> list[str]:
        return [t for t, p in self.tags if p >= self.tag_threshold]

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"caption": self.caption, "tags": [[t, round(p, 4)] for t, p in self.tags],
                "predicted_tags": self.predicted_tags,
                "attributes": {g: [[v, round(p, 4)] for v, p in vals] for g, vals in self.attributes.items()},
                "category": [[c, round(p, 4)] for c, p in self.category], "views": self.views,
                "attribute_views": self.attribute_views, "box": [round(float(v), 2) for v in self.box]}


def region_boxes(regions, height: int, width: int) -> list[tuple[float, float, float, float]]:
    """Boxes of the regions to describe, checked against the image.

    Args:
        regions: XYXY boxes (a (K, 4) array or K sequences of 4 numbers) or masks (a (K, H, W)
            array or K (H, W) arrays, bool or {0, 1}), at the image's size.
        height, width: the image's.
    Returns:
        K XYXY float boxes (a mask's: its pixels' box, max exclusive).
    Raises:
        InputError: not boxes or masks, a mask of another size or empty, a box that is empty,
            inverted, not finite or outside the image; the message names the region.
    """
    if isinstance(regions, np.ndarray) and regions.ndim == 3:
        regions = list(regions)
    if isinstance(regions, np.ndarray) and regions.ndim == 2 and regions.shape[1] == 4:
        regions = list(regions)
    if not isinstance(regions, (list, tuple)):
        raise InputError(f"regions must be a list of XYXY boxes or (H, W) masks, got {type(regions).__name__}")
    boxes = []
    for k, r in enumerate(regions):
        arr = np.asarray(r)
        if arr.ndim == 2:
            if arr.shape != (height, width):
                raise InputError(f"region {k}: mask of shape {arr.shape}, the image is {(height, width)}")
            ys, xs = np.nonzero(arr)
            if len(xs) == 0:
                raise InputError(f"region {k}: the mask is empty")
            boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
            continue
        if arr.shape != (4,) or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"region {k}: expected an XYXY box of 4 numbers or an (H, W) mask, got shape {arr.shape}")
        x0, y0, x1, y1 = (float(v) for v in arr)
        if not np.all(np.isfinite(arr.astype(np.float64))):
            raise InputError(f"region {k}: box {arr.tolist()} is not finite")
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"region {k}: box {arr.tolist()} is empty or inverted (XYXY expected)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise InputError(f"region {k}: box {arr.tolist()} lies outside the {width}x{height} image")
        boxes.append((x0, y0, x1, y1))
    return boxes


class DescribesTargets:
    """Mixin of the segmentation predictors: an optional describer for their targets."""

    describer = None

    def attach_describer(self, describer) -> None:
        """Describe targets with ``describer``: a DynRefer predictor, or its checkpoint directory."""
        if describer is not None and not hasattr(describer, "describe"):
            from .checkpoint import load_predictor

            describer = load_predictor(describer, device=getattr(self, "device", None))
            if not hasattr(describer, "describe"):
                raise InputError("describer: the checkpoint is not a region describer (a DynRefer checkpoint)")
        self.describer = describer

    def _describe_all(self, predictions: list, images: Sequence, describe: bool) -> list:
        """Give every kept target of each prediction its description (one describer call per
        image), when ``describe``."""
        if not describe:
            return predictions
        if self.describer is None:
            raise InputError("describe=True needs a describer: load_predictor(dir, describer=DYNREFER_DIR) "
                             "or predictor.attach_describer(...)")
        for pred, image in zip(predictions, images, strict=True):
            targets = [t for t in pred.targets if t.mask.any()]
            if targets:
                for t, d in zip(targets, self.describer.describe(image, [t.mask for t in targets]), strict=True):
                    t.description = d
        return predictions
