"""Evaluation helpers: hits by Hungarian matching, score AUROC/ECE, zero-target rate, phrases."""
from __future__ import annotations

import math

import pytest
import torch

from pixellm.evaluate import (
    ScoreQuality,
    phrase_iou,
    same_targets,
    target_hits,
    zero_target_rate,
)
from pixellm.muse import MultiTargetIoU


def _rect(y0, y1, x0, x1, h=8, w=8):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_target_hits_follow_the_hungarian_matching():
    a, b = _rect(0, 4, 0, 4), _rect(4, 8, 4, 8)  # two 16-pixel squares
    gt = torch.stack([a, b])
    # p0 = a exactly; p1 = left half of b (IoU 0.5, a hit at >= 0.5); p2 lies inside a with
    # IoU 9/16, but the matching gives a to p0 (1 + 0.5 beats 9/16 + 0.5), so p2 is unmatched
    p0, p1, p2 = a, _rect(4, 8, 4, 6), _rect(0, 3, 0, 3)
    assert target_hits(torch.stack([p0, p1, p2]), gt) == [True, True, False]
    assert target_hits(torch.stack([p0, p1, p2]), gt, threshold=0.6) == [True, False, False]
    assert target_hits(torch.stack([p2]), gt) == [True]  # alone, p2 gets a: 9/16 >= 0.5
    assert target_hits(torch.stack([p0]), gt[:0]) == [False]  # nothing to match
    assert target_hits(gt[:0], gt) == []


def test_target_hits_count_the_metrics_true_positives():
    g = torch.Generator().manual_seed(0)
    metric, hits = MultiTargetIoU(), 0
    for _ in range(30):
        kp, kg = torch.randint(0, 4, (2,), generator=g).tolist()
        gt = torch.rand(kg, 6, 6, generator=g) > 0.5
        pred = gt[torch.randint(0, max(kg, 1), (kp,), generator=g) % max(kg, 1)] if kg else (
            torch.rand(kp, 6, 6, generator=g) > 0.5)  # copies of true masks (some twice)...
        pred = pred ^ (torch.rand(kp, 6, 6, generator=g) > 0.8)  # ...with noise
        metric.update([pred], [gt])
        hits += sum(target_hits(pred, gt))
    assert hits == int(metric.tp50) and hits > 5


def test_score_quality_hand_values():
    q = ScoreQuality()
    q.update([0.9, 0.8], [True, False])
    q.update([0.3, 0.6], [False, True])
    out = q.compute()
    # positives {0.9, 0.6} vs negatives {0.8, 0.3}: 3 of 4 pairs ordered right
    assert out["auroc"] == pytest.approx(0.75) and (out["n"], out["n_hits"]) == (4, 2)
    # one score per bin: ECE = mean |hit - score| = (0.1 + 0.8 + 0.3 + 0.4) / 4
    assert out["ece"] == pytest.approx(0.4) and out["note"] is None
    same_bin = ScoreQuality()
    same_bin.update([0.95, 0.95, 1.0], [True, False, True])  # one bin: |2/3 - 0.9667|
    assert same_bin.compute()["ece"] == pytest.approx(abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3), rel=1e-5)
    clipped = ScoreQuality()
    clipped.update([1.4, -0.3], [True, False])  # out-of-range scores are clipped, not sigmoided
    assert clipped.compute()["ece"] == pytest.approx(0.0) and clipped.compute()["auroc"] == 1.0


def test_score_quality_is_nan_safe_with_one_class_or_none():
    all_hits = ScoreQuality()
    all_hits.update([0.9, 0.6, 0.7], [True, True, True])
    out = all_hits.compute()
    assert math.isnan(out["auroc"]) and out["note"] == "AUROC undefined: all 3 kept targets are hits"
    assert out["ece"] == pytest.approx((0.1 + 0.4 + 0.3) / 3)  # still defined
    misses = ScoreQuality()
    misses.update([0.2], [False])
    assert math.isnan(misses.compute()["auroc"]) and "are misses" in misses.compute()["note"]
    empty = ScoreQuality().compute()
    assert math.isnan(empty["auroc"]) and math.isnan(empty["ece"]) and empty["n"] == 0
    assert empty["note"] == "no kept predicted target to score"
    with pytest.raises(ValueError, match="2 scores for 1 hit flags"):
        ScoreQuality().update([0.1, 0.2], [True])


def test_zero_target_rate_hand_case():
    # questions with 0, 2, 0, 0, 1 true targets; the zero-target ones got 0, 1 and 0 masks
    assert zero_target_rate([0, 2, 1, 0, 0], [0, 2, 0, 0, 1]) == pytest.approx(2 / 3)
    assert zero_target_rate([3], [0]) == 0.0
    assert math.isnan(zero_target_rate([1, 0], [1, 2]))  # no zero-target question


def test_phrases_compare_without_a_leading_article():
    assert same_targets(["the blue triangle"], ["blue triangle"])
    assert same_targets(["A  Red circle", "an orange star"], ["orange star", "red circle"])
    assert not same_targets(["the blue triangle"], ["blue square"])
    assert same_targets(["the"], ["the"]) and not same_targets(["the"], [""])  # a lone word stays
    assert not same_targets(["blue the triangle"], ["blue triangle"])  # only a leading article
    assert phrase_iou(["the red circle", "a blue square"], ["red circle", "green star"]) == 0.5
