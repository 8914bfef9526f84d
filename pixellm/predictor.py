"""PixelLMPredictor: image + question -> answer text and one mask per target (numpy in, numpy out)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import ScoreCalibration
from .data import left_pad
from .decoder import postprocess_masks
from .describe import DescribesTargets, RegionDescription
from .errors import InputError
from .image_io import ImageLike, load_image, resize_longest_and_pad
from .muse.masks import encode as mask_rle  # (H, W) bool -> JSON-ready COCO RLE
from .muse.metrics import pair_stats
from .prompting import PromptFormatter
from .segmenter import LLMSegmenter


@dataclass
class Target:
    """One predicted target.

    phrase: the answer phrase before its codebook block. mask: (H, W) bool at the original
    image size. score: confidence in [0, 1] (see :func:`target_score`): with a score
    calibration saved beside the weights (:mod:`pixellm.calibration`), the probability that the
    target matches a true one at IoU >= 0.5; else the decoder's predicted IoU of the mask (its
    IoU head, trained on the actual IoU); for a model built without that head, the mean
    foreground probability of the mask times the probability of the block's first token.
    bbox: XYXY pixel box of the mask (zeros if empty). rle: COCO RLE dict (``counts`` as str)
    of the mask. index: position of its block in the answer (0-based; the answer's phrases are
    ``targets`` and ``duplicates`` merged by index). predicted_iou: the IoU head's output (None
    without the head). text_prob: the lowest probability the LLM gave a token it wrote for
    this target (the words since the previous block, and the block's first token).
    description: the describer's :class:`~pixellm.describe.RegionDescription` of the mask
    (caption, tags, attributes), when the prediction was asked with ``describe=True``.
    """

    phrase: str
    mask: np.ndarray
    score: float
    bbox: tuple[int, int, int, int]
    rle: dict
    index: int = 0
    predicted_iou: float | None = None
    text_prob: float | None = None
    description: RegionDescription | None = None  # what the mask shows (``predict(..., describe=True)``)


@dataclass
class Prediction:
    """answer: generated text without codebook tokens; targets: one per complete block, in answer
    order, less the duplicates and the rejected; malformed: descriptions of dropped
    truncated/broken blocks (empty when all were complete); duplicates: the blocks whose mask
    repeats a kept target's (see :func:`suppress_duplicates`); rejected: the blocks scored below
    the predictor's ``min_score``. Both are kept here so nothing the model wrote is lost."""

    answer: str
    targets: list[Target]
    malformed: list[str] = field(default_factory=list)
    duplicates: list[Target] = field(default_factory=list)
    rejected: list[Target] = field(default_factory=list)


def suppress_duplicates(masks: torch.Tensor, scores: Sequence[float], *, iou: float) -> list[int]:
    """Greedy mask non-maximum suppression over one answer's targets.

    A small LLM sometimes names one object twice, or names an object that is not there and
    its block then finds the nearest look-alike, which another block already holds: two masks
    of one object, one of which is a false positive. Targets are visited by descending score
    (ties in answer order); a target is dropped when its mask overlaps an already kept one
    with IoU > ``iou`` (two empty masks overlap with IoU 1).

    Args:
        masks: (K, H, W) bool masks.
        scores: K confidences.
        iou: the IoU above which a lower-scoring mask is a duplicate, in (0, 1].

    Returns:
        indices of the kept targets, ascending (answer order).
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"duplicate IoU threshold must be in (0, 1], got {iou}")
    if len(scores) != masks.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {len(scores)} scores")
    overlap = pair_stats(masks, masks)[2].tolist()  # (K, K) IoU
    kept: list[int] = []
    for k in sorted(range(len(scores)), key=lambda j: -scores[j]):  # stable: ties in answer order
        if all(overlap[k][j] <= iou for j in kept):
            kept.append(k)
    return sorted(kept)


def target_score(predicted_iou: float | None, probs: torch.Tensor, mask: torch.Tensor,
                 block_prob: float, calibration: ScoreCalibration | None = None, *,
                 text_prob: float = 1.0) -> float:
    """A target's confidence in [0, 1].

    Args:
        predicted_iou: the decoder's predicted IoU of the mask, or None (no IoU head).
        probs: (H, W) foreground probabilities of the mask.
        mask: (H, W) bool, the binarised mask.
        block_prob: probability of the block's first token.
        calibration: the checkpoint's fitted map to a probability of a hit, or None.
        text_prob: the target's lowest token probability (:attr:`Target.text_prob`).

    Returns:
        with a predicted IoU: ``calibration(predicted_iou, text_prob)``, or the predicted IoU
        clipped to [0, 1] without a calibration; without it, the mean of ``probs`` over
        ``mask`` (0 when empty) times ``block_prob`` (models from before the IoU head).
    """
    if predicted_iou is not None:
        if calibration is not None:
            return calibration(predicted_iou, text_prob)
        return min(max(float(predicted_iou), 0.0), 1.0)
    fg = float(probs[mask].mean()) if bool(mask.any()) else 0.0
    return fg * block_prob


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """XYXY pixel box (x0, y0, x1, y1), exclusive max, of an (H, W) bool mask; zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


# The calibrated probability of a hit under which a target is rejected, chosen on val (see
# docs/experiments.md, benchmark v2): a target that is more likely a miss than this costs the
# question more (an unmatched mask is an IoU-0 pair) than it is expected to bring.
DEFAULT_MIN_SCORE = 0.0


class PixelLMPredictor(DescribesTargets):
    """Runs a trained model of the LLM-writes-a-block-per-target families (:class:`PixelLM`,
    LISA) on raw images; :func:`pixellm.load_predictor` picks the checkpoint's family's class.

    Args:
        model: a built :class:`~pixellm.segmenter.LLMSegmenter` with ``.config`` and ``.tokenizer``.
        max_new_tokens: generation budget; None uses what the context leaves after the prompt.
        constrain_blocks: once the LLM starts a codebook block, force its remaining tokens
            (blocks can then only be cut by the token budget); off, the LLM writes them itself
            (it is trained with the text loss on every codebook token).
        duplicate_iou: drop a target whose mask overlaps a higher-scoring target's with IoU
            above this (:func:`suppress_duplicates`; the dropped ones are in
            ``Prediction.duplicates``); None keeps every block's mask.
        calibration: map of (predicted IoU, text probability) to the score; None: the raw
            predicted IoU (:meth:`from_pretrained` loads the checkpoint's, if it has one).
        min_score: targets scored below this go to ``Prediction.rejected`` (0: keep all).
            :meth:`from_pretrained` uses :data:`DEFAULT_MIN_SCORE` with a calibration, where
            the score is a probability of a hit, and 0 without one.
    """

    def __init__(self, model: LLMSegmenter, *, max_new_tokens: int | None = None,
                 constrain_blocks: bool = True, duplicate_iou: float | None = 0.5,
                 calibration: ScoreCalibration | None = None, min_score: float = 0.0) -> None:
        if duplicate_iou is not None and not 0.0 < duplicate_iou <= 1.0:
            raise ValueError(f"duplicate_iou must be in (0, 1] or None, got {duplicate_iou}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        self.model = model.eval()
        cfg = model.config
        self.cfg, self.tokenizer = cfg, model.tokenizer
        self.formatter = PromptFormatter(
            tokenizer=model.tokenizer, template=cfg.llm.prompt_template,
            num_image_tokens=model.num_image_tokens, block="".join(
                model.tokenizer.convert_ids_to_tokens(model.codebook_ids)),
            max_length=cfg.llm.max_length)
        self.max_new_tokens = max_new_tokens
        self.constrain_blocks = constrain_blocks
        self.duplicate_iou = duplicate_iou
        self.calibration = calibration
        self.min_score = min_score

    @classmethod
    def from_pretrained(cls, directory, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None, **kw) -> PixelLMPredictor:
        """Load a checkpoint directory (see :meth:`PixelLM.save_pretrained`) and its score
        calibration when it has one (``calibration=`` in ``kw`` overrides it)."""
        kw.setdefault("calibration", ScoreCalibration.load(directory))
        kw.setdefault("min_score", DEFAULT_MIN_SCORE if kw["calibration"] is not None else 0.0)
        return cls(LLMSegmenter.from_pretrained(directory, device=device, dtype=dtype), **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, image: ImageLike, question: str, *, describe: bool = False) -> Prediction:
        """Answer one question about one image.

        Args:
            image: path, PIL image or numpy array (HxW, HxWx3 or HxWx4; uint8, uint16 or float).
            question: free-form question, non-empty.
            describe: give each target a description of its mask (needs a describer:
                ``load_predictor(dir, describer=DYNREFER_DIR)``).
        Returns:
            :class:`Prediction`, with one :class:`Target` per target (possibly none).
        Raises:
            InputError: unreadable/corrupt/zero-size image, empty or too-long question,
                ``describe`` without a describer.
        """
        return self.predict_batch([image], [question], describe=describe)[0]

    def predict_batch(self, images: Sequence[ImageLike], questions: Sequence[str], *,
                      describe: bool = False) -> list[Prediction]:
        """Answer ``questions[i]`` about ``images[i]`` in one padded forward + generation pass."""
        if isinstance(questions, str) or len(images) != len(questions):
            raise InputError("predict_batch needs equal-length sequences of images and questions")
        if len(images) == 0:
            return []
        budget = self.max_new_tokens or 0
        pre, prompts = [], []
        for i, (img, q) in enumerate(zip(images, questions)):
            try:
                pre.append(resize_longest_and_pad(load_image(img), size=self.model.input_size,
                                                  mean=self.cfg.vision.mean, std=self.cfg.vision.std))
                prompts.append(self.formatter.prompt_ids(q, reserve=max(budget, 1)))
            except InputError as e:
                raise InputError(f"batch item {i}: {e}") if len(images) > 1 else e from None
        return self._describe_all(self._run(pre, prompts), images, describe)

    @torch.no_grad()
    def _run(self, pre, prompts) -> list[Prediction]:
        tok = self.tokenizer
        ids, attn = left_pad(prompts, pad_id=tok.pad_token_id)
        max_new = self.max_new_tokens or (self.cfg.llm.max_length - ids.shape[1])
        dev, dtype = self.device, next(self.model.parameters()).dtype
        pixels = torch.stack([p.pixels for p in pre]).to(dev, dtype)
        gen = self.model.generate(pixels, ids.to(dev), attn.to(dev), max_new_tokens=max_new,
                                  eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                                  constrain_blocks=self.constrain_blocks)
        return [self._prediction(gen, i, p) for i, p in enumerate(pre)]

    def _prediction(self, gen, i: int, pre) -> Prediction:
        block = len(self.model.codebook_ids)
        answer, phrases = self.formatter.split_answer(gen.tokens[i], gen.block_starts[i], block)
        s = self.model.input_size
        logits = postprocess_masks(gen.mask_logits[i].float(), padded_size=(s, s),
                                   valid_size=pre.valid_size, original_size=pre.original_size)
        probs, fg_masks = logits.sigmoid(), logits > 0
        ious = None if gen.iou is None else gen.iou[i].tolist()
        targets = []
        prev = 0
        for k, (phrase, start) in enumerate(zip(phrases, gen.block_starts[i])):
            mask = fg_masks[k].cpu().numpy()
            # the answer's surest-to-least-sure token for this target: its words and block start
            text_prob = float(min(gen.token_probs[i][prev:start + 1]))
            prev = start + block
            iou = None if ious is None else ious[k]
            score = target_score(iou, probs[k], fg_masks[k], gen.token_probs[i][start], self.calibration,
                                 text_prob=text_prob)
            targets.append(Target(phrase, mask, score, mask_bbox(mask), mask_rle(mask), k, iou, text_prob))
        kept = (range(len(targets)) if self.duplicate_iou is None or not targets else
                suppress_duplicates(fg_masks, [t.score for t in targets], iou=self.duplicate_iou))
        dropped = sorted(set(range(len(targets))) - set(kept))
        sure = [k for k in kept if targets[k].score >= self.min_score]
        return Prediction(answer, [targets[k] for k in sure], list(gen.malformed[i]),
                          [targets[k] for k in dropped],
                          [targets[k] for k in kept if targets[k].score < self.min_score])
