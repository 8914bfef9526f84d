"""Segmentation metrics (docs/design.md, Metrics) as torchmetrics ``Metric``s (summed states, so
they sync across processes).

Every mask is binarised first: float masks are logits (foreground where logit > 0); bool
masks are used as they are. A pair whose union is empty (empty prediction on an empty
ground truth) scores IoU 1, as in LISA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

NUM_K_BUCKETS = 12  # gIoU by target count: buckets 0..10, and 11 for "11 or more"


def binarise(masks: Tensor) -> Tensor:
    """(K, H, W) bool masks, or float logits thresholded at 0 -> (K, H, W) bool."""
    return masks if masks.dtype == torch.bool else masks > 0


def _flat(masks: Tensor) -> Tensor:
    return binarise(masks).flatten(1).to(torch.float64)


def pair_stats(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersections, unions and IoUs of every (prediction, ground truth) pair.

    Args:
        pred: (Kp, H, W) bool masks or float logits.
        gt: (Kg, H, W) bool masks or float logits.

    Returns:
        (inter, union, iou), each float64 (Kp, Kg); iou is 1 where union is 0.
    """
    p, g = _flat(pred), _flat(gt)
    inter = p @ g.T  # (Kp, Kg): one matmul instead of Kp*Kg mask ANDs
    union = p.sum(1, keepdim=True) + g.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return inter, union, iou


def hungarian(iou: Tensor) -> tuple[Tensor, Tensor]:
    """The one-to-one matching of predictions to ground truths that maximises the total IoU.

    Args:
        iou: (Kp, Kg) pairwise IoU (:func:`pair_stats`).

    Returns:
        (rows, cols): long tensors of the matched prediction and ground-truth indices, on
        ``iou``'s device, ``min(Kp, Kg)`` pairs.
    """
    return tuple(torch.as_tensor(a, device=iou.device)
                 for a in linear_sum_assignment(-iou.cpu().numpy()))


def _check_pair(pred: Tensor, gt: Tensor) -> None:
    if pred.dim() != 3 or gt.dim() != 3 or pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"expected (Kp, H, W) and (Kg, H, W) masks of one size, got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")


def _ratio(num: Tensor, den: Tensor) -> float:
    """num / den as a float; NaN when the denominator is 0 (undefined, not perfect)."""
    return float(num) / float(den) if den > 0 else float("nan")


