"""A LISA-style reference pipeline built from real components, for the compute comparison.

LISA (Lai et al., 2024): a LLaVA LLM reads CLIP ViT-L/14 @224 image tokens (penultimate
layer, patch tokens, linear projector) and answers with one ``[SEG]`` token per target; the
``[SEG]`` hidden state, projected to 256 (``text_hidden_fcs``), is a sparse prompt for SAM
ViT-H, whose mask decoder runs once per target on the SAM image embedding of a 1024 input.

Here: open_clip's ``ViT-L-14`` tower, the PixelLM config's LLM (transformers), and
``transformers.SamModel`` with the ViT-H sizes (:func:`sam_vit_h_config`). Weights are random
(counting on the meta device needs none); :func:`build_sam` loads real SAM weights from a
``SamModel.save_pretrained`` directory (e.g. a local copy of ``facebook/sam-vit-huge``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch
from torch import Tensor, nn
from transformers import SamConfig, SamModel

from pixellm.config import PixelLMConfig
from pixellm.llm import apply_lora, build_causal_lm

__all__ = ["LisaReference", "build_lisa_like", "build_lisa_reference", "build_sam", "clip_visual",
           "sam_tiny_config", "sam_vit_h_config"]


def sam_vit_h_config() -> SamConfig:
    """SAM ViT-H (Kirillov et al., 2023): 1024 input, 16x16 patches -> 64x64 embedding."""
    return SamConfig(
        vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                           mlp_dim=5120, global_attn_indexes=[7, 15, 23, 31], window_size=14,
                           image_size=1024, patch_size=16, output_channels=256, num_pos_feats=128),
        prompt_encoder_config=dict(hidden_size=256, image_size=1024, patch_size=16),
        mask_decoder_config=dict(hidden_size=256, mlp_dim=2048, num_hidden_layers=2,
                                 num_attention_heads=8, iou_head_hidden_dim=256),
    )


def sam_tiny_config() -> SamConfig:
    """A SAM-shaped encoder/decoder small enough for CPU latency next to pixellm-tiny.

    256 input (4x the tiny CLIP's 64, as 1024 is ~4.6x LISA's 224), 16x16 embedding, windowed
    blocks with global attention every second block, width-64 prompt/mask decoder.
    """
    return SamConfig(
        vision_config=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           mlp_dim=512, global_attn_indexes=[1, 3], window_size=4,
                           image_size=256, patch_size=16, output_channels=64, num_pos_feats=32),
        prompt_encoder_config=dict(hidden_size=64, image_size=256, patch_size=16),
        mask_decoder_config=dict(hidden_size=64, mlp_dim=256, num_hidden_layers=2,
                                 num_attention_heads=4, iou_head_hidden_dim=64),
    )


def build_sam(config: SamConfig | None = None, *, weights: str | Path | None = None) -> SamModel:
    """SAM with random weights from ``config`` (default ViT-H), or real ones from ``weights``.

    Args:
        config: the sizes; ignored when ``weights`` is given.
        weights: a directory written by ``SamModel.save_pretrained`` (config + safetensors).
    """
    if weights is not None:
        return SamModel.from_pretrained(str(weights))
    return SamModel(config if config is not None else sam_vit_h_config())


class LisaReference(nn.Module):
    """CLIP -> projector -> LLM ([SEG] per target) -> projection -> SAM encoder + decoder.

    Implements the report's ``Pipeline`` surface (see :mod:`pixellm.benchmarks.flop_utils`).

    Args:
        visual: open_clip ``VisionTransformer``. feature_layer: block whose patch tokens feed
            the LLM (LLaVA: the penultimate). projector: (C -> D) image-token projector.
        causal_lm: transformers causal LM. seg_projection: (D -> SAM width) ``text_hidden_fcs``.
        sam: ``transformers.SamModel``. image_size: CLIP input side. name: report label.
    """

    block_len = 1  # one [SEG] token per target

    def __init__(self, *, visual: nn.Module, feature_layer: int, projector: nn.Module,
                 causal_lm: nn.Module, seg_projection: nn.Module, sam: SamModel,
                 image_size: int, name: str = "lisa") -> None:
        super().__init__()
        self.visual, self.projector, self.llm = visual, projector, causal_lm
        self.seg_projection, self.sam = seg_projection, sam
        self.feature_layer, self.image_size, self.name = feature_layer, image_size, name
        self.mask_image_size = sam.config.vision_config.image_size

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    def encode_image(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        """pixels (1, 3, S, S) -> ([], image tokens (1, (S/14)^2, D)); SAM needs no CLIP maps."""
        out = self.visual.forward_intermediates(
            pixels, indices=[self.feature_layer], stop_early=True, intermediates_only=True,
            output_fmt="NCHW")
        patches = out["image_intermediates"][0].flatten(2).transpose(1, 2)  # (1, P, C)
        return [], self.projector(patches)  # (1, P, D)

    def encode_mask_image(self, pixels: Tensor) -> list[Tensor]:
        """pixels (1, 3, 1024, 1024) -> [SAM image embedding (1, 256, 64, 64)]."""
        return [self.sam.vision_encoder(pixels).last_hidden_state]

    def project_targets(self, hidden: Tensor) -> Tensor:
        """[SEG] hidden states (K, 1, D) -> prompt embeddings (K, 256)."""
        return self.seg_projection(hidden[:, 0])

    def decode_masks(self, feats: list[Tensor], targets: Tensor) -> Tensor:
        """SAM prompt + mask decoder; targets (K, 256) -> low-res logits (K, 256, 256).

        The K prompts go in as SAM's point batch, which repeats the image embedding per
        prompt: exactly K single-target decoder runs (LISA batches its [SEG] prompts the same).
        """
        emb = feats[0]  # (1, 256, 64, 64)
        image_pe = self.sam.get_image_wide_positional_embeddings()  # (1, 256, 64, 64)
        _, dense = self.sam.prompt_encoder(None, None, None, None)  # the no-mask embedding
        sparse = targets[None, :, None].to(emb.dtype)  # (1, K, 1, 256): one prompt token each
        masks, _ = self.sam.mask_decoder(emb, image_pe, sparse, dense, multimask_output=False)
        return masks[0, :, 0]  # (K, 256, 256)


def clip_visual(model_name: str, image_size: int, open_clip_config: dict | None = None
                ) -> nn.Module:
    """open_clip tower with random weights on the ambient device (meta: no memory)."""
    if open_clip_config is not None:  # a from-scratch tower (tiny); same registry as pixellm.vision
        open_clip.factory._MODEL_CONFIGS[model_name] = open_clip_config
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns about random init, which is what we ask for
    try:
        return open_clip.create_model(model_name, pretrained=None, force_image_size=image_size,
                                      device=torch.get_default_device()).visual
    finally:
        root.setLevel(level)


def build_lisa_reference(*, llm_config: dict, clip_model: str = "ViT-L-14", clip_size: int = 224,
                         open_clip_config: dict | None = None, sam: SamModel | None = None,
                         lora: dict | None = None, dtype: torch.dtype | None = None,
                         name: str = "lisa") -> LisaReference:
    """Assemble a LISA-style pipeline (random weights; build under ``torch.device("meta")``).

    Args:
        llm_config: transformers config dict with ``model_type`` (e.g. PixelLM's ``llm.config``);
            the vocabulary grows by 2 (``<image>``, ``[SEG]``).
        clip_model, clip_size, open_clip_config: the CLIP tower (LLaVA/LISA: ViT-L/14 @224).
        sam: a built SAM (:func:`build_sam`); None: random ViT-H.
        lora: LoRA settings (r, alpha, dropout, target_modules) as LISA trains; None: none.
        dtype: parameter dtype; None keeps float32.
    """
    visual = clip_visual(clip_model, clip_size, open_clip_config)
    llm = build_causal_lm(name_or_path=None, config=llm_config, torch_dtype=dtype)
    llm.resize_token_embeddings(llm.config.vocab_size + 2, mean_resizing=False)
    if lora is not None:
        llm = apply_lora(llm, **lora)
    d, width = llm.config.hidden_size, visual.transformer.width
    sam = sam if sam is not None else build_sam()
    out = sam.config.prompt_encoder_config.hidden_size
    seg_projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, out),
                                   nn.Dropout(0.0))
    model = LisaReference(visual=visual, feature_layer=len(visual.transformer.resblocks) - 2,
                          projector=nn.Linear(width, d), causal_lm=llm,
                          seg_projection=seg_projection, sam=sam, image_size=clip_size, name=name)
    return model.to(dtype) if dtype is not None else model


def build_lisa_like(config: PixelLMConfig, *, sam_weights: str | Path | None = None,
                    dtype: torch.dtype | None = None) -> LisaReference:
    """The LISA-style twin of a PixelLM config: the same LLM (and LoRA).

    Real-sized configs get CLIP ViT-L/14 @224 and SAM ViT-H; a from-scratch (tiny) config gets
    its own tower at its own size and :func:`sam_tiny_config`.
    """
    v = config.vision
    tiny = v.open_clip_config is not None
    lora = None if config.llm.lora is None else vars(config.llm.lora)
    sam = build_sam(sam_tiny_config() if tiny else None, weights=sam_weights)
    return build_lisa_reference(
        llm_config=config.llm.config, clip_model=v.model_name if tiny else "ViT-L-14",
        clip_size=v.image_size if tiny else 224, open_clip_config=v.open_clip_config, sam=sam,
        lora=lora, dtype=dtype, name=config.name.replace("pixellm", "lisa"))
