"""Dense label maps for LSeg from LVIS instance files, and its zero-shot label sets.

Each annotated object of an image gets a label of one *kind*:

- ``category``: its LVIS category name (the generated shapes: "circle", "ring", ...);
- ``colour``: its colour word (the generated files carry a ``colour`` per annotation);
- ``pair``: "colour category" ("red circle").

A training item is an image and one kind: the label set is every seen label of that kind
plus ``"other"``, and each pixel's target is the label of the object painted there (the
visible masks of the generated scenes do not overlap; where real masks do, the later
annotation wins), ``"other"`` elsewhere, ignored (-100) in the padding.

Zero-shot (the paper's protocol, few-shot style): a label is scored with the binary set
``["other", label]`` on every evaluation image that holds it. The unseen labels are the
held-out colour-shape compositions (never drawn in a training image) and the words of
:data:`UNSEEN_WORDS`, never used in training, each with the seen labels whose union it names.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixellm.errors import InputError
from pixellm.image_io import load_image, resize_longest_and_pad, resize_mask_to_input
from pixellm.muse.lvis_reader import LvisInstances

from .config import OTHER

KINDS = ("category", "colour", "pair")
IGNORE = -100

# Unseen words -> the seen labels whose union is their ground truth: synonyms and hypernyms,
# never used in training, each of which the frozen MiniLM places nearest to one of its targets
# among the labels of its kind (tests/test_lseg.py checks it). Not kept: "crimson" (MiniLM puts
# it nearer "purple" than "red"), "rhombus" (nearer "square"), and words holding a trained one
# ("dark red", "circular shape", "starburst").
UNSEEN_WORDS: dict[str, tuple[str, ...]] = {
    "violet": ("purple",),
    "lavender": ("purple",),
    "tangerine": ("orange",),
    "amber": ("orange",),
    "round shape": ("circle",),
    "oval": ("circle",),
    "polygon": ("triangle", "square", "hexagon", "diamond"),
    "hoop": ("ring",),
    "asterisk": ("star",),
    "six-sided shape": ("hexagon",),
}


@dataclass
class LabelItem:
    """pixels (3, S, S) normalised; labels: the label set (``labels[0] == "other"``);
    target (S, S) long: label index per pixel, -100 in the padding."""

    pixels: torch.Tensor
    labels: list[str]
    target: torch.Tensor


def object_labels(ann: dict, categories: dict[int, dict]) -> dict[str, str]:
    """An annotation's label per kind (``colour`` / ``pair`` only when it has a colour)."""
    name = categories[ann["category_id"]]["name"].replace("_", " ")
    out = {"category": name}
    if ann.get("colour"):
        out["colour"] = ann["colour"]
        out["pair"] = f"{ann['colour']} {name}"
    return out


class LabelMapSource:
    """An LVIS instance file's images with their objects' labels of every kind.

    Args:
        path: ``lvis_instances_<split>.json``; images are read relative to its folder
            (``images/<file_name>``, the generated layout) or as given.
    Raises:
        InputError: no such file, or an image without a file name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"LVIS instance file not found: {self.path}")
        self.lvis = LvisInstances(self.path)
        self.image_ids = self.lvis.image_ids
        self.categories = self.lvis.categories
        self._labels = [[object_labels(a, self.categories) for a in self.lvis.annotations(i)]
                        for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, i: int) -> Path:
        name = self.lvis.image(self.image_ids[i]).get("file_name")
        if not name:
            raise InputError(f"{self.path}: image {self.image_ids[i]} has no file_name")
        for p in (self.path.parent / "images" / name, self.path.parent / name):
            if p.is_file():
                return p
        return self.path.parent / "images" / name

    def labels(self, i: int, kind: str) -> list[str | None]:
        """Image ``i``'s objects' labels of ``kind`` (None for an object without one)."""
        return [lab.get(kind) for lab in self._labels[i]]

    def vocabulary(self, kind: str) -> list[str]:
        """Every label of ``kind`` present in the file, sorted."""
        return sorted({lab[kind] for labs in self._labels for lab in labs if kind in lab})

    def masks(self, i: int) -> np.ndarray:
        """(N, H, W) bool visible masks of image ``i``'s objects, in file order."""
        anns = self.lvis.annotations(self.image_ids[i])
        img = self.lvis.image(self.image_ids[i])
        if not anns:
            return np.zeros((0, img["height"], img["width"]), dtype=bool)
        return np.stack([self.lvis.mask(a["id"]) for a in anns])

    def has_kind(self, kind: str) -> bool:
        return any(kind in lab for labs in self._labels for lab in labs)


