"""Model configs: one JSON per variant (``model_configs/*.json``) parsed into dataclasses.

``list_models()`` names the registered variants of every family, ``get_model_config(name)``
returns a fresh config of the variant's family (:class:`PixelLMConfig` for ``pixellm``; see
:mod:`pixellm.families`), ``add_model_config(path_or_dict)`` registers more.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_REGISTRY: dict[str, dict[str, Any]] = {}
_BUILTIN_LOADED = False


@dataclass
class VisionConfig:
    model_name: str  # open_clip model name, e.g. "ViT-L-14-336", or a name registered below
    image_size: int  # square input side after longest-side resize and padding
    layers: list[int]  # ViT block indices used as scales, deepest first (len == num_scales)
    pretrained: str | None = None  # open_clip pretrained tag or a local weights file
    open_clip_config: dict | None = None  # registered with open_clip.add_model_config if given
    freeze: bool = True  # real CLIP is frozen; the from-scratch tiny tower trains
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])


@dataclass
class LoraConfig:
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class LLMConfig:
    name_or_path: str | None = None  # transformers from_pretrained(dir or hub id); None: build from `config`
    config: dict | None = None  # transformers config dict (needs "model_type") for from-scratch / meta builds
    tokenizer: str | None = None  # tokenizer dir; None: name_or_path's, or trained offline (tiny)
    max_length: int = 512  # prompt + answer tokens, image tokens included
    lora: LoraConfig | None = None  # None: train the whole LLM (from-scratch tiny)
    train_embeddings: bool = True  # input embeddings and LM head train (new codebook rows)
    prompt_template: str = "{image} {question} answer:"  # {image} expands to the image tokens


@dataclass
class CodebookConfig:
    num_scales: int = 2  # L
    tokens_per_scale: int = 3  # N
    fusion: str = "linear"  # "linear" (learned per-scale weights) or "mean" (ablation)


@dataclass
class DecoderConfig:
    dim: int = 256  # decoder width
    depth: int = 2  # two-way transformer blocks per scale
    heads: int = 8
    mlp_dim: int = 2048
    num_output_tokens: int = 2  # learned tokens beside the fused target embedding
    upscale: int = 4  # final mask grid = patch grid * upscale


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    refine: bool = True  # target-refinement loss (PixelLM); off for the ablation
    refine_alpha: float = 2.0
    # Phrase reconstruction (codebook.PhraseHead, not in PixelLM): the fused target embeddings
    # predict the words of their phrase. 0 turns it off (and builds no head).
    phrase_weight: float = 0.0
    # Region words (codebook.RegionWordHead, not in PixelLM): the vision tower's deep patch
    # features under each target's mask predict the words of its phrase. 0: off, no head.
    region_weight: float = 0.0
    # IoU prediction (SAM's IoU head, in the official PixelLM decoder too): the decoder predicts
    # each mask's IoU with its ground truth, the predictor's per-target score. > 0 builds the
    # head (an IoU token per scale and an MLP) and weighs its loss in the mask term; 0 builds
    # none and scores targets without it. The default 0 is what configs written before the
    # head mean, so their checkpoints still load; the shipped JSON configs set 1.0.
    iou_weight: float = 0.0


def _without_retired(section: dict, key: str, kept: str, d: dict) -> dict:
    """A config section without a retired option: configs written before it was retired carry
    it, with the value the project kept (read as that) or another one (refused)."""
    section = dict(section)
    value = section.pop(key, kept)
    if value != kept:
        raise ConfigError(f"{d.get('name', '?')}: {key}={value!r} is no longer supported (only {kept!r} was kept)")
    return section


@dataclass
class PixelLMConfig:
    name: str
    vision: VisionConfig
    llm: LLMConfig
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    image_pool: int = 16  # deep-scale grid is average-pooled to image_pool**2 LLM tokens
    family: str = "pixellm"  # the model family (pixellm.families); fixed for this class

    @property
    def block_len(self) -> int:
        """Codebook tokens per target block (L x N)."""
        return self.codebook.num_scales * self.codebook.tokens_per_scale

    @property
    def input_size(self) -> int:
        """Side of the padded square image the model takes (the CLIP input)."""
        return self.vision.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PixelLMConfig:
        try:
            llm = dict(d["llm"])
            if llm.get("lora") is not None:
                llm["lora"] = LoraConfig(**llm["lora"])
            codebook = _without_retired(d.get("codebook", {}), "projection", "mlp", d)
            loss = _without_retired(d.get("loss", {}), "block_ce", "all", d)
            return cls(
                name=d["name"],
                vision=VisionConfig(**d["vision"]),
                llm=LLMConfig(**llm),
                codebook=CodebookConfig(**codebook),
                decoder=DecoderConfig(**d.get("decoder", {})),
                loss=LossConfig(**loss),
                image_pool=d.get("image_pool", 16),
                family=d.get("family", "pixellm"),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"malformed PixelLM config {d.get('name', '?')!r}: {e}") from e

    def validate(self) -> PixelLMConfig:
        if self.family != "pixellm":
            raise ConfigError(f"{self.name}: a PixelLMConfig has family 'pixellm', not {self.family!r}")
        if len(self.vision.layers) != self.codebook.num_scales:
            raise ConfigError(
                f"{self.name}: vision.layers has {len(self.vision.layers)} entries but "
                f"codebook.num_scales is {self.codebook.num_scales}")
        if self.codebook.fusion not in ("linear", "mean"):
            raise ConfigError(f"{self.name}: codebook.fusion must be 'linear' or 'mean'")
        for key in ("phrase_weight", "region_weight", "iou_weight"):
            if getattr(self.loss, key) < 0:
                raise ConfigError(f"{self.name}: loss.{key} must be >= 0, got {getattr(self.loss, key)}")
        if self.llm.name_or_path is None and self.llm.config is None:
            raise ConfigError(f"{self.name}: llm needs name_or_path or config")
        return self


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    for path in sorted(_CONFIG_DIR.glob("*.json")):
        name = json.loads(path.read_text())["name"]
        if name not in _REGISTRY:  # a user's add_model_config() of the same name wins
            add_model_config(path)


def add_model_config(source: str | Path | dict[str, Any]) -> str:
    """Register a model config (of any family) from a JSON file or a dict; returns its name."""
    from .families import config_from_dict

    d = json.loads(Path(source).read_text()) if not isinstance(source, dict) else source
    if not isinstance(d, dict) or "name" not in d:
        raise ConfigError(f"model config {source!r} has no 'name'")
    config_from_dict(d)
    _REGISTRY[d["name"]] = copy.deepcopy(d)
    return d["name"]


def list_models() -> list[str]:
    """Names of the registered model configs, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_model_config(name: str, **overrides: Any) -> Any:
    """A fresh config for ``name``, of its family's config class; ``overrides`` replace
    top-level sections or fields.

    Example: ``get_model_config("pixellm-tiny", codebook={"tokens_per_scale": 1})``.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    d = copy.deepcopy(_REGISTRY[name])
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key].update(value)
        else:
            d[key] = value
    from .families import config_from_dict

    return config_from_dict(d)
