"""DynRefer's training data: one item per described region of a regions file
(:mod:`pixellm.muse.regions`), with its image, its views and its targets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pixellm.image_io import load_image
from pixellm.muse.regions import RegionSet


def normalise_image(image: np.ndarray, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float, normalised."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def tag_vector(tags, vocabulary) -> torch.Tensor:
    """(T,) {0, 1} float: which vocabulary tags a region has."""
    present = set(tags)
    return torch.tensor([float(t in present) for t in vocabulary])


class RegionDataset(Dataset):
    """Regions of a :class:`~pixellm.muse.regions.RegionSet`, each with sampled views.

    Args:
        regions: the parsed regions file. images_root: where its ``file_name`` paths start.
        tags: the model's tag vocabulary. num_views: n. candidates: context-view parameters.
        random_views: sample the n - 1 context views (torch's generator, so a seeded run and
            its DataLoader workers repeat); False: the first n - 1 candidates.
        control_keep: probability that the ground-truth tags are given as control words.
        mean, std: pixel normalisation.
    Item: dict with ``image`` (3, H, W), ``size`` (2,) (W, H), ``box`` (4,) XYXY, ``ts`` (n,),
    ``tags`` (T,), ``caption`` str, ``control`` list of tags.
    """

    def __init__(self, regions: RegionSet, images_root: str | Path, *, tags, num_views: int,
                 candidates, random_views: bool, control_keep: float, mean, std) -> None:
        self.records, self.root = regions.records, Path(images_root)
        self.tags, self.num_views = list(tags), num_views
        self.candidates, self.random_views = list(candidates), random_views
        self.control_keep, self.mean, self.std = control_keep, mean, std

    def __len__(self) -> int:
        return len(self.records)

    def views(self) -> torch.Tensor:
        k = self.num_views - 1
        if k <= 0:
            return torch.zeros(1)
        if self.random_views:
            pick = torch.randperm(len(self.candidates))[:k].sort().values
            ctx = [self.candidates[int(i)] for i in pick]
        else:
            ctx = self.candidates[:k]
        return torch.tensor([0.0, *ctx])

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        image = load_image(self.root / rec.file_name)
        keep = bool(torch.rand(()) < self.control_keep)
        return {"image": normalise_image(image, self.mean, self.std),
                "size": torch.tensor([image.shape[1], image.shape[0]], dtype=torch.float32),
                "box": torch.tensor(rec.box, dtype=torch.float32), "ts": self.views(),
                "tags": tag_vector(rec.tags, self.tags), "caption": rec.caption,
                "control": [t for t in self.tags if t in rec.tags] if keep else []}


def pad_images(images: list[torch.Tensor]) -> torch.Tensor:
    """(3, H_i, W_i) tensors -> (B, 3, H, W), zero-padded right and bottom (0 is the mean)."""
    h = max(x.shape[1] for x in images)
    w = max(x.shape[2] for x in images)
    out = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, x in enumerate(images):
        out[i, :, : x.shape[1], : x.shape[2]] = x
    return out


def collate_regions(items: list[dict]) -> dict:
    """Items -> the keyword arguments of :meth:`DynRefer.forward`."""
    return {"images": pad_images([it["image"] for it in items]),
            "sizes": torch.stack([it["size"] for it in items]),
            "boxes": torch.stack([it["box"] for it in items]),
            "ts": torch.stack([it["ts"] for it in items]),
            "tags": torch.stack([it["tags"] for it in items]),
            "captions": [it["caption"] for it in items],
            "controls": [it["control"] for it in items]}
