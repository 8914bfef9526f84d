"""Single-target referring expressions for LTS, from any MUSE-format source.

Every target phrase of a question names exactly one object of its image: a referring
question's phrases are unique expressions ("the leftmost shape", "the red shape"), and the
generated scenes draw each colour-shape pair at most once, so a name ("red circle") is unique
too; refCOCO's sentences are expressions by construction. Each distinct (image, phrase) is
one item, its target's mask the ground truth.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pixellm.errors import InputError
from pixellm.image_io import load_image, resize_longest_and_pad, resize_mask_to_input


@dataclass
class ExpressionItem:
    """pixels (3, S, S); ids: the expression's word ids; mask (S, S) float {0, 1}."""

    pixels: torch.Tensor
    ids: list[int]
    mask: torch.Tensor


def expression_index(samples: Sequence) -> list[tuple[int, int]]:
    """(sample index, phrase index) of each distinct (image, phrase) among ``samples``."""
    seen, out = set(), []
    for i in range(len(samples)):
        s = samples[i]
        for k, phrase in enumerate(s.phrases):
            key = (s.source, s.image_id, " ".join(phrase.lower().split()))
            if key not in seen:
                seen.add(key)
                out.append((i, k))
    return out


class ExpressionDataset(torch.utils.data.Dataset):
    """(image, expression, mask) items of :func:`expression_index`.

    Args:
        samples: MUSE-format samples. tokenizer: the word tokenizer. image_size, mean, std: the
            input side and normalisation. max_length: words kept per expression.
    Raises:
        InputError: no sample has a target.
    """

    def __init__(self, samples: Sequence, *, tokenizer, image_size: int, mean: list[float], std: list[float],
                 max_length: int) -> None:
        self.samples, self.tokenizer = samples, tokenizer
        self.image_size, self.mean, self.std, self.max_length = image_size, mean, std, max_length
        self.index = expression_index(samples)
        if not self.index:
            raise InputError("no referring expression: no sample has a target")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, j: int) -> ExpressionItem:
        i, k = self.index[j]
        s = self.samples[i]
        pre = resize_longest_and_pad(load_image(s.image_path), size=self.image_size, mean=self.mean, std=self.std)
        mask = resize_mask_to_input(s.masks()[k:k + 1], size=self.image_size)[0]
        ids = self.tokenizer(s.phrases[k], add_special_tokens=False)["input_ids"][: self.max_length]
        return ExpressionItem(pre.pixels, ids, mask)


def collate_expressions(batch: list[ExpressionItem], *, pad_id: int) -> dict:
    """pixels (B, 3, S, S), input_ids (B, T) padded with ``pad_id``, lengths (B,), gt_masks (B, S, S)."""
    t = max(1, max(len(b.ids) for b in batch))
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    for i, b in enumerate(batch):
        ids[i, : len(b.ids)] = torch.tensor(b.ids, dtype=torch.long)
    return {"pixels": torch.stack([b.pixels for b in batch]), "input_ids": ids,
            "lengths": torch.tensor([len(b.ids) for b in batch]), "gt_masks": torch.stack([b.mask for b in batch])}
