"""Pixel decoder (SAM-free, multi-scale, coarse to fine) and the mask losses.

Building blocks (``Attention``, ``LayerNorm2d``, ``SinePositionEncoding``, ``MaskHead``) live in
``pixellm.decoder.transformer``, ``.common`` and ``.pixel_decoder``.
"""

from .losses import dice_loss, iou_loss, mask_iou, mask_losses, refinement_weights
from .pixel_decoder import DecoderOutput, PixelDecoder, postprocess_masks, scale_factors
from .transformer import TwoWayTransformer

__all__ = [
    "DecoderOutput",
    "PixelDecoder",
    "TwoWayTransformer",
    "dice_loss",
    "iou_loss",
    "mask_iou",
    "mask_losses",
    "postprocess_masks",
    "refinement_weights",
    "scale_factors",
]
