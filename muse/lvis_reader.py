"""LVIS instance files through the ``lvis`` package, masks through pycocotools."""

from __future__ import annotations

import pathlib

import numpy as np

from . import masks as masklib


def _lvis_class():
    """Import ``lvis.LVIS`` lazily.

    Importing ``lvis`` pulls in matplotlib and opencv (its visualiser), which is slow, so it
    happens only when an LVIS file is opened. Only the ``LVIS`` API class is used: ``LVISEval``
    still calls ``np.float`` (removed in numpy 1.24) and would fail, but that is at call time,
    not at import, so no workaround is needed here.
    """
    from lvis import LVIS

    return LVIS


class LvisInstances:
    """Read-only view of an LVIS instances JSON file.

    Args:
        path: the LVIS JSON file (COCO-like plus per-image ``not_exhaustive_category_ids`` and
            ``neg_category_ids`` and per-category ``frequency``).
    """

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.api = _lvis_class()(str(self.path))

    @property
    def image_ids(self) -> list[int]:
        """All image ids, in file order."""
        return self.api.get_img_ids()

    @property
    def categories(self) -> dict[int, dict]:
        """category id -> category dict (``name``, ``synonyms``, ``def``, ``frequency``, ...)."""
        return self.api.cats

    def image(self, image_id: int) -> dict:
        """The image dict (``file_name``, ``height``, ``width``, ...)."""
        return self.api.imgs[image_id]

    def annotations(self, image_id: int) -> list[dict]:
        """The annotations of one image, in file order (empty list when it has none)."""
        return self.api.load_anns(self.api.get_ann_ids(img_ids=[image_id]))

    def frequency(self, category_id: int) -> str:
        """``"f"`` (frequent), ``"c"`` (common) or ``"r"`` (rare)."""
        return self.api.cats[category_id]["frequency"]

    def not_exhaustive_category_ids(self, image_id: int) -> list[int]:
        """Categories present in the image but not exhaustively annotated."""
        return list(self.api.imgs[image_id].get("not_exhaustive_category_ids", []))

    def neg_category_ids(self, image_id: int) -> list[int]:
        """Categories verified absent from the image."""
        return list(self.api.imgs[image_id].get("neg_category_ids", []))

    def mask(self, ann_id: int) -> np.ndarray:
        """Decode one annotation (polygons, compressed or uncompressed RLE).

        Args:
            ann_id: annotation id.

        Returns:
            bool array of shape (H, W) of the annotation's image.

        Raises:
            KeyError: unknown annotation id.
        """
        if ann_id not in self.api.anns:
            raise KeyError(f"{self.path}: no annotation with id {ann_id}")
        ann = self.api.anns[ann_id]
        image = self.api.imgs[ann["image_id"]]
        return masklib.decode(ann["segmentation"], image["height"], image["width"])

    def __len__(self) -> int:
        return len(self.api.anns)
