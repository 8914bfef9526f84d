"""Samples (MUSE-format records) -> model tensors, and batch collation."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from .image_io import load_image, resize_longest_and_pad, resize_mask_to_input
from .prompting import PromptFormatter


@dataclass
class Encoded:
    """One training example: pixels (3, S, S); input_ids/labels (T,); masks (K, S, S) float."""

    pixels: torch.Tensor
    input_ids: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor


class SegmentationDataset(Dataset):
    """Wraps a sequence of :class:`pixellm.muse.Sample` for teacher-forced training.

    Args:
        samples: any ``Sequence[Sample]`` (MUSE, refCOCO, generated).
        formatter: prompt formatting for the model's tokenizer.
        image_size: model input side S. mean, std: normalisation.
    """

    def __init__(self, samples: Sequence, *, formatter: PromptFormatter, image_size: int,
                 mean: list[float], std: list[float]) -> None:
        self.samples, self.formatter = samples, formatter
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Encoded:
        s = self.samples[i]
        pre = resize_longest_and_pad(load_image(s.image_path), size=self.image_size, mean=self.mean, std=self.std)
        ids, labels = self.formatter.training_pair(s.question, s.answer)
        masks = resize_mask_to_input(s.masks(), size=self.image_size)
        return Encoded(pre.pixels, torch.tensor(ids), torch.tensor(labels), masks)


def collate(batch: list[Encoded], *, pad_id: int) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Right-pad a list of :class:`Encoded` into model inputs.

    Returns:
        dict with pixels (B, 3, S, S), input_ids (B, T), attention_mask (B, T), labels (B, T),
        gt_masks: list of (K_b, S, S).
    """
    t = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), -100, dtype=torch.long)
    attn = torch.zeros(len(batch), t, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n], labels[i, :n], attn[i, :n] = e.input_ids, e.labels, 1
    return {"pixels": torch.stack([e.pixels for e in batch]), "input_ids": ids,
            "attention_mask": attn, "labels": labels, "gt_masks": [e.masks for e in batch]}


def left_pad(rows: list[list[int]], *, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompt id lists for batched generation -> (input_ids, attention_mask), (B, T)."""
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    attn = torch.zeros(len(rows), t, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], attn[i, t - len(r):] = torch.tensor(r, dtype=torch.long), 1
    return ids, attn