def paint(masks: torch.Tensor, object_labels: Sequence[str | None], labels: Sequence[str],
          valid: tuple[int, int]) -> torch.Tensor:
    """Label-index map (S, S) long: object k's pixels get ``labels.index(object_labels[k])``
    (later objects over earlier; an object whose label is None or not in ``labels`` counts as
    ``"other"``, index 0), background 0, outside ``valid`` (h, w) -100.

    Args:
        masks: (N, S, S) {0, 1} at the input side.
    """
    index = {lab: j for j, lab in enumerate(labels)}
    target = torch.zeros(masks.shape[-2:], dtype=torch.long)
    for m, lab in zip(masks, object_labels, strict=True):
        target[m > 0.5] = index.get(lab, 0) if lab is not None else 0
    h, w = valid
    target[h:, :] = IGNORE
    target[:, w:] = IGNORE
    return target


class LabelMapDataset(torch.utils.data.Dataset):
    """Training items: (image, kind) pairs, every image once per kind it has labels of.

    An item's label set is the kind's whole seen vocabulary, or (with probability ``subset``)
    a few of its labels: 1-3 of those present in the image and 0-2 absent ones. Pixels of an
    object whose label is left out are ``"other"``, so ``"other"`` learns to mean "none of
    the labels asked", as the binary ``["other", label]`` sets of the zero-shot protocol use it,
    not only "background". The choice is seeded by ``seed`` and the item's index.

    Args:
        source: a :class:`LabelMapSource` (the training split). image_size, mean, std: the
            input side and normalisation. kinds: the label kinds trained (default all the
            source has). exclude: labels never trained on (pixels of such an object count as
            ``"other"``; the generated training images hold no held-out pair anyway).
        subset: probability of a sampled label subset (0: always the whole vocabulary).
        seed: the subsets' seed.
    """

    def __init__(self, source: LabelMapSource, *, image_size: int, mean: list[float], std: list[float],
                 kinds: Sequence[str] = KINDS, exclude: Sequence[str] = (), subset: float = 0.5,
                 seed: int = 0) -> None:
        if not 0.0 <= subset <= 1.0:
            raise ValueError(f"subset must be in [0, 1], got {subset}")
        self.subset, self.seed = subset, seed
        self.source, self.image_size, self.mean, self.std = source, image_size, mean, std
        self.kinds = [k for k in kinds if source.has_kind(k)]
        if not self.kinds or not len(source):
            raise InputError(f"{source.path}: no image with labels of kinds {list(kinds)}")
        ex = set(exclude)
        self.label_sets = {k: [OTHER] + [v for v in source.vocabulary(k) if v not in ex and v != OTHER]
                           for k in self.kinds}

    def __len__(self) -> int:
        return len(self.source) * len(self.kinds)

    def __getitem__(self, idx: int) -> LabelItem:
        i, kind = divmod(idx, len(self.kinds))
        kind = self.kinds[kind]
        pre = resize_longest_and_pad(load_image(self.source.image_path(i)), size=self.image_size,
                                     mean=self.mean, std=self.std)
        masks = resize_mask_to_input(self.source.masks(i), size=self.image_size)
        objects = self.source.labels(i, kind)
        labels = self.label_set(idx, kind, objects)
        return LabelItem(pre.pixels, labels, paint(masks, objects, labels, pre.valid_size))

    def label_set(self, idx: int, kind: str, objects: Sequence[str | None]) -> list[str]:
        """Item ``idx``'s label set (``"other"`` first): the whole vocabulary of ``kind``, or a
        seeded subset of it (see the class)."""
        vocab = self.label_sets[kind]
        rng = np.random.default_rng((self.seed, idx))
        if rng.random() >= self.subset:
            return vocab
        present = sorted({lab for lab in objects if lab in vocab[1:]})
        absent = [lab for lab in vocab[1:] if lab not in present]
        chosen = []
        if present:
            chosen += list(rng.choice(present, size=int(rng.integers(1, min(3, len(present)) + 1)), replace=False))
        if absent:
            chosen += list(rng.choice(absent, size=min(int(rng.integers(0, 3)), len(absent)), replace=False))
        return [OTHER] + sorted(str(c) for c in chosen) if chosen else vocab


def collate_label_maps(batch: list[LabelItem]) -> dict:
    """pixels (B, 3, S, S), label_sets (B lists), target (B, S, S)."""
    return {"pixels": torch.stack([b.pixels for b in batch]), "label_sets": [b.labels for b in batch],
            "target": torch.stack([b.target for b in batch])}


def held_out_pairs(root: str | Path) -> list[str]:
    """The generated dataset's held-out compositions as pair labels ("purple triangle")."""
    meta = Path(root) / "meta.json"
    try:
        pairs = json.loads(meta.read_text())["held_out_pairs"]
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"cannot read the held-out pairs from {meta}: {e}") from e
    return [f"{c} {s}" for c, s in pairs]
