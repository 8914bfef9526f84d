"""DynRefer configs: the JSON of a ``"family": "dynrefer"`` variant parsed into dataclasses.

The image side is a frozen open_clip ViT (:class:`DynReferVisionConfig`): for ``dynrefer-tiny``
the ``pixellm-tiny`` tower, its trained weights read from a PixelLM checkpoint
(``from_checkpoint``); at real scale an open_clip model by name and pretrained tag. The text
side of the region-text contrastive head is a frozen sentence encoder
(:class:`~pixellm.text_encoder.TextEncoderSpec`: the pretrained MiniLM for the tiny config);
the captioner is a transformers causal LM (:class:`~pixellm.config.LLMConfig`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pixellm.config import LLMConfig, LoraConfig
from pixellm.errors import ConfigError
from pixellm.text_encoder import TextEncoderSpec

VIEW_MODES = ("phash", "random", "fixed")
TASKS = ("caption", "tag", "contrastive")


@dataclass
class DynReferVisionConfig:
    model_name: str  # open_clip model name (or the name open_clip_config registers)
    image_size: int  # side of every view
    layer: int  # the ViT block whose patch features are read (RoI-aligned)
    pretrained: str | None = None  # open_clip tag or weights file
    open_clip_config: dict | None = None
    # a PixelLM checkpoint directory whose vision tower (same architecture) gives the weights
    from_checkpoint: str | None = None
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])


@dataclass
class QFormerConfig:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    num_queries: int = 16


@dataclass
class ViewConfig:
    num_views: int = 3  # n: the region view (t = 0) and n - 1 context views
    candidates: list[float] = field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)])
    random: bool = True  # training samples the n - 1 context views (False: the first n - 1 candidates)
    caption_mode: str = "phash"  # inference default for captions: "phash", "random" or "fixed"
    attribute_mode: str = "fixed"  # inference default for tags / attributes / recognition
    fixed: list[float] = field(default_factory=lambda: [0.1, 0.2])  # the context views of "fixed"
    phash_size: int = 32  # views are resized to this side before the DCT


@dataclass
class DynReferLossConfig:
    caption_weight: float = 1.0
    tag_weight: float = 0.01
    contrastive_weight: float = 0.5
    tasks: list[str] = field(default_factory=lambda: list(TASKS))  # which decoders train (the ablation)
    asl_gamma_neg: float = 7.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05


@dataclass
class DynReferConfig:
    name: str
    vision: DynReferVisionConfig
    text: TextEncoderSpec
    llm: LLMConfig
    tags: list[str]  # the tag vocabulary (one logit each)
    roi_size: int = 6  # R: RoI-Align output side on the feature map
    fuse_dim: int = 128  # width of the MLP that fuses the concatenated views
    # one more Q-Former input token from the region's box in the image (normalised XYXY and
    # sqrt(area)): RoI-Align keeps what is in the box, not where it is or how large it is
    box_embedding: bool = False
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    loss: DynReferLossConfig = field(default_factory=DynReferLossConfig)
    embed_dim: int = 64  # region / text vectors of the contrastive head
    tag_control: bool = True  # predicted tags prefix the caption as control words
    control_keep: float = 0.5  # training: the ground-truth tags are given with this probability
    # inference: a predicted tag becomes a control word at this probability (the asymmetric loss
    # leaves negatives' probabilities high: at 0.5 wrong tags mislead the captioner; chosen on val)
    control_threshold: float = 0.8
    max_caption_tokens: int = 24
    attribute_prompts: dict[str, str] = field(default_factory=lambda: {
        "colour": "the {} shape", "size": "the {} shape", "position": "the shape at the {}"})
    class_prompt: str = "the {}"
    attributes: dict[str, list[str]] | None = None  # group -> values scored at inference; None: the generator's
    classes: list[str] | None = None  # region recognition's classes; None: the generator's shapes
    family: str = "dynrefer"

    @property
    def input_size(self) -> int:
        return self.vision.image_size

    @property
    def block_len(self) -> int:  # the harness's tokens-per-target (no codebook here)
        return 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DynReferConfig:
        try:
            rest = {k: v for k, v in d.items() if k not in ("vision", "text", "llm", "qformer", "views", "loss")}
            llm = dict(d["llm"])
            if llm.get("lora") is not None:
                llm["lora"] = LoraConfig(**llm["lora"])
            return cls(vision=DynReferVisionConfig(**d["vision"]), text=TextEncoderSpec(**d.get("text", {})),
                       llm=LLMConfig(**llm), qformer=QFormerConfig(**d.get("qformer", {})),
                       views=ViewConfig(**d.get("views", {})), loss=DynReferLossConfig(**d.get("loss", {})), **rest)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed DynRefer config {d.get('name', '?')!r}: {e}") from e

    def validate(self) -> DynReferConfig:
        n = self.name
        if self.family != "dynrefer":
            raise ConfigError(f"{n}: a DynReferConfig has family 'dynrefer', not {self.family!r}")
        self.text.validate(n)
        v = self.views
        if not 1 <= v.num_views <= len(v.candidates) + 1:
            raise ConfigError(f"{n}: views.num_views must be in [1, {len(v.candidates) + 1}], got {v.num_views}")
        if not all(0 < t <= 1 for t in v.candidates) or len(set(v.candidates)) != len(v.candidates):
            raise ConfigError(f"{n}: views.candidates must be distinct values in (0, 1], got {v.candidates}")
        for mode in (v.caption_mode, v.attribute_mode):
            if mode not in VIEW_MODES:
                raise ConfigError(f"{n}: view modes are {VIEW_MODES}, got {mode!r}")
        if v.num_views > 1 and len(v.fixed) != v.num_views - 1:
            raise ConfigError(f"{n}: views.fixed names the {v.num_views - 1} context views, got {v.fixed}")
        if not set(self.loss.tasks) <= set(TASKS) or "caption" not in self.loss.tasks:
            raise ConfigError(f"{n}: loss.tasks is a subset of {TASKS} with 'caption', got {self.loss.tasks}")
        if not self.tags or len(set(self.tags)) != len(self.tags):
            raise ConfigError(f"{n}: tags must be a non-empty list of distinct words")
        if self.roi_size < 1 or self.qformer.num_queries < 1:
            raise ConfigError(f"{n}: roi_size and qformer.num_queries must be positive")
        if not 0.0 < self.control_threshold <= 1.0:
            raise ConfigError(f"{n}: control_threshold must be in (0, 1], got {self.control_threshold}")
        if not 0.0 <= self.control_keep <= 1.0:
            raise ConfigError(f"{n}: control_keep must be in [0, 1], got {self.control_keep}")
        if self.llm.name_or_path is None and self.llm.config is None:
            raise ConfigError(f"{n}: llm needs name_or_path or config")
        return self
