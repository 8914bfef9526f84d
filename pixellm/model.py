"""PixelLM: CLIP multi-scale features -> LLM with a segmentation codebook -> light pixel decoder.

``PixelLM`` receives already-built parts (see :mod:`pixellm.build`). ``forward`` is the
teacher-forced training pass returning a :class:`PixelLMOutput` with the loss and its parts;
:meth:`PixelLM.generate` is greedy decoding with a KV cache, decoding one mask per complete
codebook block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .codebook import (
    CodebookFusion,
    PhraseHead,
    RegionWordHead,
    block_phrases,
    gather_blocks,
    parse_blocks,
)
from .decoder import DecoderOutput, PixelDecoder, iou_loss, mask_losses
from .llm import ImageProjector
from .segmenter import LLMSegmenter, PixelLMOutput
from .vision import VisionTower


def answer_starts(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True at the first token of each answer, a maximal run of ``labels`` that
    are not -100 (one per turn of a conversation)."""
    scored = labels != -100
    begins = scored.clone()
    begins[:, 1:] &= ~scored[:, :-1]
    return begins


def block_questions(labels: torch.Tensor, starts: list[list[int]]) -> torch.Tensor:
    """The question (turn) of every block, so the target-refinement loss compares only the
    masks of one question, also in multi-turn sequences.

    Args:
        labels: (B, T) with -100 outside the answers; each maximal run of other values is one
            answer (one turn).
        starts: per row, the start positions of its blocks.

    Returns:
        (K,) int64 ids, equal for blocks of the same answer of the same row, in block order.
    """
    turn = answer_starts(labels).long().cumsum(1)  # (B, T) answers begun up to each position
    ids = [b * labels.shape[1] + int(turn[b, s]) for b, row in enumerate(starts) for s in row]
    return torch.tensor(ids, dtype=torch.long)


