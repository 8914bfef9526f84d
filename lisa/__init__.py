"""LISA (Lai et al., 2024) as a model family of the harness: a ``[SEG]`` token per target
prompts SAM (``transformers.SamModel``). Configs: ``lisa-tiny`` (from scratch, CPU),
``lisa-tiny-merged`` (one ``[SEG]``, the union of all targets, as the original LISA),
``lisa-7b`` / ``lisa-13b`` (CLIP ViT-L/14 @224, LLaMA shapes, SAM ViT-H)."""
from .build import FAMILY, adapt_samples, build_lisa, build_sam
from .config import SEG_TOKEN, LisaConfig, LisaLossConfig, SamSpec
from .model import Lisa
from .predictor import LisaPredictor

__all__ = ["FAMILY", "SEG_TOKEN", "Lisa", "LisaConfig", "LisaLossConfig", "LisaPredictor",
           "SamSpec", "adapt_samples", "build_lisa", "build_sam"]
