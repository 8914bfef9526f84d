"""DynRefer (Zhao et al., CVPR 2025) as a model family of the harness: describe a region (a box
or a mask) with a caption, tags and attributes, read at dynamic resolution from nested views
between the region and the whole image. Configs: ``dynrefer-tiny`` (the trained ``pixellm-tiny``
ViT, frozen; a tiny LLaMA captioner; MiniLM for the region-text head) and ``dynrefer-vitg``
(EVA ViT-g/14 and a 7B LLM, as the paper)."""
from .build import FAMILY, build_dynrefer, load_tower_from_checkpoint, train_data
from .config import DynReferConfig, DynReferVisionConfig, QFormerConfig, ViewConfig
from .data import RegionDataset, collate_regions
from .model import DynRefer, TagDecoder, ViewAlignment, asymmetric_loss, siglip_loss
from .predictor import DynReferPredictor
from .views import box_in_view, crop_views, hamming, phash, phash_scores, select_views, view_boxes

__all__ = ["FAMILY", "DynRefer", "DynReferConfig", "DynReferPredictor", "DynReferVisionConfig", "QFormerConfig",
           "RegionDataset", "TagDecoder", "ViewAlignment", "ViewConfig", "asymmetric_loss", "box_in_view",
           "build_dynrefer", "collate_regions", "crop_views", "hamming", "load_tower_from_checkpoint", "phash",
           "phash_scores", "select_views", "siglip_loss", "train_data", "view_boxes"]
