"""refCOCO / refCOCO+ / refCOCOg readers (official layout, docs/design.md, Data formats) and
multi-referring."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import pathlib
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import masks as masklib
from .errors import DatasetFormatError, LenientReader, SkipReport
from .records import Sample, multi_question, template_answer


@dataclass(frozen=True)
class Ref:
    """One referred object with its expressions.

    Attributes:
        ref_id: id of the ref.
        ann_id: COCO annotation id of the object.
        image_id: COCO image id.
        sentences: its referring expressions.
        image_path: the image file.
        height: image height H.
        width: image width W.
        segmentation: the COCO segmentation of the object (polygons or RLE).
    """

    ref_id: int
    ann_id: int
    image_id: int
    sentences: tuple[str, ...]
    image_path: pathlib.Path
    height: int
    width: int
    segmentation: Any


class RefCocoDataset(LenientReader, Sequence[Sample]):
    """Single-target referring samples, one per expression of the refs of a split.

    Reads ``root/<dataset>/refs(<split_by>).p`` and ``root/<dataset>/instances.json``
    (through ``pycocotools.coco.COCO``); images live in ``root/images/`` (COCO train2014
    ``file_name``; ``root/images/train2014/`` is tried too).

    Args:
        root: the refer data root.
        dataset: ``"refcoco"``, ``"refcoco+"`` or ``"refcocog"``.
        split_by: ``"unc"`` (refCOCO, refCOCO+) or ``"umd"`` / ``"google"`` (refCOCOg).
        split: ``"train"``, ``"val"``, ``"testA"``, ``"testB"``, ``"test"``.
        strict: raise :class:`DatasetFormatError` on a bad ref; else skip and count it.
    """

    def __init__(self, root: str | pathlib.Path, *, dataset: str = "refcoco",
                 split_by: str = "unc", split: str = "val", strict: bool = True) -> None:
        self.root = pathlib.Path(root)
        self.name = f"{dataset}({split_by})/{split}"
        self.strict = strict
        self._refs_file = self.root / dataset / f"refs({split_by}).p"
        self._skips = SkipReport(str(self._refs_file))
        with open(self._refs_file, "rb") as f:
            raw_refs = pickle.load(f)
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            from pycocotools.coco import COCO

            self._coco = COCO(str(self.root / dataset / "instances.json"))
        self.refs: list[Ref] = []
        for i, raw in enumerate(raw_refs):
            if isinstance(raw, dict) and raw.get("split") == split:
                self._add(i, raw)
        self._index = [(r, s) for r, ref in enumerate(self.refs) for s in range(len(ref.sentences))]
        self._skips.warn()

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        r, s = self._index[i]
        ref = self.refs[r]
        sentence = ref.sentences[s]
        return make_sample(self.name, [ref], [sentence], question=sentence, question_index=s)

    def _add(self, index: int, raw: dict) -> None:
        try:
            self.refs.append(self._parse(index, raw))
        except DatasetFormatError as err:
            if self.strict:
                raise
            self._skips.add(err, unit="record")

    def _parse(self, index: int, raw: dict) -> Ref:
        def fail(reason: str, detail: str) -> DatasetFormatError:
            return DatasetFormatError(str(self._refs_file), index, reason, detail)

        missing = [k for k in ("ref_id", "ann_id", "image_id", "sentences") if k not in raw]
        if missing:
            raise fail("missing_field", f"ref lacks {missing}")
        sentences = tuple(str(s.get("sent", "")).strip() for s in raw["sentences"])
        if not sentences or not all(sentences):
            raise fail("missing_field", "ref without sentences[*].sent")
        ann = self._coco.anns.get(raw["ann_id"])
        image = self._coco.imgs.get(raw["image_id"])
        if ann is None or image is None or ann["image_id"] != raw["image_id"]:
            raise fail("unknown_instance", f"ann {raw['ann_id']} / image {raw['image_id']} not "
                       "in instances.json")
        h, w = int(image["height"]), int(image["width"])
        problem = masklib.check_segmentation(ann["segmentation"], h, w)
        if problem:
            raise fail(problem[0], f"ann {raw['ann_id']}: {problem[1]}")
        path = self._image_path(image["file_name"])
        if path is None:
            raise fail("missing_image", f"image {image['file_name']} not under {self.root}/images")
        return Ref(int(raw["ref_id"]), int(raw["ann_id"]), int(raw["image_id"]), sentences,
                   path, h, w, ann["segmentation"])

    def _image_path(self, file_name: str) -> pathlib.Path | None:
        for path in (self.root / "images" / file_name, self.root / "images" / "train2014" / file_name):
            if path.is_file():
                return path
        return None


def make_sample(source: str, refs: Sequence[Ref], expressions: Sequence[str], *,
                question: str, question_index: int) -> Sample:
    """A sample whose targets are ``refs`` (one image), phrased by ``expressions`` in order."""
    first = refs[0]
    loader = functools.partial(masklib.decode_checked, source, None,
                               tuple(r.segmentation for r in refs), first.height, first.width)
    return Sample(
        image_path=first.image_path, question=question, answer=template_answer(expressions),
        phrases=tuple(expressions), height=first.height, width=first.width,
        image_id=first.image_id, question_index=question_index, source=source,
        target_ids=tuple(r.ann_id for r in refs), _load_masks=loader,
    )


def multi_referring(dataset: RefCocoDataset, *,
                    group_sizes: Sequence[int] = (6, 5, 4)) -> list[Sample]:
    """Join several expressions of each image into one multi-target question (docs/design.md,
    Data formats).

    Round ``j`` of an image takes the ``j``-th expression of each of its refs that has one,
    so the targets of a group are distinct objects; each round is cut into groups whose sizes
    cycle through ``group_sizes`` (the cycle runs on across images; a group is cut short at
    the end of a round).

    Args:
        dataset: a loaded :class:`RefCocoDataset`.
        group_sizes: sizes of consecutive groups, cycled.

    Returns:
        samples with question "What are A, B and C in this image?" and one target per
        expression, in order.
    """
    sizes = itertools.cycle(group_sizes)
    by_image: dict[int, list[Ref]] = {}
    for ref in dataset.refs:
        by_image.setdefault(ref.image_id, []).append(ref)
    samples: list[Sample] = []
    for refs in by_image.values():
        for j in range(max(len(r.sentences) for r in refs)):
            round_refs = [r for r in refs if len(r.sentences) > j]
            for group in _chunks(round_refs, sizes):
                expressions = [r.sentences[j] for r in group]
                samples.append(make_sample(
                    f"{dataset.name}/multi", group, expressions,
                    question=multi_question(expressions), question_index=len(samples)))
    return samples


def _chunks(items: list[Ref], sizes: Iterator[int]) -> list[list[Ref]]:
    out, start = [], 0
    while start < len(items):  # draw a size only when a group is really made
        size = next(sizes)
        out.append(items[start:start + size])
        start += size
    return out
