"""Evaluation on Sample sequences: generated answers (the honest number) and teacher-forced masks."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import SegmentationDataset, collate
from .decoder import postprocess_masks
from .muse import MultiTargetIoU, ReferringIoU
from .predictor import Prediction, PixelLMPredictor


def _pred_masks(p: Prediction, h: int, w: int) -> torch.Tensor:
    if not p.targets:
        return torch.zeros(0, h, w, dtype=torch.bool)
    return torch.from_numpy(np.stack([t.mask for t in p.targets]))


def evaluate_generation(predictor: PixelLMPredictor, samples: Sequence, *, batch_size: int = 32,
                        limit: int = 0, progress: bool = True, keep_predictions: int = 0) -> dict:
    """Generate answers for ``samples`` and score them (DESIGN §5 multi-target metrics).

    Args:
        samples: :class:`pixellm.muse.Sample` sequence. limit: score the first N only (0: all).
        keep_predictions: return this many (sample, prediction) pairs for overlays.
    Returns:
        {"all": metrics, "zero_target": metrics on 0-target questions, "queries_per_s": float,
         "n": int, "examples": [(sample, Prediction), ...]}
    """
    import time

    n = min(len(samples), limit) if limit else len(samples)
    overall, zero = MultiTargetIoU(), MultiTargetIoU()
    examples, t0 = [], time.perf_counter()
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="eval", dynamic_ncols=True):
        batch = [samples[i] for i in range(start, min(n, start + batch_size))]
        preds = predictor.predict_batch([s.image_path for s in batch], [s.question for s in batch])
        for s, p in zip(batch, preds):
            gt = torch.from_numpy(s.masks())
            pm = _pred_masks(p, s.height, s.width)
            overall.update([pm], [gt])
            if gt.shape[0] == 0:
                zero.update([pm], [gt])
            if len(examples) < keep_predictions:
                examples.append((s, p))
    secs = time.perf_counter() - t0
    return {"all": overall.compute(), "zero_target": zero.compute() if zero.update_count else None,
            "queries_per_s": n / secs if secs else float("nan"), "n": n, "examples": examples}


@torch.no_grad()
def evaluate_teacher_forced(model, samples: Sequence, *, formatter, batch_size: int = 32,
                            limit: int = 0, progress: bool = True) -> dict:
    """LISA protocol: feed the ground-truth answer, align masks by order, gIoU/cIoU per mask.

    Returns:
        ReferringIoU metrics over all targets of the (first ``limit``) samples.
    """
    cfg = model.config
    ds = SegmentationDataset(samples, formatter=formatter, image_size=cfg.vision.image_size,
                             mean=cfg.vision.mean, std=cfg.vision.std)
    metric = ReferringIoU()
    n = min(len(samples), limit) if limit else len(samples)
    dev = next(model.parameters()).device
    s_ = cfg.vision.image_size
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="eval-tf", dynamic_ncols=True):
        idx = list(range(start, min(n, start + batch_size)))
        b = collate([ds[i] for i in idx], pad_id=formatter.tokenizer.pad_token_id)
        out = model(b["pixels"].to(dev), b["input_ids"].to(dev), b["attention_mask"].to(dev))
        for j, i in enumerate(idx):
            s = samples[i]
            logits = out.mask_logits[out.batch_index == j]
            if logits.shape[0] == 0:
                continue
            h, w = s.height, s.width
            scale = s_ / max(h, w)
            valid = (max(1, round(h * scale)), max(1, round(w * scale)))
            full = postprocess_masks(logits.float(), padded_size=(s_, s_), valid_size=valid, original_size=(h, w))
            metric.update([full > 0], [torch.from_numpy(s.masks())])
    return metric.compute()
