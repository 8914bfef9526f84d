"""Samples (MUSE-format records) -> model tensors (single questions or multi-turn conversations), and batch collation."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import InputError
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


def pack_turns(samples: Sequence, *, formatter: PromptFormatter, turns: int, seed: int = 0) -> list[list[int]]:
    """Group the questions of each image into conversations of at most ``turns`` turns.

    The questions of one image (same ``source`` and ``image_id``) are put in a seeded random
    order, then packed greedily: a conversation takes the next question while it has fewer
    than ``turns`` turns and the tokens still fit ``formatter.max_length``. Every sample lands
    in exactly one conversation; ``turns=1`` gives one conversation per sample.

    Returns:
        conversations as lists of indices into ``samples``, in order of first appearance.

    Raises:
        InputError: a single question + answer longer than the context (names the sample).
    """
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    by_image: dict[tuple, list[int]] = {}
    for i in range(len(samples)):
        s = samples[i]
        by_image.setdefault((s.source, s.image_id), []).append(i)
    out: list[list[int]] = []
    for g, idx in enumerate(by_image.values()):
        if turns > 1:
            idx = [idx[j] for j in np.random.default_rng([seed, g]).permutation(len(idx))]
        conv, used = [], 0
        for i in idx:
            s = samples[i]
            ans = len(formatter.answer_ids(s.answer))
            try:
                first = len(formatter.prompt_ids(s.question, reserve=ans)) + ans
            except InputError as e:
                raise InputError(f"{s.source} image {s.image_id} question {s.question_index}: {e}") from e
            extra = len(formatter.followup_ids(s.question)) + ans
            if conv and (len(conv) >= turns or used + extra > formatter.max_length):
                out.append(conv)
                conv, used = [], 0
            used += extra if conv else first
            conv.append(i)
        out.append(conv)
    return out


class ConversationDataset(Dataset):
    """Multi-turn training examples: one image, several of its questions in one sequence.

    The image tokens are paid once for all turns (as LLaVA-style conversations), which makes
    a training step see several questions for little more than one question's compute.

    Args:
        samples: any ``Sequence[Sample]``.
        groups: conversations as index lists into ``samples`` (see :func:`pack_turns`); all
            indices of a group must share the image.
        formatter, image_size, mean, std: as :class:`SegmentationDataset`.
    """

    def __init__(self, samples: Sequence, *, groups: Sequence[Sequence[int]], formatter: PromptFormatter,
                 image_size: int, mean: list[float], std: list[float]) -> None:
        self.samples, self.groups, self.formatter = samples, groups, formatter
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Encoded:
        turns = [self.samples[j] for j in self.groups[i]]
        pre = resize_longest_and_pad(load_image(turns[0].image_path), size=self.image_size,
                                     mean=self.mean, std=self.std)
        ids, labels = self.formatter.conversation([(s.question, s.answer) for s in turns])
        masks = torch.cat([resize_mask_to_input(s.masks(), size=self.image_size) for s in turns])
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
