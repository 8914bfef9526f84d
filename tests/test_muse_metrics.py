"""Hand-computed cases for the MUSE and referring metrics, and 2-process agreement."""

import itertools
import json
import math
import os
import socket

import pytest
import torch

from pixellm.muse import MultiTargetIoU, ReferringIoU
from pixellm.muse.metrics import pair_stats

H = W = 4


def box(rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[rows, cols] = True
    return m


G1 = box(slice(0, 2), slice(0, 2))  # area 4, top-left
G2 = box(slice(2, 4), slice(2, 4))  # area 4, bottom-right
FP = box(slice(0, 1), slice(2, 4))  # area 2, overlaps nothing
WIDE = box(slice(0, 2), slice(0, 3))  # area 6, contains G1: IoU with G1 = 4/6
EMPTY = torch.zeros(0, H, W, dtype=torch.bool)


def stack(*masks: torch.Tensor) -> torch.Tensor:
    return torch.stack(masks) if masks else EMPTY


def score(preds, gts) -> dict:
    metric = MultiTargetIoU()
    metric.update(preds, gts)
    return metric.compute()


def test_perfect_and_permuted_predictions_score_the_same():
    gts = [stack(G1, G2)]
    sorted_ = score([stack(G1, G2)], gts)
    permuted = score([stack(G2, G1)], gts)
    assert sorted_["giou"] == permuted["giou"] == 1.0
    assert sorted_["ciou"] == permuted["ciou"] == 1.0


def test_extra_false_positive_adds_its_area_to_the_union():
    result = score([stack(G1, FP, G2)], [stack(G1, G2)])
    # 3 pairs: two perfect, FP against an empty ground truth (IoU 0).
    assert result["giou"] == pytest.approx(2 / 3)
    # Sum I = 8; sum U = 8 + area(FP) = 10.
    assert result["ciou"] == pytest.approx(8 / 10)
    assert result["count_acc"] == 0.0
    assert result["precision50"] == pytest.approx(2 / 3)
    assert result["recall50"] == 1.0


def test_missing_target_pairs_with_an_empty_prediction():
    result = score([stack(G1)], [stack(G1, G2)])
    assert result["giou"] == pytest.approx(1 / 2)
    assert result["ciou"] == pytest.approx(4 / 8)
    assert result["precision50"] == 1.0
    assert result["recall50"] == pytest.approx(1 / 2)


def test_zero_targets():
    none_none = score([EMPTY], [EMPTY])
    assert none_none["giou"] == 1.0 and none_none["count_acc"] == 1.0
    assert math.isnan(none_none["ciou"])  # no pixel at all: undefined, not perfect
    one_none = score([stack(FP)], [EMPTY])
    assert one_none["giou"] == 0.0 and one_none["ciou"] == 0.0
    assert one_none["count_acc"] == 0.0 and math.isnan(one_none["recall50"])
    # An empty question adds nothing to the cIoU sums of the others.
    mixed = score([EMPTY, stack(WIDE)], [EMPTY, stack(G1)])
    assert mixed["ciou"] == pytest.approx(4 / 6)
    assert mixed["giou"] == pytest.approx((1 + 4 / 6) / 2)


def test_logits_are_binarised_at_zero():
    logits = torch.where(stack(G1, G2), 3.0, -2.0)
    logits[0, 3, 3] = 0.0  # exactly 0 is background
    assert score([logits], [stack(G1, G2)]) == score([stack(G1, G2)], [stack(G1, G2)])
    shifted = torch.where(stack(WIDE), 0.5, -0.5)
    assert score([shifted], [stack(G1)])["giou"] == pytest.approx(4 / 6)


def test_counts_precision_recall_and_giou_by_k():
    metric = MultiTargetIoU()
    metric.update([stack(G1, G2), stack(WIDE), stack(FP), EMPTY],
                  [stack(G1, G2), stack(G1), EMPTY, stack(G2)])
    result = metric.compute()
    # IoUs: q0 -> 1; q1 -> 4/6; q2 -> 0 (K=0, one prediction); q3 -> 0 (missed target).
    assert result["giou"] == pytest.approx((1 + 4 / 6 + 0 + 0) / 4)
    assert result["ciou"] == pytest.approx((8 + 4) / (8 + 6 + 2 + 4))
    assert result["count_acc"] == pytest.approx(2 / 4)
    # Matched pairs with IoU >= 0.5: G1, G2 of q0 and WIDE/G1 (0.67) of q1 -> 3.
    assert result["precision50"] == pytest.approx(3 / 4)  # sum Kp = 2 + 1 + 1 + 0
    assert result["recall50"] == pytest.approx(3 / 4)  # sum Kg = 2 + 1 + 0 + 1
    assert result["giou_by_k"] == pytest.approx({"0": 0.0, "1": (4 / 6 + 0) / 2, "2": 1.0})
    assert result["n_by_k"] == {"0": 1, "1": 2, "2": 1}
    assert result["n_questions"] == 4


def test_many_targets_share_the_last_bucket():
    gts = stack(*([G1] * 13))
    result = score([gts], [gts])
    assert result["giou_by_k"] == {"11+": 1.0}


def test_hungarian_matching_is_optimal():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        preds = torch.rand(4, 6, 6, generator=gen) > 0.5
        gts = torch.rand(3, 6, 6, generator=gen) > 0.5
        _, _, iou = pair_stats(preds, gts)
        best = max(sum(iou[p, g] for p, g in zip(perm, range(3), strict=False))
                   for perm in itertools.permutations(range(4), 3))
        assert score([preds], [gts])["giou"] == pytest.approx(float(best) / 4)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="one size"):
        score([torch.zeros(1, 4, 4, dtype=torch.bool)], [torch.zeros(1, 5, 4, dtype=torch.bool)])


