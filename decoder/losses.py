"""Mask losses: BCE + Dice, and PixelLM's target-refinement weighting.

Conventions: every term is computed per mask (mean over its pixels for BCE, soft Dice over its
pixels) and then averaged over the K masks of the batch. The text cross-entropy is computed
by the model (:class:`pixellm.model.PixelLM`), whose loss is ``ce_weight * ce`` plus the
``"mask"`` term of :func:`mask_losses`.

Target refinement (PixelLM): a pixel that two or more *predicted* masks of the same question
claim (logit > 0, no gradient through the claim) gets weight ``refine_alpha`` in the BCE of
every mask of that question, weight 1 elsewhere. ``"refine"`` is the extra BCE this adds:
``mean_k mean_pixels (w - 1) * bce``, so ``bce + refine`` is the weighted BCE.

IoU prediction (SAM): :func:`iou_loss` trains the decoder's predicted IoU of each mask
against the IoU its binarised mask actually has, a label computed without gradient: no
gradient reaches the mask logits through it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["dice_loss", "iou_loss", "mask_iou", "mask_losses", "refinement_weights"]


def dice_loss(logits: Tensor, targets: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss per mask.

    Args:
        logits: (K, H, W) mask logits.
        targets: (K, H, W) in {0, 1} (float or bool).
        smooth: added to numerator and denominator.

    Returns:
        (K,) ``1 - (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``, ``p = sigmoid``.
    """
    p = torch.sigmoid(logits.float()).flatten(1)  # (K, HW)
    t = targets.float().flatten(1)  # (K, HW)
    inter = (p * t).sum(1)  # (K,)
    return 1 - (2 * inter + smooth) / (p.sum(1) + t.sum(1) + smooth)


def refinement_weights(logits: Tensor, group: Tensor, *, alpha: float = 2.0) -> Tensor:
    """Per-pixel BCE weights of the target-refinement loss.

    Args:
        logits: (K, H, W) predicted mask logits (detached here).
        group: (K,) int64 question id of each mask; masks with the same id compete.
        alpha: weight of pixels claimed (logit > 0) by >= 2 masks of the same question.

    Returns:
        (K, H, W) float32 weights: ``alpha`` where the mask's question has >= 2 claims, else 1.
    """
    claimed = (logits.detach() > 0).float()  # (K, H, W)
    same = (group[:, None] == group[None, :]).float()  # (K, K)
    claims = torch.einsum("kj,jhw->khw", same, claimed)  # (K, H, W) claims in k's question
    return torch.where(claims >= 2, alpha, 1.0)


def mask_losses(
    logits: Tensor,
    targets: Tensor,
    group: Tensor,
    *,
    bce_weight: float = 2.0,
    dice_weight: float = 0.5,
    refine: bool = True,
    refine_alpha: float = 2.0,
) -> dict[str, Tensor]:
    """BCE + Dice (+ target refinement) over K masks.

    Args:
        logits: (K, H, W) predicted logits; K may be 0.
        targets: (K, H, W) ground truth in {0, 1}, float or bool, same size as ``logits``.
        group: (K,) int64 question index of each mask (for the refinement loss).
        bce_weight, dice_weight: weights in ``"mask"``.
        refine: add the target-refinement term (off for the ablation).
        refine_alpha: weight of over-claimed pixels.

    Returns:
        float32 scalars: ``"bce"`` (plain BCE), ``"dice"``, ``"refine"`` (extra weighted BCE, 0
        when off) and ``"mask" = bce_weight * (bce + refine) + dice_weight * dice``. With K = 0
        all are 0 and still attached to the graph of ``logits``.
    """
    if logits.shape != targets.shape or logits.dim() != 3:
        raise ValueError(
            f"logits and targets must both be (K, H, W), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if group.shape != logits.shape[:1]:
        raise ValueError(f"group must be ({logits.shape[0]},), got {tuple(group.shape)}")
    if logits.shape[0] == 0:
        zero = logits.float().sum() * 0.0
        return {"bce": zero, "dice": zero, "refine": zero, "mask": zero}
    x, t = logits.float(), targets.float()
    bce_map = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # (K, H, W)
    bce = bce_map.flatten(1).mean(1).mean()
    dice = dice_loss(x, t).mean()
    if refine:
        extra = refinement_weights(x, group, alpha=refine_alpha) - 1  # (K, H, W)
        refine_term = (extra * bce_map).flatten(1).mean(1).mean()
    else:
        refine_term = torch.zeros_like(bce)
    mask = bce_weight * (bce + refine_term) + dice_weight * dice
    return {"bce": bce, "dice": dice, "refine": refine_term, "mask": mask}


@torch.no_grad()
def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of each binarised mask with its ground truth, without gradient.

    Args:
        logits: (K, H, W) mask logits; foreground where logit > 0.
        targets: (K, H, W) ground truth in {0, 1} (float or bool); foreground where > 0.5.

    Returns:
        (K,) float32 IoU in [0, 1]; 1 where both masks are empty (as in ``muse.metrics``).
    """
    pred, gt = (logits > 0).flatten(1), (targets.float() > 0.5).flatten(1)  # (K, HW) bool
    inter = (pred & gt).sum(1).float()  # (K,)
    union = (pred | gt).sum(1).float()  # (K,)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def iou_loss(iou_logits: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
    """Loss of the predicted IoU: binary cross-entropy against the actual IoU as a soft label,
    less that label's entropy (a binary KL divergence: the same gradient as the BCE, and 0
    when the prediction equals the actual IoU).

    Args:
        iou_logits: (K,) predicted IoU logits (the prediction is their sigmoid).
        logits: (K, H, W) mask logits; only their binarisation is read, with no gradient.
        targets: (K, H, W) ground truth in {0, 1}, same size as ``logits``.

    Returns:
        float32 scalar, the mean over the K masks of ``KL(Bernoulli(iou) || Bernoulli(p))``;
        0, still attached to the graph of ``iou_logits``, when K = 0.
    """
    if iou_logits.shape != logits.shape[:1] or logits.shape != targets.shape:
        raise ValueError(
            f"need iou_logits (K,), logits and targets (K, H, W); got "
            f"{tuple(iou_logits.shape)}, {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    if iou_logits.shape[0] == 0:
        return iou_logits.float().sum() * 0.0
    t = mask_iou(logits, targets)  # (K,) soft labels, no gradient
    bce = F.binary_cross_entropy_with_logits(iou_logits.float(), t, reduction="none")  # (K,)
    entropy = -(torch.xlogy(t, t) + torch.xlogy(1 - t, 1 - t))  # (K,) the BCE's floor
    return (bce - entropy).mean()

