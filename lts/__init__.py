"""LTS (Jing et al., CVPR 2021) as a model family of the harness: locate the referred object
with a sentence-generated kernel (the position prior), then segment it. Configs: ``lts-tiny``
(the ``pixellm-tiny`` ViT as its three-scale encoder, a bi-GRU over the training vocabulary)
and ``lts-darknet53`` (DarkNet-53 at 416, as the paper)."""
from .build import FAMILY, build_lts, train_data
from .config import GRUTextConfig, LTSConfig, LTSVisionConfig
from .data import ExpressionDataset, expression_index
from .model import LTS, KernelLocate, coord_maps, scaled_dilations
from .predictor import LTSPredictor

__all__ = ["FAMILY", "LTS", "ExpressionDataset", "GRUTextConfig", "KernelLocate", "LTSConfig", "LTSPredictor",
           "LTSVisionConfig", "build_lts", "coord_maps", "expression_index", "scaled_dilations", "train_data"]
