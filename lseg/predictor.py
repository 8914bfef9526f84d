"""LSegPredictor: label an image with any label set, or answer a question as one query label.

``segment_labels(image, labels)`` gives a :class:`LabelMap` at the image's own size.
``predict(image, question)`` is LSeg as a baseline on the multi-target benchmark, as LISA's
paper scores open-vocabulary segmenters: the question is the query label against
``"other"``, and each connected component of its foreground is one target.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from pixellm.checkpoint import from_pretrained
from pixellm.decoder import postprocess_masks
from pixellm.describe import DescribesTargets
from pixellm.errors import InputError
from pixellm.image_io import ImageLike, preprocess_images
from pixellm.predictor import Prediction, Target, mask_bbox, mask_rle

from .config import OTHER

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class LabelMap:
    """labels: the label set, in the caller's order. index: (H, W) int, the argmax label per
    pixel at the image's original size. scores: (K, H, W) float softmax probabilities.
    masks: (K, H, W) bool, ``index == k``."""

    labels: list[str]
    index: np.ndarray
    scores: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        return self.index[None] == np.arange(len(self.labels))[:, None, None]

    def mask(self, label: str) -> np.ndarray:
        """The (H, W) bool mask of one label of the set."""
        if label not in self.labels:
            raise KeyError(f"{label!r} is not in the label set {self.labels}")
        return self.index == self.labels.index(label)


def check_labels(labels: Sequence[str]) -> list[str]:
    """A label set as a list; :class:`InputError` for a bare string, an empty set, an empty or
    non-string label, or duplicates (after stripping spaces)."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise InputError(f"labels must be a list of strings, got {type(labels).__name__}")
    if not labels:
        raise InputError("the label set is empty: give at least one label")
    out = []
    for i, lab in enumerate(labels):
        if not isinstance(lab, str) or not lab.strip():
            raise InputError(f"label {i} is empty or not a string: {lab!r}")
        out.append(lab.strip())
    dup = sorted({lab for lab in out if out.count(lab) > 1})
    if dup:
        raise InputError(f"duplicate labels in the label set: {dup}")
    return out


class LSegPredictor(DescribesTargets):
    """Runs a trained :class:`~pixellm.lseg.LSeg` on raw images: numpy in, numpy out.

    Args:
        model: a built LSeg with ``.config``.
        min_area: components of a question's foreground smaller than this many pixels (at the
            original size) go to ``Prediction.rejected`` (specks), not ``targets``.
    """

    def __init__(self, model, *, min_area: int = 4) -> None:
        if min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {min_area}")
        self.model = model.eval()
        self.cfg = model.config
        self.min_area = min_area

    @classmethod
    def from_pretrained(cls, directory, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **kw) -> LSegPredictor:
        """Load a checkpoint directory written by ``pixellm-train --model lseg-…``."""
        return cls(from_pretrained(directory, device=device, dtype=dtype), **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _preprocess(self, images: Sequence[ImageLike]) -> list:
        return preprocess_images(images, size=self.model.input_size, mean=self.cfg.vision.mean,
                                 std=self.cfg.vision.std)

    @torch.no_grad()
    def _label_maps(self, pre: list, label_sets: list[list[str]]) -> list[LabelMap]:
        dev, dtype = self.device, next(self.model.parameters()).dtype
        pixels = torch.stack([p.pixels for p in pre]).to(dev, dtype)
        out = self.model(pixels, label_sets)
        s = self.model.input_size
        maps = []
        for p, labels, logits in zip(pre, label_sets, out.logits):
            lg = postprocess_masks(logits.float(), padded_size=(s, s), valid_size=p.valid_size,
                                   original_size=p.original_size)  # (K, H, W)
            probs = lg.softmax(0)
            maps.append(LabelMap(list(labels), probs.argmax(0).cpu().numpy(), probs.cpu().numpy()))
        return maps

    def segment_labels(self, image: ImageLike, labels: Sequence[str]) -> LabelMap:
        """Label every pixel of ``image`` with one of ``labels``.

        Args:
            image: path, PIL image or numpy array (as :func:`pixellm.image_io.load_image`).
            labels: the label set, e.g. ``["other", "red circle", "ring"]``; include
                ``"other"`` for pixels none of the labels names (it is not added for you).
        Returns:
            :class:`LabelMap` at the image's original size.
        Raises:
            InputError: a bad image, an empty label set, an empty label, duplicate labels.
        """
        return self.segment_labels_batch([image], [labels])[0]

    def segment_labels_batch(self, images: Sequence[ImageLike], label_sets: Sequence[Sequence[str]]
                             ) -> list[LabelMap]:
        """:meth:`segment_labels` of ``label_sets[i]`` on ``images[i]``, in one forward pass."""
        if len(images) != len(label_sets):
            raise InputError(f"{len(images)} images but {len(label_sets)} label sets")
        sets = []
        for i, labels in enumerate(label_sets):
            try:
                sets.append(check_labels(labels))
            except InputError as e:
                raise InputError(f"batch item {i}: {e}") if len(images) > 1 else e from None
        return self._label_maps(self._preprocess(images), sets) if images else []

    def predict(self, image: ImageLike, question: str, *, describe: bool = False) -> Prediction:
        """The question as one query label against ``"other"``: each connected component
        (8-connected) of its pixels is a target (phrase: the question; score: the mean
        probability of the label over the component).

        ``describe``: describe each target (needs a describer, see :mod:`pixellm.describe`).

        Raises:
            InputError: a bad image, an empty question.
        """
        return self.predict_batch([image], [question], describe=describe)[0]

    def predict_batch(self, images: Sequence[ImageLike], questions: Sequence[str], *,
                      describe: bool = False) -> list[Prediction]:
        """:meth:`predict` for ``questions[i]`` about ``images[i]``, in one forward pass."""
        if isinstance(questions, str) or len(images) != len(questions):
            raise InputError("predict_batch needs equal-length sequences of images and questions")
        sets = []
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                msg = f"the question is empty: {q!r}"
                raise InputError(f"batch item {i}: {msg}" if len(images) > 1 else msg)
            if q.strip() == OTHER:
                raise InputError(f"batch item {i}: the question {q!r} is the background label")
            sets.append([OTHER, q.strip()])
        if not images:
            return []
        maps = self._label_maps(self._preprocess(images), sets)
        return self._describe_all([self._prediction(m) for m in maps], images, describe)

    def _prediction(self, lm: LabelMap) -> Prediction:
        query = lm.labels[1]
        components, n = ndimage.label(lm.index == 1, structure=EIGHT_CONNECTED)
        kept, small = [], []
        for c in range(1, n + 1):
            mask = components == c
            score = float(lm.scores[1][mask].mean())
            target = Target(query, mask, score, mask_bbox(mask), mask_rle(mask))
            (kept if int(mask.sum()) >= self.min_area else small).append(target)
        kept.sort(key=lambda t: (t.bbox[1], t.bbox[0]))  # reading order
        for k, t in enumerate(kept):
            t.index = k
        answer = f"{len(kept)} region{'s' if len(kept) != 1 else ''} labelled {query!r}."
        return Prediction(answer, kept, rejected=small)