class PixelLM(LLMSegmenter):
    """The assembled model.

    Args:
        vision: multi-scale CLIP tower. projector: deep scale -> LLM image tokens.
        llm: transformers causal LM (optionally peft-wrapped).
        fusion: codebook hidden states -> per-scale target embeddings.
        decoder: pixel decoder. image_token_id: placeholder id replaced by image tokens.
        codebook_ids: the L*N codebook token ids in block order.
        ce_weight, bce_weight, dice_weight, refine, refine_alpha: loss settings.
        phrase_head: optional :class:`~pixellm.codebook.PhraseHead`; in training its loss,
            times ``phrase_weight``, joins the mask term (one value per block, like the masks).
        region_head: optional :class:`~pixellm.codebook.RegionWordHead` on the deepest vision
            scale; in training its loss, times ``region_weight``, is a term of its own (a mean
            over covered patches, not over blocks).
        iou_weight: weight of :func:`~pixellm.decoder.iou_loss` (the decoder's IoU prediction,
            when it has the head) in the mask term, a mean over blocks like the masks.
    """

    def __init__(self, *, vision: VisionTower, projector: ImageProjector, llm: nn.Module,
                 fusion: CodebookFusion, decoder: PixelDecoder, image_token_id: int,
                 codebook_ids: list[int], ce_weight: float = 1.0, bce_weight: float = 2.0,
                 dice_weight: float = 0.5, refine: bool = True, refine_alpha: float = 2.0,
                 phrase_head: PhraseHead | None = None,
                 phrase_weight: float = 0.0, region_head: RegionWordHead | None = None,
                 region_weight: float = 0.0, iou_weight: float = 0.0) -> None:
        super().__init__(vision=vision, projector=projector, llm=llm,
                         image_token_id=image_token_id, codebook_ids=codebook_ids)
        self.fusion, self.decoder = fusion, decoder
        self.loss_cfg = dict(bce_weight=bce_weight, dice_weight=dice_weight, refine=refine,
                             refine_alpha=refine_alpha)
        self.ce_weight = ce_weight
        self.phrase_head, self.phrase_weight = phrase_head, phrase_weight
        self.region_head, self.region_weight = region_head, region_weight
        self.iou_weight = iou_weight

    # -- pieces --------------------------------------------------------------------------
    def trainable_components(self) -> dict[str, tuple[nn.Module, bool]]:
        """name -> (module, must it train fully); the vision tower trains unless frozen."""
        parts = {"vision": (self.vision, False), "projector": (self.projector, True),
                 "llm": (self.llm, False), "fusion": (self.fusion, True),
                 "decoder": (self.decoder, True)}
        for name in ("phrase_head", "region_head"):  # training-only heads, when configured
            if getattr(self, name) is not None:
                parts[name] = (getattr(self, name), True)
        return parts

    def encode_images(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """pixels (B, 3, S, S) -> (L feature maps (B, C, g, g), image tokens (B, P, D))."""
        feats = self.vision(pixels)
        return feats, self.projector(feats[0])

    def decode_masks(self, feats: list[torch.Tensor], block_hidden: torch.Tensor,
                     batch_index: torch.Tensor) -> DecoderOutput:
        """block_hidden (K, L*N, D) -> :class:`DecoderOutput`: mask logits (K, h, w) at the
        decoder grid and the IoU logits (K,) (None without an IoU head)."""
        targets = self.fusion(block_hidden)  # (K, L, C)
        return self.decoder(feats, targets, batch_index)

    # -- training ------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, gt_masks: list[torch.Tensor] | None = None
                ) -> PixelLMOutput:
        """Teacher-forced pass.

        Args:
            pixels: (B, 3, S, S) normalised, padded images.
            input_ids: (B, T) prompt (with P <image> tokens) + answer with codebook blocks.
            attention_mask: (B, T) 1 for real tokens (0 also masks padded image patches).
            labels: (B, T) next-token targets aligned with input_ids, -100 where ignored.
            gt_masks: per image (K_b, S, S) float {0,1}, one per complete block of its answer.
        Returns:
            :class:`PixelLMOutput`; loss is None unless labels and gt_masks are given.
        """
        feats, img_tok = self.encode_images(pixels)
        hidden, _ = self.run_llm(self.embed(input_ids, img_tok), attention_mask)  # (B, T, D)
        text_logits = self.base_llm.lm_head(hidden)  # (B, T, V)
        starts = [parse_blocks(row.tolist(), self.codebook_ids).starts for row in input_ids]
        block_hidden, batch_index = gather_blocks(hidden, starts, len(self.codebook_ids))
        targets = self.fusion(block_hidden)  # (K, L, C)
        dec = self.decoder(feats, targets, batch_index)
        mask_logits = dec.logits  # (K, h, w)
        out = PixelLMOutput(None, {}, text_logits, mask_logits, batch_index, iou=dec.iou)
        if labels is not None and gt_masks is not None:
            gt = (torch.cat([m.to(mask_logits.device) for m in gt_masks]) if gt_masks
                  else mask_logits.new_zeros(0, *pixels.shape[-2:]))  # (K, S, S)
            if gt.shape[0] != mask_logits.shape[0]:
                raise ValueError(f"{mask_logits.shape[0]} codebook blocks in the answers but {gt.shape[0]} gt masks")
            aux = self._aux_losses(input_ids, labels, starts, targets, feats[0], gt, batch_index)
            questions = block_questions(labels, starts).to(batch_index.device)
            out.terms, out.parts = self._loss(text_logits, labels, dec, questions, gt)
            out.counts = {"text": int((labels[:, 1:] != -100).sum()), "mask": int(mask_logits.shape[0])}
            for name, (weight, value, count) in aux.items():
                if count is None:  # a mean over blocks, like the masks
                    out.terms["mask"] = out.terms["mask"] + weight * value
                else:  # its own mean, renormalised on its own
                    out.terms[name], out.counts[name] = weight * value, count
                out.parts[name] = value.detach()
            out.loss = sum(out.terms.values())
        return out

    def _aux_losses(self, input_ids, labels, starts, targets, deep_feats, gt, batch_index
                    ) -> dict[str, tuple[float, torch.Tensor, float | None]]:
        """The phrase-supervision losses that are on: name -> (weight, loss, count).

        "phrase": :class:`PhraseHead` on the fused targets (K, L, C), a mean over blocks
        (count None: it joins the mask term); "region": :class:`RegionWordHead` on
        ``deep_feats`` (B, C, g, g) under the ground-truth masks ``gt`` (K, S, S), a mean over
        covered patch weight (count: that weight). Each block's phrase is read from the answer.
        """
        phrase_on = self.phrase_head is not None and self.phrase_weight > 0
        region_on = self.region_head is not None and self.region_weight > 0
        if not (phrase_on or region_on):
            return {}
        phrases = [p for row, lab, st in zip(input_ids, labels != -100, starts, strict=True)
                   for p in block_phrases(row, lab, st, self.codebook_ids)]
        out = {}
        if phrase_on:
            out["phrase"] = (self.phrase_weight, self.phrase_head.loss(targets, phrases), None)
        if region_on:
            total, weight = self.region_head.sums(deep_feats, gt, batch_index, phrases)
            out["region"] = (self.region_weight, total / max(weight, 1e-6), weight)
        return out

    def _loss(self, text_logits, labels, dec: DecoderOutput, questions, gt):
        """Text CE, mask losses and, with an IoU head, the IoU-prediction loss (in the mask
        term); ``gt`` (K, S, S) holds the masks of the K blocks in order and ``questions`` (K,)
        the question of each (the refinement loss compares within one)."""
        ce = self.text_loss(text_logits, labels)
        logits = dec.logits
        if gt.shape[0] == 0:
            gt = logits.new_zeros(logits.shape)
        elif gt.shape[-2:] != logits.shape[-2:]:  # score at the padded input resolution
            logits = F.interpolate(logits[:, None], size=gt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        m = mask_losses(logits.float(), gt.float(), questions, **self.loss_cfg)
        if dec.iou_logits is not None and self.iou_weight > 0:  # the actual IoU at this resolution
            m["iou"] = iou_loss(dec.iou_logits, logits, gt)
            m["mask"] = m["mask"] + self.iou_weight * m["iou"]
        parts = {"ce": ce.detach(), **{k: v.detach() for k, v in m.items() if k != "mask"}}
        return {"text": self.ce_weight * ce, "mask": m["mask"]}, parts
