"""LisaPredictor: the harness's predictor (:class:`pixellm.PixelLMPredictor`) for LISA models."""
from __future__ import annotations

from pixellm.predictor import PixelLMPredictor


class LisaPredictor(PixelLMPredictor):
    """Runs a trained :class:`~pixellm.lisa.Lisa` on raw images: numpy in, numpy out.

    Everything the harness's predictor does holds: the image is resized and padded to SAM's
    side (CLIP's input is resized from it), greedy decoding writes one ``[SEG]`` after each
    target phrase, SAM's decoder draws one mask per ``[SEG]``, and each target gets the same
    :class:`~pixellm.Target` fields (phrase, mask, calibrated score, XYXY bbox, RLE). A model
    of the merged variant answers every question with at most one (union) mask. Arguments and
    errors: :class:`~pixellm.PixelLMPredictor`.
    """
