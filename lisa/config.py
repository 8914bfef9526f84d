"""LISA configs: the JSON of a ``"family": "lisa"`` variant parsed into dataclasses.

The CLIP tower and the LLM are described exactly as for PixelLM (:class:`VisionConfig`,
:class:`LLMConfig`); SAM by a ``transformers.SamConfig`` dict or a ``SamModel.save_pretrained``
directory (:class:`SamSpec`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pixellm.config import LLMConfig, LoraConfig, VisionConfig
from pixellm.errors import ConfigError

SEG_TOKEN = "[SEG]"


@dataclass
class SamSpec:
    image_size: int  # SAM's input side (1024 in LISA: 4.6x CLIP's 224); the data pipeline's input
    config: dict | None = None  # transformers SamConfig dict: vision_config, prompt_encoder_config, mask_decoder_config
    name_or_path: str | None = None  # SamModel.save_pretrained directory with real weights (wins over `config` when loading)
    freeze_encoder: bool = False  # LISA freezes SAM's image encoder; a from-scratch (tiny) one must train
    # SAM's own input normalisation (its pixel_mean / 255, pixel_std / 255); None: SAM reads the
    # CLIP-normalised input as is (from-scratch towers, which learn on that).
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class LisaLossConfig:
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    # SAM's IoU head trained on each mask's actual IoU (the predictor's per-target score, as in
    # PixelLM); LISA itself leaves it untrained. 0: not trained, targets scored without it.
    iou_weight: float = 1.0


@dataclass
class LisaConfig:
    name: str
    vision: VisionConfig  # CLIP tower for the LLM's image tokens; ``layers``: the one block read (LLaVA: penultimate)
    llm: LLMConfig
    sam: SamSpec
    loss: LisaLossConfig = field(default_factory=LisaLossConfig)
    image_pool: int = 16  # CLIP patch grid average-pooled to image_pool**2 LLM tokens
    merge_targets: bool = False  # original LISA: one [SEG] whose mask is the union of all targets
    family: str = "lisa"

    @property
    def block_len(self) -> int:
        """Tokens per target block: one ``[SEG]``."""
        return 1

    @property
    def input_size(self) -> int:
        """Side of the padded square input: SAM's (CLIP's input is resized from it)."""
        return self.sam.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LisaConfig:
        try:
            llm = dict(d["llm"])
            if llm.get("lora") is not None:
                llm["lora"] = LoraConfig(**llm["lora"])
            return cls(name=d["name"], vision=VisionConfig(**d["vision"]), llm=LLMConfig(**llm),
                       sam=SamSpec(**d["sam"]), loss=LisaLossConfig(**d.get("loss", {})),
                       image_pool=d.get("image_pool", 16), merge_targets=d.get("merge_targets", False),
                       family=d.get("family", "lisa"))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed LISA config {d.get('name', '?')!r}: {e}") from e

    def validate(self) -> LisaConfig:
        if self.family != "lisa":
            raise ConfigError(f"{self.name}: a LisaConfig has family 'lisa', not {self.family!r}")
        if len(self.vision.layers) != 1:
            raise ConfigError(f"{self.name}: vision.layers names the one CLIP block the LLM reads, "
                              f"got {self.vision.layers}")
        if self.sam.config is None and self.sam.name_or_path is None:
            raise ConfigError(f"{self.name}: sam needs config or name_or_path")
        if (self.sam.mean is None) != (self.sam.std is None):
            raise ConfigError(f"{self.name}: sam.mean and sam.std go together")
        if self.sam.image_size < self.vision.image_size:
            raise ConfigError(f"{self.name}: sam.image_size {self.sam.image_size} is below CLIP's "
                              f"{self.vision.image_size} (CLIP's input is resized from SAM's)")
        if self.llm.name_or_path is None and self.llm.config is None:
            raise ConfigError(f"{self.name}: llm needs name_or_path or config")
        if min(dataclasses.astuple(self.loss)) < 0:
            raise ConfigError(f"{self.name}: loss weights must be >= 0, got {self.loss}")
        return self
