"""LISA's warm-up stage: pretrain SAM as a promptable segmenter before the LISA run.

LISA starts from SAM pretrained on SA-1B; a from-scratch tiny SAM trained only through the
``[SEG]`` prompts stays on the empty-mask plateau (docs/experiments.md, issue 23). This stage is
the tiny analogue of that pretraining, on the training scenes themselves: each target mask is
prompted with one positive point drawn inside it, and SAM (image encoder, prompt encoder, mask
decoder) learns to return the mask, with the LISA run's mask loss (BCE + Dice + IoU head).
``pixellm-train --vision-warmup STEPS`` runs it for a LISA model; its time counts against
``--time-budget``, as PixelLM's vision warm-up does.
"""
from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pixellm.decoder import DecoderOutput
from pixellm.errors import InputError, TrainingDivergedError
from pixellm.train.budget import WarmupLinearDecay
from pixellm.train.mixture import MixtureSampler
from pixellm.train.optim import adamw
from pixellm.train.warmup import ObjectWordDataset, average_grads, collate_objects, global_sums


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
    logits = masks[:, 0, 0]
    return DecoderOutput(logits, [logits], iou[:, 0, 0])


def warm_up_sam(model, dataset: ObjectWordDataset, *, steps: int, batch_size: int, lr: float,
                accelerator, seed: int = 0, warmup: int = 50, betas=(0.9, 0.95), clip: float = 1.0,
                progress: bool = True) -> list[dict]:
    """Train ``model.sam`` on point prompts for ``steps`` steps (same contract as
    :func:`pixellm.train.warmup.warm_up_vision`: ``batch_size`` images per process, seeded
    shares of a global batch, averaged gradients, AdamW with linear warm-up and decay to 5%;
    the model must not be wrapped by ``accelerator.prepare`` yet).

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
    world, rank, dev = accelerator.num_processes, accelerator.process_index, accelerator.device
    opt = adamw(params, lr=lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupLinearDecay(warmup=min(warmup, steps), total=steps,
                                                                     min_ratio=0.05))
    loader = iter(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_objects,
                             sampler=MixtureSampler(sizes=[len(dataset)], rates=[1.0], seed=seed,
                                                    rank=rank, world=world)))
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    bar = tqdm(total=steps, disable=not progress or not accelerator.is_main_process, desc="SAM warm-up",
               dynamic_ncols=True, mininterval=2.0)
    history, t0 = [], time.perf_counter()
    model.sam.train()
    for step in range(1, steps + 1):
        batch = next(loader)
        masks = batch["masks"]
        points = point_prompts(masks, gen)
        with accelerator.autocast():
            out = sam_prompted_masks(model, batch["pixels"].to(dev), points.to(dev), batch["batch_index"].to(dev))
            loss = model.mask_loss(out, masks.to(dev))["mask"]
        count, total = global_sums(accelerator, float(masks.shape[0]), float(loss.detach()) * masks.shape[0])
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"non-finite SAM warm-up loss ({loss.item()}) at warm-up step {step}; stopping")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_grads(accelerator, params)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        elapsed = time.perf_counter() - t0
        rec = {"step": step, "sam_mask": total / max(count, 1.0), "lr": sched.get_last_lr()[0],
               "images_per_s": step * batch_size * world / elapsed, "seconds": elapsed}
        history.append(rec)
        bar.set_postfix({k: f"{rec[k]:.3g}" for k in ("sam_mask", "lr", "images_per_s")})
        bar.update(1)
    bar.close()
    return history
