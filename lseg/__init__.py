"""LSeg (Li et al., ICLR 2022) as a model family of the harness: per-pixel embeddings from a
ViT + DPT, scored against a frozen text encoder's label embeddings. Configs: ``lseg-tiny``
(from scratch, the pretrained MiniLM as its text side, CPU) and ``lseg-vitl16`` (ViT-L/16 at
480, CLIP ViT-B/32's text tower)."""
from .build import FAMILY, build_lseg, train_data
from .config import OTHER, LSegConfig, TextEncoderSpec
from .data import KINDS, UNSEEN_WORDS, LabelMapDataset, LabelMapSource
from .model import LSeg, SpatialRegularisation
from .predictor import LabelMap, LSegPredictor

__all__ = ["FAMILY", "KINDS", "OTHER", "UNSEEN_WORDS", "LSeg", "LSegConfig", "LSegPredictor", "LabelMap",
           "LabelMapDataset", "LabelMapSource", "SpatialRegularisation", "TextEncoderSpec", "build_lseg",
           "train_data"]
