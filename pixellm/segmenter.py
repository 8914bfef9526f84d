"""What every "LLM writes a block per target" family shares: image tokens in the LLM's input,
the LLM passes, greedy generation and persistence.

A family subclasses :class:`LLMSegmenter` and supplies the mask side: ``encode_images``
(mask features and image tokens), ``decode_masks`` (block hidden states -> masks),
``forward`` (the teacher-forced loss), ``trainable_components`` and ``input_size``.
PixelLM (:class:`pixellm.model.PixelLM`) fuses L*N codebook states into a light pixel
decoder; LISA (:class:`pixellm.lisa.Lisa`) prompts SAM with one ``[SEG]`` state.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .generation import Generation, greedy_generate
from .llm import ImageProjector
from .vision import VisionTower


@dataclass
class PixelLMOutput:
    """What every family's teacher-forced ``forward`` returns (the name is historical).

    loss: scalar; parts: name -> detached scalar; text_logits (B, T, V);
    mask_logits (K, h, w) at the decoder grid; batch_index (K,) image of each target.
    terms: the weighted parts of ``loss`` (with graph), which sum to it: "text", "mask" and,
    with a region head, "region"; counts: what each term averages over ("text": tokens,
    "mask": masks, "region": covered patch weight), so a multi-process loop can renormalise.
    iou: (K,) the decoder's predicted IoU of each mask, in [0, 1]; None without an IoU head."""

    loss: torch.Tensor | None
    parts: dict[str, torch.Tensor]
    text_logits: torch.Tensor
    mask_logits: torch.Tensor
    batch_index: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    iou: torch.Tensor | None = None


class LLMSegmenter(nn.Module):
    """The shared LLM side.

    Args:
        vision: the CLIP tower (:class:`pixellm.vision.VisionTower`) whose deepest scale feeds
            the LLM. projector: vision features -> LLM image tokens. llm: transformers causal LM
            (optionally peft-wrapped). image_token_id: placeholder id replaced by image tokens.
        codebook_ids: the ids of one target's block, in order.
    """

    def __init__(self, *, vision: VisionTower, projector: ImageProjector, llm: nn.Module,
                 image_token_id: int, codebook_ids: list[int]) -> None:
        super().__init__()
        self.vision, self.projector, self.llm = vision, projector, llm
        self.image_token_id = image_token_id
        self.codebook_ids = list(codebook_ids)
        self.register_buffer("_codebook", torch.tensor(self.codebook_ids), persistent=False)

    @property
    def base_llm(self) -> nn.Module:
        """The transformers model under any peft wrapper (LoRA layers are injected in place)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_tokens

    @property
    def input_size(self) -> int:
        """Side of the padded square input the data pipeline and predictor produce."""
        return self.config.input_size

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, D) with the P ``<image>`` positions of each row replaced."""
        emb = self.base_llm.get_input_embeddings()(input_ids)
        is_img = input_ids == self.image_token_id  # (B, T)
        if is_img.any():
            counts = is_img.sum(1)
            if not bool((counts == image_tokens.shape[1]).all()):
                raise ValueError(f"each row needs {image_tokens.shape[1]} <image> tokens, got {counts.tolist()}")
            emb = emb.masked_scatter(is_img[..., None], image_tokens.to(emb.dtype))
        return emb

    def run_llm(self, embeds: torch.Tensor, attention_mask: torch.Tensor, **kw) -> tuple[torch.Tensor, object]:
        """Last-layer hidden states (B, T, D) and the KV cache; positions follow left padding."""
        if "position_ids" not in kw:
            kw["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.base_llm.model(inputs_embeds=embeds, attention_mask=attention_mask, **kw)
        return out.last_hidden_state, getattr(out, "past_key_values", None)

    @staticmethod
    def text_loss(text_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy: logits (B, T, V) at t predict labels (B, T) at t + 1."""
        return F.cross_entropy(text_logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                               ignore_index=-100)

    def generate(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 **kw) -> Generation:
        """Greedy KV-cached decoding; see :func:`pixellm.generation.greedy_generate`."""
        return greedy_generate(self, pixels, input_ids, attention_mask, **kw)

    def checkpoint_config(self) -> dict:
        """The config as a dict that rebuilds this model offline: the LLM's transformers
        config inlined, no pretrained tags (the weights file holds every tower)."""
        d = self.config.to_dict()
        d["llm"]["config"] = self.base_llm.config.to_dict()
        d["llm"]["config"].pop("transformers_version", None)
        d["vision"]["pretrained"] = None
        return d

    def save_pretrained(self, directory) -> None:
        """Write config, safetensors weights and tokenizer; see :mod:`pixellm.checkpoint`."""
        from .checkpoint import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, *, device=None, dtype=None) -> LLMSegmenter:
        """Load a directory written by :meth:`save_pretrained` (strict), of any family."""
        from .checkpoint import from_pretrained

        return from_pretrained(directory, device=device, dtype=dtype)
