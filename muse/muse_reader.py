"""Reader for MUSE-format JSON files (official layout, docs/design.md, Data formats), validated
at load time."""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

from . import masks as masklib
from .errors import DatasetFormatError, LenientReader, SkipReport
from .records import SEG, Sample, template_answer

_RECORD_FIELDS = ("height", "width", "ann_list", "questions", "answers")
_ANN_FIELDS = ("id", "category_id", "category_name", "bbox", "segmentation")


@dataclass(frozen=True)
class _Question:
    text: str
    targets: tuple[dict, ...]  # the resolved instance annotation of each answer, in order
    text_answer: str | None
    phrases: tuple[str, ...] | None  # from the optional "target_phrases" field


@dataclass(frozen=True)
class _Record:
    index: int
    image_path: pathlib.Path
    image_id: int
    height: int
    width: int
    questions: tuple[tuple[int, _Question], ...]  # (question index in the file, question)


class MuseDataset(LenientReader, Sequence[Sample]):
    """A lazy sequence of :class:`Sample`, one per (image, question) of a MUSE JSON file.

    Every record is validated when the file is loaded (cheap checks, no mask decoding);
    masks are decoded only when ``Sample.masks()`` is called. Target phrases are the
    instances' ``rephrased_name`` (else ``category_name``), unless the record carries the
    optional per-question ``target_phrases`` lists (written by ``pixellm-data``).

    Answers and segmentations come in every form real MUSE-style files hold:

    - an entry of ``answers[q]`` is a bare id, a reference ``{"id": ...}`` (older generated
      files), or a full instance annotation (official MUSE: a copy of the ``ann_list`` entry);
    - a full answer is used as it is: its own fields (``segmentation``, names...) win over
      the ``ann_list`` entry with the same id, as in the official loader, which reads only
      the answer; a full answer whose id is not in ``ann_list`` is an instance in its own
      right and is validated like an ``ann_list`` entry. A reference to an id missing from
      ``ann_list`` is an ``"unknown_instance"`` error;
    - ``segmentation`` is polygons, uncompressed RLE (``counts`` a list of ints) or
      compressed RLE (``counts`` a str or bytes).

    Args:
        json_path: a MUSE JSON file (a list of image records).
        image_root: folder the ``file_name`` / ``coco_url`` of the records resolve against.
        strict: raise :class:`DatasetFormatError` on the first bad record (default). With
            ``strict=False`` bad records (or single bad questions) are skipped and counted
            by reason in ``skipped``; ``report()`` lists them and a warning is emitted.
    """

    def __init__(
        self, json_path: str | pathlib.Path, image_root: str | pathlib.Path, *, strict: bool = True
    ) -> None:
        self.json_path = pathlib.Path(json_path)
        self.image_root = pathlib.Path(image_root)
        self.strict = strict
        self._file = str(self.json_path)
        self._skips = SkipReport(self._file)
        self._records: list[_Record] = []
        self._index: list[tuple[int, int]] = []  # (position in _records, position in questions)
        for i, raw in enumerate(_load_list(self.json_path)):
            self._add(i, raw)
        self._skips.warn()

    @property
    def num_images(self) -> int:
        """Number of image records kept."""
        return len(self._records)

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> list[Sample]: ...

    def __getitem__(self, i: int | slice) -> Sample | list[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        record_pos, question_pos = self._index[i]
        record = self._records[record_pos]
        q_index, question = record.questions[question_pos]
        return self._sample(record, q_index, question)

    def _sample(self, record: _Record, q_index: int, question: _Question) -> Sample:
        anns = question.targets
        phrases = question.phrases or tuple(phrase_of(a) for a in anns)
        answer = question.text_answer if question.text_answer is not None else (
            template_answer(phrases))
        loader = functools.partial(
            masklib.decode_checked, self._file, record.index,
            tuple(a["segmentation"] for a in anns), record.height, record.width,
        )
        return Sample(
            image_path=record.image_path, question=question.text, answer=answer,
            phrases=phrases, height=record.height, width=record.width,
            image_id=record.image_id, question_index=q_index, source=self._file,
            target_ids=tuple(int(a["id"]) for a in anns),
            names=tuple(phrase_of(a) for a in anns), _load_masks=loader,
        )

    def _add(self, index: int, raw: Any) -> None:
        try:
            record = self._parse_record(index, raw)
        except DatasetFormatError as err:
            if self.strict:
                raise
            self._skips.add(err, unit="record")
            return
        if record.questions:
            pos = len(self._records)
            self._records.append(record)
            self._index.extend((pos, q) for q in range(len(record.questions)))

    def _error(self, index: int, reason: str, detail: str) -> DatasetFormatError:
        return DatasetFormatError(self._file, index, reason, detail)

    def _parse_record(self, index: int, raw: Any) -> _Record:
        if not isinstance(raw, dict):
            raise self._error(index, "missing_field", "record is not a JSON object")
        missing = [f for f in _RECORD_FIELDS if f not in raw]
        if "file_name" not in raw and "coco_url" not in raw:
            missing.append("file_name|coco_url")
        if missing:
            raise self._error(index, "missing_field", f"missing field(s) {missing}")
        height, width = raw["height"], raw["width"]
        if not all(isinstance(v, int) and v > 0 for v in (height, width)):
            raise self._error(index, "missing_field", f"bad image size {height}x{width}")
        anns = self._parse_anns(index, raw["ann_list"], height, width)
        texts = self._check_lengths(index, raw, "text_answers")
        phrases = self._check_lengths(index, raw, "target_phrases")
        image_path = self._resolve_image(index, raw)
        questions = []
        for q, text in enumerate(raw["questions"]):
            try:
                questions.append((q, self._parse_question(index, q, text, raw["answers"][q],
                                                          texts[q], phrases[q], anns,
                                                          (height, width))))
            except DatasetFormatError as err:
                if self.strict:
                    raise
                self._skips.add(err, unit="question")
        image_id = int(raw.get("id", raw.get("image_id", index)))
        return _Record(index, image_path, image_id, height, width, tuple(questions))

    def _parse_anns(self, index: int, ann_list: Any, height: int, width: int) -> dict[int, dict]:
        if not isinstance(ann_list, list):
            raise self._error(index, "missing_field", "'ann_list' is not a list")
        anns: dict[int, dict] = {}
        for a, ann in enumerate(ann_list):
            self._check_ann(index, f"ann_list[{a}]", ann, height, width)
            anns[int(ann["id"])] = ann
        return anns

    def _check_ann(self, index: int, where: str, ann: Any, height: int, width: int) -> None:
        """Cheap checks of one instance annotation (no decoding); ``where`` locates it."""
        missing = [f for f in _ANN_FIELDS if not isinstance(ann, dict) or f not in ann]
        if missing:
            raise self._error(index, "missing_field", f"{where} lacks {missing}")
        problem = masklib.check_segmentation(ann["segmentation"], height, width) or (
            masklib.check_bbox(ann["bbox"], height, width))
        cat = ann["category_id"]
        if not problem and (not isinstance(cat, int) or isinstance(cat, bool) or cat < 1):
            problem = ("bad_category", f"category_id {cat!r} is not a positive integer")
        if problem:
            raise self._error(index, problem[0], f"{where} (id {ann['id']}): {problem[1]}")

    def _check_lengths(self, index: int, raw: dict, optional: str) -> list:
        """Questions and answers pair up; the optional per-question field, if present, too."""
        questions, answers = raw["questions"], raw["answers"]
        texts = raw.get(optional)
        if not isinstance(questions, list) or not isinstance(answers, list):
            raise self._error(index, "missing_field", "'questions'/'answers' must be lists")
        if len(answers) != len(questions):
            raise self._error(index, "answer_count", f"{len(questions)} questions but "
                              f"{len(answers)} answer lists")
        if texts is None:
            return [None] * len(questions)
        if not isinstance(texts, list) or len(texts) != len(questions):
            raise self._error(index, "answer_count", f"'{optional}' must hold one entry per "
                              "question")
        return texts

    def _parse_question(self, index: int, q: int, text: Any, answer: Any,
                        text_answer: Any, phrases: Any, anns: dict[int, dict],
                        size: tuple[int, int]) -> _Question:
        if not isinstance(text, str) or not isinstance(answer, list):
            raise self._error(index, "missing_field", f"question {q} is not a string with a "
                              "list of answers")
        targets = tuple(self._target(index, q, k, item, anns, size)
                        for k, item in enumerate(answer))
        if text_answer is not None and (
            not isinstance(text_answer, str) or text_answer.count(SEG) != len(targets)
        ):
            found = text_answer.count(SEG) if isinstance(text_answer, str) else "no"
            raise self._error(index, "placeholder_count", f"question {q}: text answer has "
                              f"{found} {SEG} placeholder(s) for {len(targets)} target(s)")
        if phrases is not None and (
            not isinstance(phrases, list) or len(phrases) != len(targets)
            or not all(isinstance(p, str) for p in phrases)
        ):
            raise self._error(index, "phrase_count", f"question {q}: target_phrases must hold "
                              f"one string per target ({len(targets)})")
        return _Question(text, targets, text_answer, tuple(phrases) if phrases else None)

    def _target(self, index: int, q: int, k: int, item: Any, anns: dict[int, dict],
                size: tuple[int, int]) -> dict:
        """The instance annotation of answer ``k`` of question ``q`` (see the class doc):
        the ``ann_list`` entry for a bare id or a reference, else the answer's own fields
        over that entry."""
        ann_id = item.get("id") if isinstance(item, dict) else item
        if not isinstance(ann_id, int) or isinstance(ann_id, bool):
            raise self._error(index, "missing_field", f"question {q}: answer {item!r} has no "
                              "integer 'id'")
        base = anns.get(ann_id)
        if not isinstance(item, dict) or (
            base is not None and all(base.get(f) == v for f, v in item.items())
        ):  # a reference, or a faithful copy: share the ann_list entry
            if base is None:
                raise self._error(index, "unknown_instance", f"question {q}: answer id "
                                  f"{ann_id} is not in ann_list")
            return base
        if base is None and "segmentation" not in item:
            raise self._error(index, "unknown_instance", f"question {q}: answer id {ann_id} "
                              "is not in ann_list and has no segmentation of its own")
        merged = {**(base or {}), **item}
        self._check_ann(index, f"question {q}: answer {k}", merged, *size)
        return merged

    def _resolve_image(self, index: int, raw: dict) -> pathlib.Path:
        candidates = image_candidates(raw, self.image_root)
        for path in candidates:
            if path.is_file():
                return path
        raise self._error(index, "missing_image", "image not found; tried "
                          + ", ".join(str(p) for p in candidates))


def image_candidates(raw: dict, root: pathlib.Path) -> list[pathlib.Path]:
    """Where the image of a record may live under ``root``, most likely first.

    ``file_name`` resolves to ``root/file_name`` or ``root/train2014/file_name`` (COCO
    train2014 naming); ``coco_url`` ``http://.../train2017/000000123.jpg`` resolves to
    ``root/train2017/000000123.jpg`` or ``root/000000123.jpg``.
    """
    if "file_name" in raw:
        name = str(raw["file_name"])
        return [root / name, root / "train2014" / name]
    parts = str(raw["coco_url"]).rstrip("/").split("/")
    return [root / parts[-2] / parts[-1], root / parts[-1]] if len(parts) > 1 else [root / parts[-1]]


def phrase_of(ann: dict) -> str:
    """The phrase of an instance: ``rephrased_name`` or ``category_name``, underscores as spaces."""
    name = ann.get("rephrased_name") or ann["category_name"]
    return str(name).replace("_", " ")


def load_split(root: str | pathlib.Path, split: str, *, strict: bool = True) -> MuseDataset:
    """Open a split of a generated dataset (``root/muse_<split>.json``, images in
    ``root/images``).

    Args:
        root: the ``--out`` folder of ``pixellm-data``.
        split: ``"train"``, ``"val"``, ``"test_less"``, ``"test_many"`` or ``"multi_ref"``.
        strict: see :class:`MuseDataset`.

    Returns:
        the split as a :class:`MuseDataset`.
    """
    root = pathlib.Path(root)
    return MuseDataset(root / f"muse_{split}.json", root / "images", strict=strict)


def _load_list(path: pathlib.Path) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(str(path), None, "bad_json", f"not valid JSON: {err}") from err
    if not isinstance(data, list):
        raise DatasetFormatError(str(path), None, "bad_json", "top level is not a list of records")
    return data

