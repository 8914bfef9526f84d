"""PixelLM: SAM-free multi-target reasoning segmentation.

The public surface is imported lazily so that ``import pixellm.muse`` (data tools) does not
pay for torch/transformers/open_clip start-up.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PixelLMConfig": "pixellm.config",
    "list_models": "pixellm.config",
    "get_model_config": "pixellm.config",
    "add_model_config": "pixellm.config",
    "PixelLM": "pixellm.model",
    "PixelLMOutput": "pixellm.model",
    "build_model": "pixellm.build",
    "PixelLMPredictor": "pixellm.predictor",
    "LLMSegmenter": "pixellm.segmenter",
    "load_predictor": "pixellm.checkpoint",
    "get_family": "pixellm.families",
    "family_names": "pixellm.families",
    "ConfigError": "pixellm.errors",
    "Prediction": "pixellm.predictor",
    "Target": "pixellm.predictor",
    "RegionDescription": "pixellm.describe",
    "CheckpointError": "pixellm.errors",
    "InputError": "pixellm.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pixellm' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
