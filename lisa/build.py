"""Builders: a :class:`~pixellm.lisa.config.LisaConfig` (or its name) -> an assembled
:class:`~pixellm.lisa.model.Lisa`, and the family's registry entry."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase, SamConfig, SamModel

from pixellm.build import build_llm, build_vision
from pixellm.codebook import add_special_tokens
from pixellm.config import get_model_config
from pixellm.errors import ConfigError
from pixellm.families import Family
from pixellm.llm import ImageProjector
from pixellm.muse.records import merge_targets

from .config import SEG_TOKEN, LisaConfig
from .model import Lisa


def build_sam(spec, *, load_weights: bool = True, dtype: torch.dtype | None = None) -> SamModel:
    """``transformers.SamModel`` from a :class:`~pixellm.lisa.config.SamSpec`: real weights from
    ``spec.name_or_path`` (a ``SamModel.save_pretrained`` directory) when ``load_weights``,
    else random ones of ``spec.config`` (or of the directory's config)."""
    if spec.name_or_path is not None and load_weights:
        return SamModel.from_pretrained(spec.name_or_path, dtype=dtype)
    cfg = SamConfig(**spec.config) if spec.config is not None else SamConfig.from_pretrained(spec.name_or_path)
    if cfg.vision_config.image_size != spec.image_size:
        raise ConfigError(f"sam.image_size {spec.image_size} differs from its SamConfig's "
                          f"{cfg.vision_config.image_size}")
    sam = SamModel(cfg)
    reference_init(sam)
    return sam.to(dtype) if dtype is not None else sam


def reference_init(sam: SamModel) -> None:
    """Initialise a from-scratch ``SamModel`` as the original SAM code does: every layer with
    PyTorch's default initialisation (SAM's code sets none of its own besides zero position
    embeddings, which transformers also uses).

    transformers' own ``_init_weights`` draws SAM's image encoder from ``SamVisionConfig``'s
    ``initializer_range``, 1e-10 by default (it only ever loads pretrained weights over them):
    an encoder built that way starts with all-zero weights, sees a constant image and keeps the
    mask decoder on the empty-mask plateau (docs/experiments.md, issue 23).
    """
    for module in sam.modules():
        if module is not sam and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def build_lisa(config: LisaConfig | str, *, tokenizer: PreTrainedTokenizerBase | None = None,
               load_weights: bool = True, dtype: torch.dtype | None = None) -> Lisa:
    """Assemble LISA from its config.

    Args:
        config: a :class:`LisaConfig` or a registered name (``lisa-tiny``, ``lisa-7b``...).
        tokenizer: the LLM tokenizer; ``[SEG]`` is added to it. None: ``llm.tokenizer`` /
            ``llm.name_or_path`` when loading weights, else ids appended after the base
            vocabulary (enough for meta-device FLOP counting).
        load_weights: load the pretrained CLIP, LLM and SAM named in the config; False gives
            random weights (wrap in ``with torch.device("meta"):`` to build without memory).
        dtype: parameter dtype; None keeps float32.
    Returns:
        :class:`Lisa` with ``.config`` and ``.tokenizer`` attached.
    """
    cfg = get_model_config(config) if isinstance(config, str) else config.validate()
    tokenizer, vision = build_vision(cfg, tokenizer, load_weights=load_weights)
    llm, image_id, (seg_id,) = build_llm(cfg, tokenizer, n_new=1, load_weights=load_weights, dtype=dtype,
                                         new_tokens=lambda tok: add_special_tokens(tok, [SEG_TOKEN]))
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    d = base.config.hidden_size
    sam = build_sam(cfg.sam, load_weights=load_weights, dtype=dtype)
    prompt_width = sam.config.prompt_encoder_config.hidden_size
    model = Lisa(
        vision=vision, projector=ImageProjector(in_dim=vision.width, out_dim=d, pool=cfg.image_pool),
        llm=llm,
        # LISA's text_hidden_fcs: Linear d->d, ReLU, Linear d->prompt width
        seg_projection=nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, prompt_width)),
        sam=sam, image_token_id=image_id, seg_token_id=seg_id, clip_size=cfg.vision.image_size,
        freeze_sam_encoder=cfg.sam.freeze_encoder,
        sam_norm=None if cfg.sam.mean is None else (cfg.sam.mean, cfg.sam.std),
        clip_norm=(cfg.vision.mean, cfg.vision.std), ce_weight=cfg.loss.ce_weight, bce_weight=cfg.loss.bce_weight,
        dice_weight=cfg.loss.dice_weight, iou_weight=cfg.loss.iou_weight)
    if dtype is not None:
        model.to(dtype)
    model.config, model.tokenizer = cfg, tokenizer
    return model


class MergedTargets(Sequence):
    """A lazy view of samples with each question's targets merged into one (original LISA)."""

    def __init__(self, samples: Sequence) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        return merge_targets(self.samples[i])


def adapt_samples(cfg: LisaConfig, samples: Sequence) -> Sequence:
    """What a LISA variant trains on: ``samples`` as they are, or merged (``merge_targets``)."""
    return MergedTargets(samples) if cfg.merge_targets else samples


def _family() -> Family:
    from .predictor import LisaPredictor
    from .warmup import warm_up_sam

    return Family(name="lisa", config_class=LisaConfig, build=build_lisa,
                  predictor_class=LisaPredictor, adapt_samples=adapt_samples, warm_up=warm_up_sam)


FAMILY = _family()
