"""LSeg configs: the JSON of a ``"family": "lseg"`` variant parsed into dataclasses.

The image side is an open_clip ViT described as PixelLM's (:class:`VisionConfig`, its
``layers`` the four hooked blocks, shallowest first); the text side a frozen encoder
(:class:`TextEncoderSpec`): a transformers sentence encoder (MiniLM for ``lseg-tiny``) or an
open_clip text tower chosen by model name and pretrained tag (CLIP ViT-B/32 in the paper).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pixellm.config import VisionConfig
from pixellm.errors import ConfigError
from pixellm.text_encoder import TextEncoderSpec

REG_KINDS = ("depthwise", "bottleneck")
OTHER = "other"  # the label of every pixel no other label of the set covers


@dataclass
class LSegConfig:
    name: str
    vision: VisionConfig  # ``layers``: the 4 hooked ViT blocks, shallowest first
    text: TextEncoderSpec
    features: int = 256  # DPT reassemble / fusion width
    embed_dim: int = 512  # C: the per-pixel and per-label embedding width
    temperature: float = 0.07  # logits = cos(pixel, label) / temperature, fixed
    reg_blocks: int = 0  # spatial regularisation blocks after the logits: 0, 1, 2 or 4
    reg_kind: str = "bottleneck"  # "depthwise" or "bottleneck" (depthwise + max over labels)
    family: str = "lseg"

    @property
    def input_size(self) -> int:
        """Side of the padded square input."""
        return self.vision.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LSegConfig:
        try:
            rest = {k: v for k, v in d.items() if k not in ("vision", "text")}
            return cls(vision=VisionConfig(**d["vision"]), text=TextEncoderSpec(**d["text"]), **rest)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed LSeg config {d.get('name', '?')!r}: {e}") from e

    def validate(self) -> LSegConfig:
        if self.family != "lseg":
            raise ConfigError(f"{self.name}: an LSegConfig has family 'lseg', not {self.family!r}")
        if len(self.vision.layers) != 4 or sorted(self.vision.layers) != list(self.vision.layers) \
                or len(set(self.vision.layers)) != 4:
            raise ConfigError(f"{self.name}: vision.layers names 4 distinct hooked blocks, shallowest "
                              f"first, got {self.vision.layers}")
        self.text.validate(self.name)
        if self.reg_blocks not in (0, 1, 2, 4):
            raise ConfigError(f"{self.name}: reg_blocks must be 0, 1, 2 or 4, got {self.reg_blocks}")
        if self.reg_kind not in REG_KINDS:
            raise ConfigError(f"{self.name}: reg_kind must be one of {REG_KINDS}, got {self.reg_kind!r}")
        if not self.temperature > 0:
            raise ConfigError(f"{self.name}: temperature must be > 0, got {self.temperature}")
        if min(self.features, self.embed_dim) < 1:
            raise ConfigError(f"{self.name}: features and embed_dim must be positive")
        return self


__all__ = ["OTHER", "LSegConfig", "TextEncoderSpec"]
