"""Mask losses: hand-computed BCE, Dice, target-refinement and IoU-prediction values."""

import math

import pytest
import torch

from pixellm.decoder import (
    dice_loss,
    iou_loss,
    mask_iou,
    mask_losses,
    refinement_weights,
)


def _bce(x, t):
    """BCE with logits of one pixel, by hand."""
    return math.log(1 + math.exp(x)) - x * t


def _dice(xs, ts):
    p = [1 / (1 + math.exp(-x)) for x in xs]
    return 1 - (2 * sum(a * b for a, b in zip(p, ts, strict=True)) + 1) / (sum(p) + sum(ts) + 1)


# Two 2x2 masks of one question; only pixel (0, 0) is claimed (logit > 0) by both.
LOGITS = [[[1.0, 1.0], [-1.0, -1.0]], [[1.0, -1.0], [-2.0, -1.0]]]
TARGETS = [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]]


def _flat(m):
    return [v for row in m for v in row]


def _hand_parts():
    bce = [
        sum(_bce(x, t) for x, t in zip(_flat(lg), _flat(tg), strict=True)) / 4
        for lg, tg in zip(LOGITS, TARGETS, strict=True)
    ]
    dice = [_dice(_flat(lg), _flat(tg)) for lg, tg in zip(LOGITS, TARGETS, strict=True)]
    # only pixel (0, 0) is claimed by both masks; alpha = 2 adds one more BCE of that pixel
    refine = [_bce(lg[0][0], tg[0][0]) / 4 for lg, tg in zip(LOGITS, TARGETS, strict=True)]
    return sum(bce) / 2, sum(dice) / 2, sum(refine) / 2


def test_refinement_same_question_matches_hand_value():
    bce, dice, refine = _hand_parts()
    out = mask_losses(torch.tensor(LOGITS), torch.tensor(TARGETS), torch.tensor([3, 3]))
    assert out["bce"].item() == pytest.approx(bce, rel=1e-6)
    assert out["dice"].item() == pytest.approx(dice, rel=1e-6)
    assert out["refine"].item() == pytest.approx(refine, rel=1e-6)
    assert out["mask"].item() == pytest.approx(2.0 * (bce + refine) + 0.5 * dice, rel=1e-6)


def test_refinement_alpha_scales_the_extra_term():
    _, _, refine = _hand_parts()
    out = mask_losses(
        torch.tensor(LOGITS), torch.tensor(TARGETS), torch.tensor([0, 0]), refine_alpha=5.0
    )
    assert out["refine"].item() == pytest.approx(4 * refine, rel=1e-6)


def test_overlap_across_questions_gets_no_weight():
    bce, dice, _ = _hand_parts()
    out = mask_losses(torch.tensor(LOGITS), torch.tensor(TARGETS), torch.tensor([0, 1]))
    assert out["refine"].item() == 0.0
    assert out["mask"].item() == pytest.approx(2.0 * bce + 0.5 * dice, rel=1e-6)


def test_refine_off_is_zero():
    bce, dice, _ = _hand_parts()
    out = mask_losses(
        torch.tensor(LOGITS), torch.tensor(TARGETS), torch.tensor([0, 0]), refine=False
    )
    assert out["refine"].item() == 0.0
    assert out["mask"].item() == pytest.approx(2.0 * bce + 0.5 * dice, rel=1e-6)


def test_refinement_weights_per_question():
    logits = torch.full((5, 1, 3), -1.0)
    logits[0, 0, :2] = 1.0  # q0 claims pixels 0, 1
    logits[1, 0, 1:] = 1.0  # q0 claims pixels 1, 2 -> pixel 1 doubly claimed in q0
    logits[2, 0, 0] = 1.0  # q1 claims pixel 0, alone in its question
    logits[3, 0, 0] = -0.5  # q1, no claim
    # mask 4 (q0) claims nothing but still gets q0's weight: the pixel is ambiguous for all of q0
    w = refinement_weights(logits, torch.tensor([0, 0, 1, 1, 0]), alpha=2.0)
    assert w[:, 0].tolist() == [[1, 2, 1], [1, 2, 1], [1, 1, 1], [1, 1, 1], [1, 2, 1]]


def test_refinement_weights_carry_no_gradient():
    logits = torch.tensor(LOGITS, requires_grad=True)
    targets = torch.tensor(TARGETS)
    mask_losses(logits, targets, torch.tensor([0, 0]), dice_weight=0.0)["mask"].backward()
    weights = torch.ones(2, 2, 2)
    weights[:, 0, 0] = 2.0
    ref = logits.detach().clone().requires_grad_(True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(ref, targets, reduction="none")
    (2.0 * (weights * bce).mean()).backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-7)


def test_dice_hand_values():
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert dice_loss(torch.zeros(1, 2, 2), targets).item() == pytest.approx(0.5)  # 1-(1+1)/(3+1)
    perfect = torch.tensor([[[30.0, -30.0], [-30.0, -30.0]]])
    assert dice_loss(perfect, targets).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-perfect, targets).item() == pytest.approx(1 - 1 / 5, abs=1e-6)