class MultiTargetIoU(Metric):
    """Multi-target (MUSE) gIoU / cIoU with Hungarian matching, plus count and detection
    scores.

    Per question, predictions are matched to ground truths by ``linear_sum_assignment`` on
    -IoU. The question has ``max(Kp, Kg)`` pairs: the matched ones, every unmatched ground
    truth with an empty prediction and every unmatched prediction with an empty ground
    truth (IoU 0, its area counted in the union). A question with no target and no
    prediction scores IoU 1 and adds nothing to the cIoU sums.

    ``compute()`` returns a dict:
        giou: mean over questions of the mean IoU of their pairs.
        ciou: sum of intersections / sum of unions over all pairs.
        count_acc: fraction of questions with Kp == Kg.
        precision50 / recall50: matched pairs with IoU >= 0.5, over sum Kp / over sum Kg.
        giou_by_k: {"0": .., ..., "10": .., "11+": ..} gIoU by ground-truth count
            (buckets without questions are left out).
        n_by_k: question count of each of those buckets.
        n_questions: number of questions.
    Undefined ratios (e.g. precision without any prediction) are NaN.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        f64 = torch.float64
        for name in ("giou_sum", "inter_sum", "union_sum"):
            self.add_state(name, default=torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        for name in ("n_questions", "count_correct", "tp50", "n_pred", "n_gt"):
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("k_giou_sum", default=torch.zeros(NUM_K_BUCKETS, dtype=f64),
                       dist_reduce_fx="sum")
        self.add_state("k_count", default=torch.zeros(NUM_K_BUCKETS, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Sequence[Tensor], targets: Sequence[Tensor]) -> None:
        """Add questions.

        Args:
            preds: one (Kp, H, W) tensor per question (bool, or float logits); Kp may be 0.
            targets: one (Kg, H, W) tensor per question, same H, W; Kg may be 0.
        """
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} questions")
        for pred, gt in zip(preds, targets, strict=True):
            self._update_one(pred, gt)

    def _update_one(self, pred: Tensor, gt: Tensor) -> None:
        _check_pair(pred, gt)
        kp, kg = pred.shape[0], gt.shape[0]
        question_iou = self._match(pred.detach(), gt.detach()) if kp or kg else 1.0
        self.giou_sum += question_iou
        self.n_questions += 1
        self.count_correct += int(kp == kg)
        self.n_pred += kp
        self.n_gt += kg
        bucket = min(kg, NUM_K_BUCKETS - 1)
        self.k_giou_sum[bucket] += question_iou
        self.k_count[bucket] += 1

    def _match(self, pred: Tensor, gt: Tensor) -> float:
        """Match one question, add its pixel sums and IoU>=0.5 hits; return its mean pair IoU."""
        inter, _, iou = pair_stats(pred, gt)
        rows, cols = hungarian(iou)
        matched = iou[rows, cols]
        matched_inter = float(inter[rows, cols].sum())
        areas = float(binarise(pred).sum() + binarise(gt).sum())
        self.tp50 += int((matched >= 0.5).sum())
        # Union over all pairs = matched unions + areas of the unmatched masks
        #                      = all areas - matched intersections.
        self.inter_sum += matched_inter
        self.union_sum += areas - matched_inter
        return float(matched.sum()) / max(pred.shape[0], gt.shape[0])

    def compute(self) -> dict:
        """The scores (see the class docstring)."""
        names = [str(k) for k in range(NUM_K_BUCKETS - 1)] + [f"{NUM_K_BUCKETS - 1}+"]
        nonempty = [k for k in range(NUM_K_BUCKETS) if self.k_count[k] > 0]
        return {
            "giou": _ratio(self.giou_sum, self.n_questions),
            "ciou": _ratio(self.inter_sum, self.union_sum),
            "count_acc": _ratio(self.count_correct, self.n_questions),
            "precision50": _ratio(self.tp50, self.n_pred),
            "recall50": _ratio(self.tp50, self.n_gt),
            "giou_by_k": {names[k]: _ratio(self.k_giou_sum[k], self.k_count[k]) for k in nonempty},
            "n_by_k": {names[k]: int(self.k_count[k]) for k in nonempty},
            "n_questions": int(self.n_questions),
        }


class ReferringIoU(Metric):
    """Single-target referring gIoU / cIoU (LISA protocol): masks aligned by order.

    ``compute()`` returns {"giou": mean per-mask IoU, "ciou": sum I / sum U, "n_masks"}.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("iou_sum", "inter_sum", "union_sum"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64),
                           dist_reduce_fx="sum")
        self.add_state("n_masks", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor | Sequence[Tensor], targets: Tensor | Sequence[Tensor]) -> None:
        """Add masks.

        Args:
            preds: (N, H, W) tensor, or a sequence of (K_i, H, W) tensors (bool or logits).
            targets: the same layout; mask ``n`` of ``preds`` is scored against mask ``n``.
        """
        pairs = zip([preds], [targets], strict=True) if isinstance(preds, Tensor) else (
            zip(preds, targets, strict=True))
        for pred, gt in pairs:
            _check_pair(pred, gt)
            if pred.shape[0] != gt.shape[0]:
                raise ValueError(f"{pred.shape[0]} predicted masks for {gt.shape[0]} targets")
            p, g = _flat(pred.detach()), _flat(gt.detach())
            inter = (p * g).sum(1)
            union = p.sum(1) + g.sum(1) - inter
            iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
            self.iou_sum += float(iou.sum())
            self.inter_sum += float(inter.sum())
            self.union_sum += float(union.sum())
            self.n_masks += pred.shape[0]

    def compute(self) -> dict:
        """{"giou", "ciou", "n_masks"}; NaN where undefined."""
        return {"giou": _ratio(self.iou_sum, self.n_masks),
                "ciou": _ratio(self.inter_sum, self.union_sum),
                "n_masks": int(self.n_masks)}

