"""Evaluation on Sample sequences: generated answers (the honest number) and teacher-forced masks.

Both loops score the first ``limit`` samples of a sequence, in order, so a benchmark can put
other predictors (e.g. trivial baselines) on exactly the same questions.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import SegmentationDataset, collate
from .decoder import postprocess_masks
from .errors import InputError
from .muse import MultiTargetIoU, ReferringIoU
from .muse.metrics import NUM_K_BUCKETS
from .predictor import PixelLMPredictor, Prediction


class SplitScores:
    """DESIGN §5 multi-target metrics over all questions and over the zero-target ones only."""

    def __init__(self) -> None:
        self.all, self.zero = MultiTargetIoU(), MultiTargetIoU()

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add one question: pred (Kp, H, W) and gt (Kg, H, W) bool masks (Kp, Kg may be 0)."""
        self.all.update([pred], [gt])
        if gt.shape[0] == 0:
            self.zero.update([pred], [gt])

    def compute(self) -> dict:
        """{"all": metrics, "zero_target": metrics or None when no question had 0 targets}."""
        return {"all": self.all.compute(),
                "zero_target": self.zero.compute() if self.zero.update_count else None}


def k_bucket(k: int) -> str:
    """The gIoU-by-K bucket name of a question with ``k`` targets ("0".."10", "11+")."""
    return str(k) if k < NUM_K_BUCKETS - 1 else f"{NUM_K_BUCKETS - 1}+"


def _count(samples: Sequence, limit: int) -> int:
    return min(len(samples), limit) if limit else len(samples)


def _batches(n: int, batch_size: int, progress: bool, desc: str) -> Iterator[list[int]]:
    """Consecutive index lists covering range(n), with a progress bar."""
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc=desc, dynamic_ncols=True):
        yield list(range(start, min(n, start + batch_size)))


def _pred_masks(targets: Sequence, h: int, w: int) -> torch.Tensor:
    if not targets:
        return torch.zeros(0, h, w, dtype=torch.bool)
    return torch.from_numpy(np.stack([t.mask for t in targets]))


def _norm(phrases: Sequence[str]) -> list[str]:
    return sorted(" ".join(p.lower().split()) for p in phrases)


def same_targets(predicted: Sequence[str], truth: Sequence[str]) -> bool:
    """Whether the answer names exactly the true targets: equal phrase multisets, compared
    case- and whitespace-insensitively, in any order (``[] == []`` for zero-target questions)."""
    return _norm(predicted) == _norm(truth)


def phrase_iou(predicted: Sequence[str], truth: Sequence[str]) -> float:
    """The question's IoU scored on the answer's text alone.

    Each named phrase stands for a perfect mask of the object it names: ``m / max(len(predicted),
    len(truth))`` with ``m`` the size of the phrase-multiset intersection (compared as
    :func:`same_targets`); 1.0 when both are empty. With phrases that identify the targets and
    targets that do not overlap (the generated data), this is exactly the Hungarian IoU term
    of perfect masks for the named objects. It is not a bound on the model's gIoU: a mask can
    find the right object under a wrong phrase.
    """
    if not predicted and not truth:
        return 1.0
    return sum((Counter(_norm(predicted)) & Counter(_norm(truth))).values()) / max(len(predicted), len(truth))


def _predict(predictor: PixelLMPredictor, batch: list, failures: list[str]) -> list[Prediction]:
    """Predict a batch; on a bad input retry one by one so only the bad question fails.

    A failed question (e.g. longer than the context) gets an empty prediction: it is still
    scored, as a miss, rather than silently dropped.
    """
    try:
        return predictor.predict_batch([s.image_path for s in batch], [s.question for s in batch])
    except InputError:
        pass
    out = []
    for s in batch:
        try:
            out.append(predictor.predict(s.image_path, s.question))
        except InputError as e:
            failures.append(f"{s.source} image {s.image_id} question {s.question_index}: {e}")
            out.append(Prediction("", []))
    return out


