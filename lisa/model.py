"""LISA: CLIP image tokens -> LLM writing one ``[SEG]`` per target -> ``text_hidden_fcs`` ->
a sparse prompt for SAM's mask decoder over SAM's image embedding.

As GSVA generalises LISA, the answer carries one ``[SEG]`` after each target phrase (zero
targets: none) and SAM's mask decoder runs once per ``[SEG]``. The hidden state used is the
last layer's at the ``[SEG]`` position, the one the harness's generation gathers for any block
(LISA's code reads the position before, whose output predicts ``[SEG]``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.codebook import gather_blocks, parse_blocks
from pixellm.decoder import DecoderOutput, iou_loss, mask_losses
from pixellm.llm import ImageProjector
from pixellm.segmenter import LLMSegmenter, PixelLMOutput
from pixellm.vision import VisionTower


class Lisa(LLMSegmenter):
    """The assembled LISA model.

    Args:
        vision: CLIP tower; its one configured block feeds the LLM. projector: those patch
            features -> LLM image tokens. llm: transformers causal LM (optionally peft-wrapped).
        seg_projection: ``text_hidden_fcs``, (K, D) -> (K, C_sam) sparse prompt embeddings.
        sam: ``transformers.SamModel`` (image encoder, prompt encoder, mask decoder).
        image_token_id: ``<image>`` id. seg_token_id: ``[SEG]`` id.
        clip_size: CLIP's input side S; the model's input (SAM's side S') is resized to it.
        freeze_sam_encoder: keep SAM's image encoder frozen (in eval mode, no gradient).
        sam_norm: (mean, std) of SAM's own normalisation, or None to feed SAM the input as is;
            ``clip_norm``: the (mean, std) the input was normalised with.
        ce_weight, bce_weight, dice_weight, iou_weight: loss weights.
    """

    def __init__(self, *, vision: VisionTower, projector: ImageProjector, llm: nn.Module,
                 seg_projection: nn.Module, sam: nn.Module, image_token_id: int, seg_token_id: int,
                 clip_size: int, freeze_sam_encoder: bool = False,
                 sam_norm: tuple[list[float], list[float]] | None = None,
                 clip_norm: tuple[list[float], list[float]] | None = None, ce_weight: float = 1.0,
                 bce_weight: float = 2.0, dice_weight: float = 0.5, iou_weight: float = 1.0) -> None:
        super().__init__(vision=vision, projector=projector, llm=llm, image_token_id=image_token_id,
                         codebook_ids=[seg_token_id])
        self.seg_projection, self.sam = seg_projection, sam
        self.clip_size = clip_size
        self.sam.vision_encoder.frozen = freeze_sam_encoder
        if freeze_sam_encoder:
            self.sam.vision_encoder.requires_grad_(False)
        # input (CLIP-normalised) -> SAM-normalised: x * scale + shift, per channel
        scale, shift = torch.ones(3), torch.zeros(3)
        if sam_norm is not None:
            (cm, cs), (sm, ss) = clip_norm, sam_norm
            scale = torch.tensor(cs) / torch.tensor(ss)
            shift = (torch.tensor(cm) - torch.tensor(sm)) / torch.tensor(ss)
        self.register_buffer("_sam_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_sam_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.weights = dict(ce=ce_weight, bce=bce_weight, dice=dice_weight, iou=iou_weight)

    def train(self, mode: bool = True) -> Lisa:
        super().train(mode)
        if self.sam.vision_encoder.frozen:
            self.sam.vision_encoder.eval()
        return self

    def trainable_components(self) -> dict[str, tuple[nn.Module, bool]]:
        """name -> (module, must it train fully). ``sam_encoder`` has ``frozen`` set in the
        real-scale configs; the prompt encoder and mask decoder always train, as in LISA."""
        return {"vision": (self.vision, False), "projector": (self.projector, True),
                "llm": (self.llm, False), "seg_projection": (self.seg_projection, True),
                "sam_encoder": (self.sam.vision_encoder, False),
                "sam_decoder": (nn.ModuleList([self.sam.prompt_encoder, self.sam.mask_decoder,
                                               self.sam.shared_image_embedding]), True)}

    def checkpoint_config(self) -> dict:
        """As the base class, with SAM's config inlined (a ``name_or_path`` directory's too), so
        the checkpoint rebuilds without that directory: its weights file holds SAM's weights."""
        d = super().checkpoint_config()
        sam = self.sam.config.to_dict()
        d["sam"]["config"] = {k: sam[k] for k in ("vision_config", "prompt_encoder_config", "mask_decoder_config")}
        d["sam"]["name_or_path"] = None
        return d

    # -- pieces --------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """pixels (B, 3, S', S') at SAM's side -> ([SAM image embedding (B, C, g, g)],
        image tokens (B, P, D) from CLIP at its side S)."""
        clip = pixels
        if pixels.shape[-1] != self.clip_size:
            clip = F.interpolate(pixels, size=(self.clip_size, self.clip_size), mode="bilinear",
                                 align_corners=False, antialias=True)
        tokens = self.projector(self.vision(clip)[0])  # (B, P, D)
        return [self.encode_sam(pixels)], tokens

    def encode_sam(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, S', S') normalised as the model's input -> SAM's image embedding
        (B, C, g, g), renormalised to SAM's statistics first; no gradient when frozen."""
        sam_px = pixels * self._sam_scale.to(pixels.dtype) + self._sam_shift.to(pixels.dtype)
        encoder = self.sam.vision_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
            return encoder(sam_px).last_hidden_state

    def decode_masks(self, feats: list[torch.Tensor], block_hidden: torch.Tensor,
                     batch_index: torch.Tensor) -> DecoderOutput:
        """block_hidden (K, 1, D) ``[SEG]`` states -> ``text_hidden_fcs`` -> :meth:`sam_decode`."""
        return self.sam_decode(feats, self.seg_projection(block_hidden[:, 0]), batch_index)

    def sam_decode(self, feats: list[torch.Tensor], prompts: torch.Tensor,
                   batch_index: torch.Tensor) -> DecoderOutput:
        """SAM's mask decoder, once per target, on its image's embedding (``feats[0]``
        (B, C, g, g)) with its (K, C) sparse prompt -> :class:`DecoderOutput`: logits (K, 4g, 4g)
        (SAM's low-resolution masks over the padded input) and IoU logits (K,)."""
        emb = feats[0]
        g = emb.shape[-1]
        k = prompts.shape[0]
        if k == 0:
            empty = emb.new_zeros(0, 4 * g, 4 * g) + prompts.sum() * 0  # keeps the graph
            return DecoderOutput(empty, emb.new_zeros(0))
        image = emb[batch_index]  # (K, C, g, g)
        pe = self.sam.get_image_wide_positional_embeddings().to(image.dtype).expand(k, -1, -1, -1)
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(k, -1, g, g)
        masks, iou = self.sam.mask_decoder(image, pe, prompts[:, None, None].to(image.dtype),
                                           dense.to(image.dtype), multimask_output=False)
        logits = masks[:, 0, 0]  # (K, 4g, 4g)
        return DecoderOutput(logits, iou[:, 0, 0])

    # -- training ------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, gt_masks: list[torch.Tensor] | None = None
                ) -> PixelLMOutput:
        """Teacher-forced pass.

        Args:
            pixels: (B, 3, S', S') normalised, padded images at SAM's side.
            input_ids: (B, T) prompt (with P <image> tokens) + answer with one [SEG] per target.
            attention_mask: (B, T). labels: (B, T) next-token targets, -100 where ignored.
            gt_masks: per image (K_b, S', S') float {0, 1}, one per [SEG] of its answer.
        Returns:
            :class:`pixellm.segmenter.PixelLMOutput`; loss 1.0 CE + 2.0 BCE + 0.5 Dice (+ the IoU
            head's), None unless labels and gt_masks are given.
        """
        feats, img_tok = self.encode_images(pixels)
        hidden, _ = self.run_llm(self.embed(input_ids, img_tok), attention_mask)  # (B, T, D)
        text_logits = self.base_llm.lm_head(hidden)  # (B, T, V)
        starts = [parse_blocks(row.tolist(), self.codebook_ids).starts for row in input_ids]
        block_hidden, batch_index = gather_blocks(hidden, starts, 1)  # (K, 1, D)
        dec = self.decode_masks(feats, block_hidden, batch_index)
        out = PixelLMOutput(None, {}, text_logits, dec.logits, batch_index, iou=dec.iou)
        if labels is None or gt_masks is None:
            return out
        gt = (torch.cat([m.to(dec.logits.device) for m in gt_masks]) if gt_masks
              else dec.logits.new_zeros(0, *pixels.shape[-2:]))
        if gt.shape[0] != dec.logits.shape[0]:
            raise ValueError(f"{dec.logits.shape[0]} [SEG] tokens in the answers but {gt.shape[0]} gt masks")
        ce = self.text_loss(text_logits, labels)
        mask = self.mask_loss(dec, gt)
        out.parts = {"ce": ce.detach(), **{k: v.detach() for k, v in mask.items() if k != "mask"}}
        out.terms = {"text": self.weights["ce"] * ce, "mask": mask["mask"]}
        out.counts = {"text": int((labels[:, 1:] != -100).sum()), "mask": int(dec.logits.shape[0])}
        out.loss = sum(out.terms.values())
        return out

    def mask_loss(self, dec: DecoderOutput, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """BCE + Dice (+ IoU head) at the mask grid; ``gt`` (K, S', S') is area-pooled to it and
        binarised (exact for inputs upsampled from that grid, as the 96-px generated scenes)."""
        logits = dec.logits.float()  # (K, h, w)
        if gt.shape[0] and gt.shape[-1] != logits.shape[-1]:
            gt = (F.adaptive_avg_pool2d(gt[:, None].float(), logits.shape[-2:])[:, 0] >= 0.5).float()
        elif not gt.shape[0]:
            gt = logits.new_zeros(logits.shape)
        groups = torch.arange(logits.shape[0], device=logits.device)  # no refinement: one per mask
        m = mask_losses(logits, gt, groups, bce_weight=self.weights["bce"],
                        dice_weight=self.weights["dice"], refine=False)
        m.pop("refine", None)  # LISA has no refinement term
        if dec.iou_logits is not None and self.weights["iou"] > 0:
            m["iou"] = iou_loss(dec.iou_logits.float(), logits, gt)
            m["mask"] = m["mask"] + self.weights["iou"] * m["iou"]
        return m
