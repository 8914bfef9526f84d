"""LISA's warm-up stage: pretrain SAM as a promptable segmenter before the LISA run.

LISA starts from SAM pretrained on SA-1B; a from-scratch tiny SAM trained only through the
``[SEG]`` prompts leaves the empty-mask plateau slowly (docs/experiments.md, issue 23). This
stage is the tiny analogue of that pretraining, on the training scenes themselves: each target mask is
prompted with one positive point drawn inside it, and SAM (image encoder, prompt encoder, mask
decoder) learns to return the mask, with the LISA run's mask loss (BCE + Dice + IoU head).
``pixellm-train --vision-warmup STEPS`` runs it for a LISA model; its time counts against
``--time-budget``, as PixelLM's vision warm-up does.
"""
from __future__ import annotations

import torch

from pixellm.decoder import DecoderOutput
from pixellm.errors import InputError
from pixellm.train.warmup import ObjectWordDataset, train_stage


def point_prompts(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One point per mask, uniform over its foreground pixels (the centre of an empty mask).

    Args:
        masks: (K, S, S) {0, 1}.
    Returns:
        (K, 2) float (x, y) pixel coordinates, pixel centres.
    """
    k, _, w = masks.shape
    flat = masks.flatten(1) > 0.5  # (K, S*S)
    weights = flat.float() + (~flat.any(1, keepdim=True)).float()  # empty mask: any pixel
    idx = torch.multinomial(weights, 1, generator=generator)[:, 0]  # (K,)
    return torch.stack([(idx % w).float() + 0.5, (idx // w).float() + 0.5], dim=1)


def sam_prompted_masks(model, pixels: torch.Tensor, points: torch.Tensor, batch_index: torch.Tensor
                       ) -> DecoderOutput:
    """SAM's masks for one positive point per target.

    Args:
        model: a :class:`~pixellm.lisa.Lisa`. pixels: (B, 3, S, S) at SAM's side, normalised as
            the model's input. points: (K, 2) (x, y) in input pixels. batch_index: (K,) image.
    Returns:
        :class:`DecoderOutput` with logits (K, 4g, 4g) and IoU logits (K,).
    """
    emb = model.encode_sam(pixels)  # (B, C, g, g)
    k = points.shape[0]
    sparse, dense = model.sam.prompt_encoder(
        input_points=points[:, None, None].to(emb.dtype), input_labels=torch.ones(k, 1, 1, dtype=torch.long,
                                                                              device=emb.device),
        input_boxes=None, input_masks=None)
    pe = model.sam.get_image_wide_positional_embeddings().to(emb.dtype).expand(k, -1, -1, -1)
    masks, iou = model.sam.mask_decoder(emb[batch_index], pe, sparse, dense, multimask_output=False)
    return DecoderOutput(masks[:, 0, 0], iou[:, 0, 0])


def warm_up_sam(model, dataset: ObjectWordDataset, *, steps: int, batch_size: int, lr: float,
                accelerator, seed: int = 0, warmup: int = 50, betas=(0.9, 0.95), clip: float = 1.0,
                progress: bool = True) -> list[dict]:
    """Train ``model.sam`` on point prompts for ``steps`` steps with
    :func:`pixellm.train.warmup.train_stage` (the loop of the vision warm-up; the model must
    not be wrapped by ``accelerator.prepare`` yet).

    Returns:
        one record per step: {"step", "sam_mask" (the loss), "lr", "images_per_s", "seconds"}.
    Raises:
        InputError: a frozen SAM, or no training image with a target. TrainingDivergedError: a
            non-finite loss.
    """
    params = [p for p in model.sam.parameters() if p.requires_grad]
    if not params or model.sam.vision_encoder.frozen:
        raise InputError("the SAM warm-up trains SAM's image encoder: it is frozen (a pretrained "
                         "SAM needs no warm-up; pass --vision-warmup 0)")
    if len(dataset) == 0:
        raise InputError("the SAM warm-up found no training image with a target")
    dev = accelerator.device
    gen = torch.Generator().manual_seed(seed * 1000 + accelerator.process_index)

    def step_sums(batch: dict) -> tuple[torch.Tensor, int]:
        masks = batch["masks"]
        out = sam_prompted_masks(model, batch["pixels"].to(dev), point_prompts(masks, gen).to(dev),
                                 batch["batch_index"].to(dev))
        return model.mask_loss(out, masks.to(dev))["mask"] * masks.shape[0], masks.shape[0]  # mean -> sum

    model.sam.train()
    return train_stage(params, dataset, step_sums, steps=steps, batch_size=batch_size, lr=lr,
                       accelerator=accelerator, seed=seed, warmup=warmup, betas=betas, clip=clip,
                       progress=progress, name="SAM warm-up", key="sam_mask")
