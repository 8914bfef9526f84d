"""The one sample type every reader yields, and the answer templates."""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

SEG = "{seg}"
# Answer of a question whose target set is empty (no placeholder, hence no mask).
NO_TARGET_ANSWER = "No target matches."


@dataclass(frozen=True)
class Sample:
    """One question about one image, with one mask per target.

    Attributes:
        image_path: the image file.
        question: the question text.
        answer: answer text with exactly one ``"{seg}"`` after each target phrase, in order.
        phrases: the target phrases, in answer order (``len == num_targets``).
        height: image height H in pixels.
        width: image width W in pixels.
        image_id: id of the image in its source dataset.
        question_index: index of the question among the image's questions.
        source: name of the file or split the sample came from.
        target_ids: annotation ids of the targets, in answer order (may be empty).
        names: the targets' instance names (``rephrased_name``, else ``category_name``), in
            answer order; empty when the source has none. They differ from ``phrases`` in
            referring questions, whose phrases are expressions ("the leftmost shape").
    """

    image_path: pathlib.Path
    question: str
    answer: str
    phrases: tuple[str, ...]
    height: int
    width: int
    image_id: int
    question_index: int
    source: str
    target_ids: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    # Zero-argument loader so masks are decoded on access, never at load time.
    _load_masks: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def num_targets(self) -> int:
        """Number of targets K (number of ``{seg}`` placeholders)."""
        return len(self.phrases)

    def masks(self) -> np.ndarray:
        """Decode the target masks.

        Returns:
            bool array of shape (K, H, W), one mask per target in answer order; (0, H, W)
            for a question without targets.
        """
        if self._load_masks is None or self.num_targets == 0:
            return np.zeros((0, self.height, self.width), dtype=bool)
        masks = self._load_masks()
        expected = (self.num_targets, self.height, self.width)
        if masks.shape != expected:
            raise ValueError(f"{self.source}: masks of shape {masks.shape}, expected {expected}")
        return masks

    def load_image(self) -> np.ndarray:
        """Read the image.

        Returns:
            uint8 array of shape (H, W, 3), RGB.
        """
        from PIL import Image  # local: most users of Sample never touch pixels here

        with Image.open(self.image_path) as image:
            return np.asarray(image.convert("RGB"))


def join_phrases(items: Sequence[str]) -> str:
    """Join ``["a", "b", "c"]`` as ``"a, b and c"`` (no Oxford comma)."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def template_answer(phrases: Sequence[str], *, empty: str = NO_TARGET_ANSWER) -> str:
    """Build an answer with one placeholder per target.

    Args:
        phrases: target phrases in answer order.
        empty: the answer used when there is no target.

    Returns:
        ``"X {seg}."``, ``"X {seg} and Y {seg}."``, ``"X {seg}, Y {seg} and Z {seg}."``...
        or ``empty`` for no phrase.
    """
    if not phrases:
        return empty
    return join_phrases([f"{p} {SEG}" for p in phrases]) + "."


def multi_question(expressions: Sequence[str]) -> str:
    """``"What are A, B and C in this image?"`` (``"What is A in this image?"`` for one)."""
    verb = "is" if len(expressions) == 1 else "are"
    return f"What {verb} {join_phrases(expressions)} in this image?"


def merge_targets(sample: Sample) -> Sample:
    """The sample as original LISA answers it: one placeholder after all target phrases, whose
    mask is the union of the targets' masks (zero targets stay zero).

    Returns:
        ``sample`` unchanged with 0 or 1 target; else ``"X, Y and Z {seg}."``-style answers
        (every placeholder but the last removed) with one phrase (the phrases joined) and one
        (1, H, W) mask.
    """
    if sample.num_targets <= 1:
        return sample
    head, _, tail = sample.answer.rpartition(SEG)
    answer = " ".join(re.sub(r"\s*" + re.escape(SEG), "", head).split()) + " " + SEG + tail
    load = sample._load_masks
    return dataclasses.replace(
        sample, answer=answer, phrases=(join_phrases(sample.phrases),), target_ids=(),
        names=(), _load_masks=None if load is None else (lambda: load().any(0, keepdims=True)))