def test_referring_iou_aligned_by_order():
    metric = ReferringIoU()
    metric.update(stack(WIDE, G2), stack(G1, G2))
    metric.update([torch.where(stack(FP), 1.0, -1.0)], [stack(G1)])
    result = metric.compute()
    assert result["giou"] == pytest.approx((4 / 6 + 1 + 0) / 3)
    assert result["ciou"] == pytest.approx((4 + 4 + 0) / (6 + 4 + 6))
    assert result["n_masks"] == 3
    with pytest.raises(ValueError, match="predicted masks"):
        metric.update(stack(G1), stack(G1, G2))


def _random_questions(n: int = 10):
    """Predictions = noisy, shuffled ground truths, with masks dropped or added."""
    gen = torch.Generator().manual_seed(1)
    preds, gts = [], []
    for q in range(n):
        gt = torch.rand(q % 5, 8, 8, generator=gen) > 0.6
        noisy = gt ^ (torch.rand(gt.shape, generator=gen) > 0.85)
        noisy = noisy[torch.randperm(len(gt), generator=gen)]
        extra = torch.rand(q % 3 - 1 if q % 3 else 0, 8, 8, generator=gen) > 0.5
        pred = torch.cat([noisy[: len(noisy) - (q % 2)], extra])
        preds.append(torch.where(pred, 2.0, -2.0))  # logits
        gts.append(gt)
    return preds, gts


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        preds, gts = _random_questions()
        metric = MultiTargetIoU()
        metric.update(preds[rank::world], gts[rank::world])
        result = metric.compute()  # syncs the summed states across the group
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    # spawn, not fork: a child forked after the parent's BLAS thread pool ran can deadlock.
    torch.multiprocessing.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path)),
                                nprocs=2, join=True)
    preds, gts = _random_questions()
    single = json.loads(json.dumps(score(preds, gts)))  # same key types as the workers'
    assert 0 < single["precision50"] < 1 and 0 < single["giou"] < 1  # a non-trivial case
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            result = json.load(f)
        for key in ("giou_by_k", "n_by_k"):
            assert result.pop(key) == pytest.approx(single[key])
        assert result == pytest.approx({k: v for k, v in single.items() if "_by_k" not in k})
