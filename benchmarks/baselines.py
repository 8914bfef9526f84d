"""Trivial baselines a segmentation model must beat, scored on the model's own questions.

Each baseline sees only the instance masks of the image (every annotated object, from the MUSE
record's ``ann_list``, an LVIS file or a COCO ``instances.json``) and, for the oracle, the
number of ground-truth targets; never the question. Randomness is seeded per (seed, question
position, baseline), so a baseline's score on question i does not depend on ``--limit``.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pixellm.evaluate import SplitScores
from pixellm.muse import masks as masklib

# (height, width, segmentations) of every annotated instance of one image
ImageInstances = tuple[int, int, list]


class InstanceIndex:
    """All instance masks of an image, by image id.

    Args:
        lookup: image id -> (H, W, COCO segmentations); raises KeyError for unknown ids.
        source: where the instances come from (for messages).
    """

    def __init__(self, lookup: Callable[[int], ImageInstances], *, source: str) -> None:
        self._lookup, self.source = lookup, source
        self._cache: tuple[int, np.ndarray] | None = None  # questions come grouped by image

    @classmethod
    def from_muse_json(cls, path: str | Path) -> InstanceIndex:
        """The ``ann_list`` of each record of a MUSE JSON file (image id as MuseDataset reads it)."""
        entries: dict[int, tuple[int, int, dict]] = {}
        for i, raw in enumerate(json.loads(Path(path).read_text(encoding="utf-8"))):
            key = int(raw.get("id", raw.get("image_id", i)))
            _, _, segs = entries.setdefault(key, (raw["height"], raw["width"], {}))
            segs.update({a["id"]: a["segmentation"] for a in raw["ann_list"]})  # dedupe by id

        def lookup(image_id: int) -> ImageInstances:
            h, w, segs = entries[image_id]
            return h, w, list(segs.values())

        return cls(lookup, source=str(path))

    @classmethod
    def from_lvis(cls, path: str | Path) -> InstanceIndex:
        """Every annotation of the image in an LVIS instances file (``lvis`` API)."""
        from pixellm.muse import LvisInstances

        lvis = LvisInstances(path)

        def lookup(image_id: int) -> ImageInstances:
            image = lvis.image(image_id)
            segs = [a["segmentation"] for a in lvis.annotations(image_id)]
            return image["height"], image["width"], segs

        return cls(lookup, source=str(path))

    @classmethod
    def from_coco(cls, path: str | Path) -> InstanceIndex:
        """Every annotation of the image in a COCO ``instances.json`` (pycocotools)."""
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            coco = COCO(str(path))

        def lookup(image_id: int) -> ImageInstances:
            image = coco.imgs[image_id]
            segs = [a["segmentation"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
            return image["height"], image["width"], segs

        return cls(lookup, source=str(path))

    def masks(self, image_id: int) -> np.ndarray:
        """All instances of image ``image_id``.

        Returns:
            bool (N, H, W), N >= 0, in annotation order.
        Raises:
            KeyError: the image is not in the source.
        """
        if self._cache is None or self._cache[0] != image_id:
            try:
                h, w, segs = self._lookup(image_id)
            except KeyError:
                raise KeyError(f"{self.source}: no image with id {image_id}") from None
            self._cache = (image_id, masklib.decode_many(segs, h, w))
        return self._cache[1]


# -- the baselines: (instances (N, H, W) bool, ground-truth count K, rng) -> (K', H, W) bool --
def every_object(instances: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Every instance of the image, whatever the question (K' = N)."""
    return instances


def one_random_object(instances: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly drawn instance (K' = 1; 0 when the image has none)."""
    if len(instances) == 0:
        return instances
    i = int(rng.integers(len(instances)))
    return instances[i:i + 1]


def oracle_count_random(instances: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K distinct random instances, K the ground-truth count (so K' = K always).

    Draws with replacement only when the image has fewer than K instances, and gives empty
    masks when it has none, so the count stays exact.
    """
    if k == 0 or len(instances) == 0:
        return np.zeros((k, *instances.shape[1:]), dtype=bool)
    return instances[rng.choice(len(instances), size=k, replace=k > len(instances))]


BASELINES: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "every_object": every_object,
    "one_random": one_random_object,
    "oracle_count_random": oracle_count_random,
}
LABELS = {
    "every_object": "every object in the scene",
    "one_random": "one random object",
    "oracle_count_random": "right number of random objects (oracle count)",
}


def evaluate_baselines(samples: Sequence, instances: InstanceIndex, *, limit: int = 0,
                       seed: int = 0, progress: bool = False) -> dict[str, dict]:
    """Score every baseline on the first ``limit`` samples (0: all), in order.

    Args:
        samples: :class:`pixellm.muse.Sample` sequence (the questions the model answered).
        instances: all instance masks of each sample's image.
        limit: number of questions, as given to :func:`pixellm.evaluate.evaluate_generation`.
        seed: base seed of the random baselines.
    Returns:
        baseline name -> {"all": metrics, "zero_target": metrics or None} (see
        :class:`pixellm.evaluate.SplitScores`).
    """
    n = min(len(samples), limit) if limit else len(samples)
    scores = {name: SplitScores() for name in BASELINES}
    for i in tqdm(range(n), disable=not progress, desc="baselines", dynamic_ncols=True):
        s = samples[i]
        gt, objects = s.masks(), instances.masks(s.image_id)
        if objects.shape[1:] != gt.shape[1:]:
            raise ValueError(f"{instances.source}: image {s.image_id} is {objects.shape[1:]} "
                             f"but its sample is {gt.shape[1:]}")
        for j, (name, baseline) in enumerate(BASELINES.items()):
            pred = baseline(objects, len(gt), np.random.default_rng([seed, i, j]))
            scores[name].update(torch.from_numpy(pred), torch.from_numpy(gt))
    return {name: sc.compute() for name, sc in scores.items()}
