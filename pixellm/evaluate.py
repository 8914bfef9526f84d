"""Evaluation on Sample sequences: generated answers (the honest number) and teacher-forced masks.

Both loops score the first ``limit`` samples of a sequence, in order, so a benchmark can put
other predictors (e.g. trivial baselines) on exactly the same questions.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torchmetrics.classification import BinaryAUROC, BinaryCalibrationError
from tqdm.auto import tqdm

from .data import SegmentationDataset, collate
from .decoder import postprocess_masks
from .errors import InputError
from .image_io import resized_size
from .muse import MultiTargetIoU, ReferringIoU
from .muse.metrics import NUM_K_BUCKETS, hungarian, pair_stats
from .predictor import PixelLMPredictor, Prediction


class SplitScores:
    """Multi-target metrics (docs/design.md, Metrics) over all questions and over the zero-target
    ones only."""

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


def target_hits(pred: torch.Tensor, gt: torch.Tensor, *, threshold: float = 0.5) -> list[bool]:
    """Which predicted masks are hits: Hungarian-matched to a ground truth with IoU >= threshold.

    The matching is :class:`~pixellm.muse.MultiTargetIoU`'s (:func:`~pixellm.muse.metrics.hungarian`
    on :func:`~pixellm.muse.metrics.pair_stats`), so the hits of a question are its
    ``precision50`` true positives.

    Args:
        pred: (Kp, H, W) bool masks (or float logits); Kp may be 0.
        gt: (Kg, H, W) bool masks of the same size; Kg may be 0.
        threshold: the IoU a matched pair needs.

    Returns:
        Kp booleans in prediction order (all False when Kg = 0).
    """
    hits = [False] * pred.shape[0]
    if pred.shape[0] and gt.shape[0]:
        iou = pair_stats(pred, gt)[2]  # (Kp, Kg) float64
        for r, c in zip(*hungarian(iou), strict=True):
            hits[int(r)] = bool(iou[r, c] >= threshold)
    return hits


class ScoreQuality:
    """How well per-target confidences tell hits (:func:`target_hits`) from misses: the AUROC
    and the expected calibration error (torchmetrics; 10 equal-width bins, L1 norm)."""

    def __init__(self, *, n_bins: int = 10) -> None:
        self.auroc = BinaryAUROC()
        self.ece = BinaryCalibrationError(n_bins=n_bins, norm="l1")
        self.n, self.n_hits = 0, 0

    def update(self, scores: Sequence[float], hits: Sequence[bool]) -> None:
        """Add targets: their scores in [0, 1] (clipped) and whether each is a hit."""
        if len(scores) != len(hits):
            raise ValueError(f"{len(scores)} scores for {len(hits)} hit flags")
        if not scores:
            return
        conf = torch.tensor(scores, dtype=torch.float32).clamp(0.0, 1.0)  # (n,)
        hit = torch.tensor(hits, dtype=torch.long)  # (n,)
        self.auroc.update(conf, hit)
        self.ece.update(conf, hit)
        self.n, self.n_hits = self.n + len(scores), self.n_hits + int(hit.sum())

    def compute(self) -> dict:
        """{"auroc", "ece", "n": targets, "n_hits", "note"}: NaN where undefined (no target:
        both; all hits or all misses: the AUROC), with the reason in "note" (else None)."""
        out = {"auroc": math.nan, "ece": math.nan, "n": self.n, "n_hits": self.n_hits, "note": None}
        if self.n == 0:
            return {**out, "note": "no kept predicted target to score"}
        out["ece"] = float(self.ece.compute())
        if self.n_hits in (0, self.n):
            kind = "hits" if self.n_hits else "misses"
            return {**out, "note": f"AUROC undefined: all {self.n} kept targets are {kind}"}
        return {**out, "auroc": float(self.auroc.compute())}


def zero_target_rate(predicted_counts: Sequence[int], true_counts: Sequence[int]) -> float:
    """Share of the zero-target questions answered with no (kept) mask.

    Args:
        predicted_counts: per question, the number of kept predicted targets.
        true_counts: per question, the number of true targets.

    Returns:
        a fraction in [0, 1]; NaN when no question has zero targets.
    """
    zero = [p for p, t in zip(predicted_counts, true_counts, strict=True) if t == 0]
    return sum(p == 0 for p in zero) / len(zero) if zero else math.nan


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], *, left: int = 1) -> list[str]:
    """Markdown table lines: the header, the alignment row (the first ``left`` (text) columns
    left-aligned, the others, numbers, right-aligned) and one line per row (cells as ``str``)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * left + "---:|" * (len(header) - left),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


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


ARTICLES = ("the", "a", "an")


def _norm(phrases: Sequence[str]) -> list[str]:
    """Phrases lower-cased, whitespace collapsed, one leading article dropped; sorted."""
    out = []
    for p in phrases:
        words = p.lower().split()
        if len(words) > 1 and words[0] in ARTICLES:
            words = words[1:]
        out.append(" ".join(words))
    return sorted(out)