def evaluate_generation(predictor: PixelLMPredictor, samples: Sequence, *, batch_size: int = 32,
                        limit: int = 0, progress: bool = True, keep_predictions: int = 0) -> dict:
    """Generate answers for ``samples`` and score them (DESIGN §5 multi-target metrics).

    Args:
        predictor: the model to run (its device and dtype are used).
        samples: :class:`pixellm.muse.Sample` sequence.
        batch_size: questions per generation pass.
        limit: score the first N only (0: all).
        progress: show a tqdm bar.
        keep_predictions: return this many (sample, prediction) pairs for overlays.
    Returns:
        {"all": metrics, "zero_target": metrics on 0-target questions or None,
         "queries_per_s": float, "n": int, "n_failed": questions whose input was rejected
         (scored as empty predictions), "failures": their first messages, "n_malformed":
         answers with a dropped broken block, "target_phrase_acc": fraction of answers naming
         exactly the true targets (:func:`same_targets`), "phrase_giou": mean
         :func:`phrase_iou` (the answers' text scored as perfect masks of what they name),
         "with_duplicates": the "all" metrics of every block's mask (before the predictor's
         duplicate suppression), "n_duplicates": masks it dropped, "duplicate_iou": its
         threshold (None: off), "examples": [(sample, Prediction), ...]}. The text measures
         read every phrase of the answer, duplicates included.
    """
    n = _count(samples, limit)
    scores, examples, failures, malformed, named, text = SplitScores(), [], [], 0, 0, 0.0
    raw, n_dup = MultiTargetIoU(), 0
    t0 = time.perf_counter()
    for idx in _batches(n, batch_size, progress, "eval"):
        batch = [samples[i] for i in idx]
        for s, p in zip(batch, _predict(predictor, batch, failures), strict=True):
            gt = torch.from_numpy(s.masks())
            scores.update(_pred_masks(p.targets, s.height, s.width), gt)
            raw.update([_pred_masks(p.targets + p.duplicates, s.height, s.width)], [gt])
            n_dup += len(p.duplicates)
            malformed += bool(p.malformed)
            phrases = [t.phrase for t in p.targets + p.duplicates]
            named += same_targets(phrases, s.phrases)
            text += phrase_iou(phrases, s.phrases)
            if len(examples) < keep_predictions:
                examples.append((s, p))
    secs = time.perf_counter() - t0
    return {**scores.compute(), "queries_per_s": n / secs if secs else float("nan"), "n": n,
            "n_failed": len(failures), "failures": failures[:10], "n_malformed": malformed,
            "target_phrase_acc": named / n if n else float("nan"),
            "phrase_giou": text / n if n else float("nan"), "with_duplicates": raw.compute(),
            "n_duplicates": n_dup, "duplicate_iou": getattr(predictor, "duplicate_iou", None),
            "examples": examples}


def _encode(ds: SegmentationDataset, idx: list[int], skipped: list[str]) -> tuple[list, list]:
    """(kept indices, encoded examples) of a batch; too-long or 0-target questions are left out."""
    kept, enc = [], []
    for i in idx:
        if ds.samples[i].num_targets == 0:
            continue  # the gt answer has no block: nothing to align
        try:
            enc.append(ds[i])
            kept.append(i)
        except InputError as e:
            skipped.append(f"question {i}: {e}")
    return kept, enc


def _full_size_masks(model, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Decoder logits (K, h', w') -> (K, h, w) bool at the original size (resize-longest + pad)."""
    s_ = model.config.vision.image_size
    scale = s_ / max(h, w)
    valid = (max(1, round(h * scale)), max(1, round(w * scale)))
    return postprocess_masks(logits.float(), padded_size=(s_, s_), valid_size=valid,
                             original_size=(h, w)) > 0


@torch.no_grad()
def evaluate_teacher_forced(model, samples: Sequence, *, formatter, batch_size: int = 32,
                            limit: int = 0, progress: bool = True) -> dict:
    """LISA protocol: feed the ground-truth answer, align masks by order, gIoU/cIoU per mask.

    Zero-target questions have no mask to align and are counted, not scored; questions whose
    prompt + answer exceed the context are skipped and counted.

    Returns:
        ReferringIoU metrics {"giou", "ciou", "n_masks"} over all targets of the first
        ``limit`` samples, plus "giou_by_k" / "ciou_by_k" (masks of the questions with K
        targets pooled) and "n_by_k" (questions) per bucket, "n_questions" scored, "n_zero_target",
        "n_skipped", "skipped" (first messages) and "queries_per_s".
    """
    cfg = model.config
    ds = SegmentationDataset(samples, formatter=formatter, image_size=cfg.vision.image_size,
                             mean=cfg.vision.mean, std=cfg.vision.std)
    metric, by_k, n_by_k, skipped = ReferringIoU(), {}, {}, []
    n, dev = _count(samples, limit), next(model.parameters()).device
    t0 = time.perf_counter()
    for idx in _batches(n, batch_size, progress, "eval-tf"):
        kept, enc = _encode(ds, idx, skipped)
        if not kept:
            continue
        b = collate(enc, pad_id=formatter.tokenizer.pad_token_id)
        out = model(b["pixels"].to(dev), b["input_ids"].to(dev), b["attention_mask"].to(dev))
        for j, i in enumerate(kept):
            s, gt = samples[i], torch.from_numpy(samples[i].masks())
            logits = out.mask_logits[out.batch_index == j]
            if logits.shape[0] != gt.shape[0]:  # the forced answer always holds K blocks
                raise RuntimeError(f"{logits.shape[0]} blocks for {gt.shape[0]} targets: {s.answer!r}")
            pred = _full_size_masks(model, logits, s.height, s.width)
            metric.update([pred], [gt])
            bucket = k_bucket(gt.shape[0])
            by_k.setdefault(bucket, ReferringIoU()).update([pred], [gt])
            n_by_k[bucket] = n_by_k.get(bucket, 0) + 1
    secs = time.perf_counter() - t0
    order = sorted(by_k, key=lambda k: int(k.rstrip("+")))
    return {**metric.compute(), "giou_by_k": {k: by_k[k].compute()["giou"] for k in order},
            "ciou_by_k": {k: by_k[k].compute()["ciou"] for k in order},
            "n_by_k": {k: n_by_k[k] for k in order}, "n_questions": sum(n_by_k.values()),
            "n_zero_target": sum(samples[i].num_targets == 0 for i in range(n)),
            "n_skipped": len(skipped), "skipped": skipped[:10],
            "queries_per_s": n / secs if secs else float("nan")}
