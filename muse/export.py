"""Turn generated examples into MUSE records, LVIS instance files and statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from . import masks as masklib
from .questions import Question
from .scene import Scene
from .shapes import CATEGORY_IDS, CORNERS, SHAPES

MAX_OBJECTS_PER_IMAGE = 100  # annotation id = image_id * 100 + object index
HIST_CAP = 12  # histogram bucket for "12 or more" targets

_SYNSETS = {"ring": "annulus.n.01", "diamond": "rhombus.n.01", "star": "star.n.03"}


QuestionTuple = tuple[str, list[int], str, str, list[str]]


@dataclass(frozen=True)
class Entry:
    """One generated image, JSON-ready (no arrays), as workers hand it back.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"``.
        image: LVIS image dict (id, file_name, height, width, ...).
        anns: MUSE ``ann_list`` entries (LVIS annotation fields plus names), paint order.
        questions: (text, target ann ids in answer order, text answer, family, phrases) per
            question.
        multi_ref: the multi-referring question of a test image, same layout, or None.
        regions: its objects' region descriptions (:func:`muse.regions.region_annotations`).
    """

    split: str
    image: dict
    anns: list[dict]
    questions: list[QuestionTuple]
    multi_ref: QuestionTuple | None
    regions: list[dict] = field(default_factory=list)


def annotations(scene: Scene, image_id: int) -> list[dict]:
    """MUSE/LVIS annotation dicts of a scene, one per object in paint order.

    Args:
        scene: the rendered scene; its objects' masks are (H, W) bool visible masks.
        image_id: the image's id (annotation ids are ``image_id * 100 + object index``).

    Returns:
        dicts with ``id``, ``image_id``, ``category_id``, ``category_name``,
        ``rephrased_name``, ``colour``, ``bbox`` [x, y, w, h] and ``area`` (pixels) of the
        visible mask, and ``segmentation`` from :func:`masks.encode_exact`: polygons where
        they reproduce the mask exactly, else uncompressed RLE, so that the official
        loader's ``frPyObjects`` + ``decode`` gives back the mask pixel for pixel.
    """
    out = []
    for j, obj in enumerate(scene.objects):
        rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
        out.append({
            "id": image_id * MAX_OBJECTS_PER_IMAGE + j, "image_id": image_id,
            "category_id": CATEGORY_IDS[obj.shape], "category_name": obj.shape,
            "rephrased_name": obj.phrase, "colour": obj.colour,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "area": float(mask_utils.area(rle)), "segmentation": masklib.encode_exact(obj.mask),
        })
    return out


def lvis_image(scene: Scene, image_id: int, file_name: str) -> dict:
    """LVIS image dict: every category is exhaustively annotated; absent shapes are verified
    negatives."""
    present = {obj.shape for obj in scene.objects}
    h, w = scene.image.shape[:2]
    return {
        "id": image_id, "file_name": file_name, "height": int(h), "width": int(w),
        "not_exhaustive_category_ids": [],
        "neg_category_ids": [CATEGORY_IDS[s] for s in SHAPES if s not in present],
    }


def question_tuple(question: Question, anns: list[dict]) -> QuestionTuple:
    """(text, target ann ids, text answer, family, target phrases) of a question."""
    return (question.text, [anns[i]["id"] for i in question.targets], question.answer,
            question.family, list(question.phrases))


def muse_record(entry: Entry, questions: Sequence[QuestionTuple]) -> dict:
    """A MUSE record for one image with the given questions: the official fields plus
    ``target_phrases`` (per question, one phrase per target) and ``families``.

    As in MUSE, each entry of ``answers[q]`` is a full copy of the ``ann_list`` entry
    (segmentation, bbox...), not a reference: the official loader reads them directly.
    """
    by_id = {a["id"]: a for a in entry.anns}
    return {
        "file_name": entry.image["file_name"], "id": entry.image["id"],
        "height": entry.image["height"], "width": entry.image["width"],
        "ann_list": entry.anns,
        "questions": [q[0] for q in questions],
        "answers": [[dict(by_id[i]) for i in q[1]] for q in questions],
        "text_answers": [q[2] for q in questions],
        "target_phrases": [q[4] for q in questions],
        "families": [q[3] for q in questions],
    }


def frequency(image_count: int) -> str:
    """LVIS frequency bucket from the number of training images: r 1-10, c 11-100, f > 100."""
    return "r" if image_count <= 10 else ("c" if image_count <= 100 else "f")


def lvis_file(entries: Iterable[Entry], train_image_counts: Counter) -> dict:
    """An LVIS instances dict (images, annotations, categories) for some entries."""
    entries = list(entries)
    # ``colour`` is an extra key: LVIS readers ignore it, the LSeg family's colour labels use it
    anns = [{k: a[k] for k in ("id", "image_id", "category_id", "segmentation", "area", "bbox", "colour")}
            for e in entries for a in e.anns]
    image_count = Counter(c for e in entries for c in {a["category_id"] for a in e.anns})
    instance_count = Counter(a["category_id"] for a in anns)
    categories = [{
        "id": CATEGORY_IDS[s], "name": s, "synonyms": [s],
        "def": f"a flat {s} shape" + (f" with {CORNERS[s]} corners" if CORNERS[s] else ""),
        "synset": _SYNSETS.get(s, f"{s}.n.01"),
        "frequency": frequency(train_image_counts[CATEGORY_IDS[s]]),
        "image_count": image_count[CATEGORY_IDS[s]],
        "instance_count": instance_count[CATEGORY_IDS[s]],
    } for s in SHAPES]
    return {"images": [e.image for e in entries], "annotations": anns, "categories": categories}


def category_image_counts(entries: Iterable[Entry]) -> Counter:
    """category id -> number of images containing it."""
    return Counter(c for e in entries for c in {a["category_id"] for a in e.anns})


def target_stats(records: Sequence[dict]) -> dict:
    """Question/target statistics of a list of MUSE records.

    Returns:
        dict with ``images``, ``questions``, ``mean_targets``, ``zero_target_fraction``
        and ``histogram`` (list; bucket ``HIST_CAP`` holds ``HIST_CAP`` or more targets).
    """
    counts = np.array([len(a) for r in records for a in r["answers"]], dtype=np.int64)
    hist = np.bincount(np.minimum(counts, HIST_CAP), minlength=HIST_CAP + 1)
    return {
        "images": len(records), "questions": int(counts.size),
        "mean_targets": float(counts.mean()) if counts.size else 0.0,
        "zero_target_fraction": float((counts == 0).mean()) if counts.size else 0.0,
        "histogram": hist.tolist(),
    }