def same_targets(predicted: Sequence[str], truth: Sequence[str]) -> bool:
    """Whether the answer names exactly the true targets: equal phrase multisets, compared
    case- and whitespace-insensitively and without a leading article ("The blue triangle" ==
    "blue triangle"), in any order (``[] == []`` for zero-target questions)."""
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


class GenerationScores:
    """What :func:`evaluate_generation` accumulates over the questions (see its Returns)."""

    def __init__(self) -> None:
        self.split, self.raw, self.score = SplitScores(), MultiTargetIoU(), ScoreQuality()
        self.n, self.n_dup, self.malformed, self.named, self.text = 0, 0, 0, 0, 0.0
        self.n_rejected = 0
        self.pred_counts: list[int] = []
        self.true_counts: list[int] = []
        # (predicted IoU, text probability, hit) of each kept target that has a predicted
        # IoU: what :func:`pixellm.calibration.fit` maps to a probability of a hit
        self.score_records: list[tuple[float, float, bool]] = []

    def update(self, sample, pred: Prediction) -> None:
        """Add one question: a :class:`pixellm.muse.Sample` and the model's prediction."""
        gt = torch.from_numpy(sample.masks())  # (Kg, H, W) bool
        kept = _pred_masks(pred.targets, sample.height, sample.width)  # (Kp, H, W)
        self.split.update(kept, gt)
        every = pred.targets + pred.duplicates + pred.rejected
        self.raw.update([_pred_masks(every, sample.height, sample.width)], [gt])
        hits = target_hits(kept, gt)
        self.score.update([t.score for t in pred.targets], hits)
        self.score_records += [(t.predicted_iou, t.text_prob, h) for t, h in zip(pred.targets, hits)
                               if t.predicted_iou is not None]
        self.pred_counts.append(len(pred.targets))
        self.true_counts.append(gt.shape[0])
        phrases = [t.phrase for t in every]
        self.n, self.n_dup = self.n + 1, self.n_dup + len(pred.duplicates)
        self.n_rejected += len(pred.rejected)
        self.malformed += bool(pred.malformed)
        self.named += same_targets(phrases, sample.phrases)
        self.text += phrase_iou(phrases, sample.phrases)

    def compute(self) -> dict:
        """The scores of :func:`evaluate_generation`, less the run's own fields."""
        n = self.n
        return {**self.split.compute(), "n": n, "n_malformed": self.malformed,
                "target_phrase_acc": self.named / n if n else math.nan,
                "phrase_giou": self.text / n if n else math.nan,
                "with_duplicates": self.raw.compute(), "n_duplicates": self.n_dup,
                "n_rejected": self.n_rejected,
                "score": self.score.compute(),
                "zero_target_rate": zero_target_rate(self.pred_counts, self.true_counts),
                "n_zero_target": sum(k == 0 for k in self.true_counts)}


def evaluate_generation(predictor: PixelLMPredictor, samples: Sequence, *, batch_size: int = 32,
                        limit: int = 0, progress: bool = True, keep_predictions: int = 0) -> dict:
    """Generate answers for ``samples`` and score them (multi-target metrics, docs/design.md, Metrics).

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
         duplicate suppression and score threshold), "n_duplicates": masks the suppression
         dropped, "n_rejected": masks scored below the threshold, "duplicate_iou": its
         threshold (None: off), "score": :class:`ScoreQuality` of the kept targets' scores
         ({"auroc", "ece", "n", "n_hits", "note"}), "zero_target_rate": share of the
         zero-target questions answered with no kept mask (NaN without such questions),
         "n_zero_target": their number, "score_records": (predicted IoU, text probability,
         hit) per kept target with a predicted IoU, "examples": [(sample, Prediction), ...]}. The text
         measures read every phrase of the answer, duplicates included.
    """
    n = _count(samples, limit)
    tally, examples, failures = GenerationScores(), [], []
    t0 = time.perf_counter()
    for idx in _batches(n, batch_size, progress, "eval"):
        batch = [samples[i] for i in idx]
        for s, p in zip(batch, _predict(predictor, batch, failures), strict=True):
            tally.update(s, p)
            if len(examples) < keep_predictions:
                examples.append((s, p))
    secs = time.perf_counter() - t0
    return {**tally.compute(), "queries_per_s": n / secs if secs else math.nan,
            "n_failed": len(failures), "failures": failures[:10],
            "duplicate_iou": getattr(predictor, "duplicate_iou", None),
            "score_records": tally.score_records, "examples": examples}


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
    s = model.input_size
    return postprocess_masks(logits.float(), padded_size=(s, s), valid_size=resized_size(h, w, size=s),
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
    ds = SegmentationDataset(samples, formatter=formatter, image_size=model.input_size,
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