def test_k_zero_and_one():
    logits = torch.zeros(0, 4, 4, requires_grad=True)
    out = mask_losses(logits, torch.zeros(0, 4, 4), torch.zeros(0, dtype=torch.long))
    assert set(out) == {"bce", "dice", "refine", "mask"}
    assert all(v.item() == 0.0 for v in out.values())
    out["mask"].backward()
    assert logits.grad is not None

    one = torch.full((1, 4, 4), 3.0, requires_grad=True)
    out = mask_losses(one, torch.ones(1, 4, 4, dtype=torch.bool), torch.zeros(1, dtype=torch.long))
    assert out["refine"].item() == 0.0  # one mask cannot overlap itself
    assert out["bce"].item() == pytest.approx(_bce(3.0, 1.0), rel=1e-6)
    out["mask"].backward()


def test_many_masks_and_bad_shapes():
    torch.manual_seed(0)
    logits = torch.randn(7, 8, 8)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 5])
    out = mask_losses(logits, torch.rand(7, 8, 8) > 0.5, group)
    assert out["refine"].item() > 0 and torch.isfinite(out["mask"])
    with pytest.raises(ValueError):
        mask_losses(logits, torch.zeros(7, 4, 4), group)
    with pytest.raises(ValueError):
        mask_losses(logits, torch.zeros(7, 8, 8), group[:3])


# IoU prediction. Three 2x4 masks: mask 0 claims 4 pixels of which 2 are true (plus 2 true
# it misses): IoU 2/6; mask 1 is exact: IoU 1; mask 2 predicts nothing on an empty truth: IoU 1.
IOU_LOGITS = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]],
                           [[-3.0, 2.0, -3.0, -3.0], [-3.0, -3.0, -3.0, -3.0]],
                           [[-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]]])
IOU_TARGETS = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]],
                            [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                            [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])


def _kl(t, p):
    """KL(Bernoulli(t) || Bernoulli(p)) by hand (0 log 0 = 0)."""
    return sum(a * math.log(a / b) for a, b in ((t, p), (1 - t, 1 - p)) if a > 0)


def test_mask_iou_hand_values():
    assert mask_iou(IOU_LOGITS, IOU_TARGETS).tolist() == pytest.approx([2 / 6, 1.0, 1.0])
    assert mask_iou(IOU_LOGITS, IOU_TARGETS.bool()).tolist() == pytest.approx([2 / 6, 1.0, 1.0])
    assert mask_iou(torch.zeros(0, 2, 2), torch.zeros(0, 2, 2)).shape == (0,)


def test_iou_loss_known_iou_gives_known_loss():
    # predictions 0.5, 0.5 and exactly 1/(1+e^-3): losses KL(1/3 || .5), KL(1 || .5) = log 2, ~0
    pred = torch.tensor([0.0, 0.0, 30.0])
    want = (_kl(2 / 6, 0.5) + math.log(2) + _kl(1.0, 1 / (1 + math.exp(-30.0)))) / 3
    assert iou_loss(pred, IOU_LOGITS, IOU_TARGETS).item() == pytest.approx(want, rel=1e-5)
    exact = torch.logit(torch.tensor([2 / 6, 0.999999, 0.999999]))
    assert iou_loss(exact, IOU_LOGITS, IOU_TARGETS).item() == pytest.approx(0.0, abs=1e-4)
    assert iou_loss(torch.tensor([0.0]), IOU_LOGITS[:1], IOU_TARGETS[:1]).item() == pytest.approx(
        _kl(1 / 3, 0.5), rel=1e-6)


def test_iou_loss_sends_no_gradient_to_the_mask_logits():
    logits = IOU_LOGITS.clone().requires_grad_(True)
    pred = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    iou_loss(pred, logits, IOU_TARGETS).backward()
    assert logits.grad is None  # the actual IoU is a label, computed without gradient
    # d/dx of the mean KL (= mean BCE minus a constant) is (sigmoid(x) - iou) / K
    want = (torch.sigmoid(pred.detach()) - torch.tensor([2 / 6, 1.0, 1.0])) / 3
    assert torch.allclose(pred.grad, want, atol=1e-6)
    # next to the mask loss, the mask logits' gradient is the mask loss's alone
    both = IOU_LOGITS.clone().requires_grad_(True)
    group = torch.zeros(3, dtype=torch.long)
    (mask_losses(both, IOU_TARGETS, group)["mask"] + iou_loss(pred, both, IOU_TARGETS)).backward()
    alone = IOU_LOGITS.clone().requires_grad_(True)
    mask_losses(alone, IOU_TARGETS, group)["mask"].backward()
    assert torch.equal(both.grad, alone.grad)


def test_iou_loss_k_zero_and_bad_shapes():
    pred = torch.zeros(0, requires_grad=True)
    out = iou_loss(pred, torch.zeros(0, 4, 4), torch.zeros(0, 4, 4))
    assert out.item() == 0.0
    out.backward()
    assert pred.grad is not None and pred.grad.shape == (0,)
    with pytest.raises(ValueError, match="iou_logits"):
        iou_loss(torch.zeros(2), IOU_LOGITS, IOU_TARGETS)
    with pytest.raises(ValueError, match="iou_logits"):
        iou_loss(torch.zeros(3), IOU_LOGITS, IOU_TARGETS[:, :1])
