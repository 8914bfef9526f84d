"""CLIP-ViT vision tower (open_clip) giving multi-scale patch features."""
from __future__ import annotations

import logging

import open_clip
import torch
from torch import nn


def create_open_clip_visual(
    *, model_name: str, image_size: int, pretrained: str | None = None,
    open_clip_config: dict | None = None,
) -> nn.Module:
    """Build an open_clip ViT and return its ``.visual`` tower.

    Args:
        model_name: an open_clip model name, or a new name registered from ``open_clip_config``.
        image_size: input side; positional embeddings are interpolated to it (e.g. 336 -> 448)
            when pretrained weights are loaded.
        pretrained: an open_clip pretrained tag ("openai") or a local checkpoint file; None
            leaves random weights (from-scratch configs, meta-device builds).
        open_clip_config: model config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)
            registered under ``model_name`` when given.
    """
    if open_clip_config is not None:
        # open_clip has no public per-dict registration; its registry is the documented
        # extension point that add_model_config(path) fills.
        open_clip.factory._MODEL_CONFIGS[model_name] = open_clip_config
    level = logging.getLogger().level
    if pretrained is None:  # open_clip warns about random init, which is what we asked for
        logging.getLogger().setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, force_image_size=image_size,
                                          device=None)  # None: keep the ambient (e.g. meta) device
    finally:
        logging.getLogger().setLevel(level)
    return model.visual


class VisionTower(nn.Module):
    """Wraps an open_clip VisionTransformer; returns patch features of chosen blocks.

    Args:
        visual: open_clip ``VisionTransformer`` (has ``forward_intermediates``).
        layers: block indices to return, deepest first (one per scale).
        freeze: freeze all weights and keep the tower in eval mode.
    """

    def __init__(self, *, visual: nn.Module, layers: list[int], freeze: bool = True) -> None:
        super().__init__()
        self.visual = visual
        self.layers = list(layers)
        self.frozen = freeze
        if freeze:
            self.visual.requires_grad_(False)

    @property
    def width(self) -> int:
        return self.visual.transformer.width

    @property
    def patch_size(self) -> int:
        ps = self.visual.patch_size
        return ps[0] if isinstance(ps, (tuple, list)) else ps

    def train(self, mode: bool = True) -> VisionTower:
        super().train(mode)
        if self.frozen:
            self.visual.eval()
        return self

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """pixels (B, 3, S, S) -> L tensors (B, C, S/p, S/p), deepest scale first."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            # stop_early: the blocks after the deepest chosen one are never run
            out = self.visual.forward_intermediates(
                pixels, indices=self.layers, stop_early=True, intermediates_only=True,
                output_fmt="NCHW",
            )
        feats = dict(zip(sorted(self.layers), out["image_intermediates"]))
        return [feats[i] for i in self.layers]
