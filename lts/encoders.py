"""LTS's three-scale visual encoders: an open_clip ViT's hooks reassembled to three strides,
or a timm CNN's three feature stages (DarkNet-53 in the paper)."""
from __future__ import annotations

import torch
from torch import nn

from pixellm.errors import ConfigError
from pixellm.vision import VisionTower, create_open_clip_visual

from .config import LTSVisionConfig


class ViTThreeScales(nn.Module):
    """A ViT's 3 hooked blocks (B, W, g, g), shallowest first -> maps at 2g, g and g/2 (strides
    p/2, p, 2p), finest first; ``channels``: their widths (W each); ``strides``: input pixels
    per cell of each."""

    def __init__(self, tower: VisionTower) -> None:
        super().__init__()
        self.tower = tower
        w = tower.width
        self.resample = nn.ModuleList([nn.ConvTranspose2d(w, w, 2, stride=2), nn.Identity(),
                                       nn.Conv2d(w, w, 3, stride=2, padding=1)])
        self.channels = [w, w, w]
        p = tower.patch_size
        self.strides = [p / 2, p, 2 * p]

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return [r(h) for r, h in zip(self.resample, self.tower(pixels), strict=True)]


class TimmThreeScales(nn.Module):
    """A timm backbone's ``features_only`` stages at ``out_indices``, finest first."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.channels = list(model.feature_info.channels())
        self.strides = list(model.feature_info.reduction())

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(pixels))


def build_encoder(v: LTSVisionConfig, *, load_weights: bool) -> nn.Module:
    """The configured three-scale encoder; pretrained weights only when ``load_weights``."""
    if v.kind == "open_clip":
        visual = create_open_clip_visual(model_name=v.model_name, image_size=v.image_size,
                                         pretrained=v.pretrained if load_weights else None,
                                         open_clip_config=v.open_clip_config)
        enc = ViTThreeScales(VisionTower(visual=visual, layers=v.layers, freeze=v.freeze))
        g, rem = divmod(v.image_size, enc.tower.patch_size)
        if rem or g % 2:
            raise ConfigError(f"image_size {v.image_size} must be an even multiple of the patch "
                              f"{enc.tower.patch_size}")
        return enc
    import timm

    try:
        model = timm.create_model(v.model_name, features_only=True, out_indices=tuple(v.layers),
                                  pretrained=bool(v.pretrained) and load_weights)
    except (RuntimeError, ValueError) as e:  # unknown model, bad indices
        raise ConfigError(f"timm backbone {v.model_name!r} with out_indices {v.layers}: {e}") from e
    if v.freeze:
        model.requires_grad_(False)
    return TimmThreeScales(model)
