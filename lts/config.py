"""LTS configs: the JSON of a ``"family": "lts"`` variant parsed into dataclasses.

The visual encoder gives three scales: an open_clip ViT's three hooked blocks resampled to
strides p/2, p and 2p (``lts-tiny``: the ``pixellm-tiny`` tower), or a timm CNN's three
feature stages (``lts-darknet53``: DarkNet-53 at 416, as the paper). The text encoder is a
bi-GRU over word embeddings of the training vocabulary (the tokenizer saved with the model).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pixellm.errors import ConfigError

VISION_KINDS = ("open_clip", "timm")
LOCATE_KINDS = ("kernel", "transformer")


@dataclass
class LTSVisionConfig:
    kind: str  # "open_clip" (a ViT, 3 hooks reassembled to 3 strides) or "timm" (3 CNN stages)
    model_name: str  # open_clip model name / timm model name
    image_size: int  # square input side
    layers: list[int]  # open_clip: 3 hooked blocks, shallowest first; timm: 3 out_indices
    pretrained: str | bool | None = None  # open_clip tag or file; timm: True for its weights
    open_clip_config: dict | None = None
    freeze: bool = False
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class GRUTextConfig:
    embed_dim: int = 64  # word embedding width (GloVe's 300 in the paper)
    hidden: int = 64  # per direction; word features and the sentence vector are 2 * hidden
    max_length: int = 24  # words per expression


@dataclass
class LTSConfig:
    name: str
    vision: LTSVisionConfig
    text: GRUTextConfig = field(default_factory=GRUTextConfig)
    dim: int = 64  # C: the fused feature width
    kernel_size: int = 3  # k of the sentence-generated C x k x k kernel
    locate: str = "kernel"  # "kernel" (dynamic convolution) or "transformer" (relevance by cross-attention)
    use_prior: bool = True  # False: the ablation without the position prior (and its loss)
    locate_weight: float = 1.0  # lambda of the locate BCE
    aspp_dilations: list[int] = field(default_factory=lambda: [1, 6, 12, 18])
    aspp_reference: int = 52  # the feature side the dilations are given for (416 / 8 in the paper)
    family: str = "lts"

    @property
    def input_size(self) -> int:
        return self.vision.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LTSConfig:
        try:
            rest = {k: v for k, v in d.items() if k not in ("vision", "text")}
            return cls(vision=LTSVisionConfig(**d["vision"]), text=GRUTextConfig(**d.get("text", {})), **rest)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed LTS config {d.get('name', '?')!r}: {e}") from e

    def validate(self) -> LTSConfig:
        if self.family != "lts":
            raise ConfigError(f"{self.name}: an LTSConfig has family 'lts', not {self.family!r}")
        if self.vision.kind not in VISION_KINDS:
            raise ConfigError(f"{self.name}: vision.kind must be one of {VISION_KINDS}")
        if len(self.vision.layers) != 3 or sorted(set(self.vision.layers)) != list(self.vision.layers):
            raise ConfigError(f"{self.name}: vision.layers names 3 distinct increasing hooks, got {self.vision.layers}")
        if self.locate not in LOCATE_KINDS:
            raise ConfigError(f"{self.name}: locate must be one of {LOCATE_KINDS}, got {self.locate!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"{self.name}: kernel_size must be odd and positive, got {self.kernel_size}")
        if not self.aspp_dilations or min(self.aspp_dilations) < 1:
            raise ConfigError(f"{self.name}: aspp_dilations must be positive, got {self.aspp_dilations}")
        if self.locate_weight < 0:
            raise ConfigError(f"{self.name}: locate_weight must be >= 0")
        return self
