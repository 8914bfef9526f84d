"""LTSPredictor: one mask per referring expression (numpy in, numpy out).

``segment_expression(image, expression)`` gives one :class:`~pixellm.Target`;
``predict_expressions(image, expressions)`` runs each expression of a multi-referring
question and returns the set as a :class:`~pixellm.Prediction`, as the benchmark scores it.
A referring model has no answer to a reasoning question: ``predict(image, question)`` reads
the whole question as one expression.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from pixellm.checkpoint import from_pretrained
from pixellm.decoder import postprocess_masks
from pixellm.describe import DescribesTargets
from pixellm.errors import InputError
from pixellm.image_io import ImageLike, preprocess_images
from pixellm.predictor import Prediction, Target, mask_bbox, mask_rle


def check_expression(expression, where: str = "") -> str:
    """A non-empty expression string, stripped; :class:`InputError` otherwise."""
    if not isinstance(expression, str) or not expression.strip():
        raise InputError(f"{where}the expression is empty or not a string: {expression!r}")
    return expression.strip()


class LTSPredictor(DescribesTargets):
    """Runs a trained :class:`~pixellm.lts.LTS` on raw images.

    Args:
        model: a built LTS with ``.config`` and ``.tokenizer``.
        min_score: targets whose score is below this go to ``Prediction.rejected``.
    """

    def __init__(self, model, *, min_score: float = 0.0) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if model.tokenizer is None:
            raise InputError("an LTS predictor needs the model's word tokenizer (load a checkpoint)")
        self.model, self.cfg, self.min_score = model.eval(), model.config, min_score

    @classmethod
    def from_pretrained(cls, directory, *, device=None, dtype=None, **kw) -> LTSPredictor:
        """Load a checkpoint directory written by ``pixellm-train --model lts-…``."""
        return cls(from_pretrained(directory, device=device, dtype=dtype), **kw)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _targets(self, images: Sequence[ImageLike], expressions: Sequence[str]) -> list[Target]:
        """One target per (image, expression) pair, in one forward pass."""
        pre = preprocess_images(images, size=self.model.input_size, mean=self.cfg.vision.mean,
                                std=self.cfg.vision.std)
        dev, dtype = self.device, next(self.model.parameters()).dtype
        ids, lengths = self.model.encode_text(list(expressions))
        out = self.model(torch.stack([p.pixels for p in pre]).to(dev, dtype), ids, lengths)
        s = self.model.input_size
        targets = []
        for k, (p, e) in enumerate(zip(pre, expressions)):
            logits = postprocess_masks(out.mask_logits[k:k + 1].float(), padded_size=(s, s),
                                       valid_size=p.valid_size, original_size=p.original_size)[0]
            probs, mask = logits.sigmoid(), logits > 0
            score = float(probs[mask].mean()) if bool(mask.any()) else 0.0
            m = mask.cpu().numpy()
            targets.append(Target(e, m, score, mask_bbox(m), mask_rle(m), k))
        return targets

    def segment_expression(self, image: ImageLike, expression: str) -> Target:
        """The mask of the object ``expression`` refers to.

        Returns:
            :class:`~pixellm.Target` (phrase: the expression; mask at the original size; score:
            the mean foreground probability over the mask, 0 when empty; bbox; rle).
        Raises:
            InputError: a bad image, an empty expression.
        """
        return self._targets([image], [check_expression(expression)])[0]

    def segment_expressions(self, images: Sequence[ImageLike], expressions: Sequence[str]) -> list[Target]:
        """:meth:`segment_expression` of ``expressions[i]`` on ``images[i]``, in one pass."""
        if isinstance(expressions, str) or len(images) != len(expressions):
            raise InputError("segment_expressions needs equal-length sequences of images and expressions")
        exprs = [check_expression(e, f"item {i}: " if len(expressions) > 1 else "") for i, e in enumerate(expressions)]
        return self._targets(images, exprs) if exprs else []

    def predict_expressions(self, image: ImageLike, expressions: Sequence[str], *,
                            describe: bool = False) -> Prediction:
        """Each expression of a multi-referring question run alone; the set as one prediction
        (targets in expression order; empty masks and those below ``min_score`` rejected);
        ``describe``: describe each target (needs a describer, see :mod:`pixellm.describe`)."""
        if isinstance(expressions, str):
            raise InputError("expressions must be a list of strings")
        targets = self.segment_expressions([image] * len(expressions), expressions) if expressions else []
        return self._describe_all([self.prediction(targets)], [image], describe)[0]

    def prediction(self, targets: list[Target]) -> Prediction:
        """One expression's targets as a :class:`~pixellm.Prediction` (see
        :meth:`predict_expressions`)."""
        keep = [bool(t.mask.any()) and t.score >= self.min_score for t in targets]
        kept = [t for t, k in zip(targets, keep) if k]
        answer = " and ".join(t.phrase for t in kept) + "." if kept else "nothing found."
        return Prediction(answer, kept, rejected=[t for t, k in zip(targets, keep) if not k])

    def predict(self, image: ImageLike, question: str, *, describe: bool = False) -> Prediction:
        """The whole question as one expression (a referring model has no reasoning answer)."""
        return self.predict_expressions(image, [check_expression(question)], describe=describe)

    def predict_batch(self, images: Sequence[ImageLike], questions: Sequence[str], *,
                      describe: bool = False) -> list[Prediction]:
        """:meth:`predict` per (image, question)."""
        if isinstance(questions, str) or len(images) != len(questions):
            raise InputError("predict_batch needs equal-length sequences of images and questions")
        return [self.predict(img, q, describe=describe) for img, q in zip(images, questions)]
