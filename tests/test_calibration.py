"""Score calibration: features, the logistic fit on known cases, save/load and its errors, and
the predictor applying it."""
import json
import math

import numpy as np
import pytest

from pixellm.calibration import FILE_NAME, ScoreCalibration, features, fit
from pixellm.errors import CheckpointError


def test_identity_gives_back_the_predicted_iou():
    ident = ScoreCalibration()
    for q in (0.01, 0.3, 0.5, 0.93):
        assert ident(q, 0.2) == pytest.approx(q)
    assert features(0.5, 1.0) == (0.0, 0.0)
    assert all(map(math.isfinite, features(0.0, 0.0) + features(1.0, 1.0)))  # clipped


def test_fit_recovers_a_known_logistic_map():
    rng = np.random.default_rng(0)
    w, b = (2.0, 1.5), -0.5
    records = []
    for _ in range(20000):
        q, pb = rng.uniform(0.05, 0.95), rng.uniform(0.05, 1.0)
        z = sum(a * f for a, f in zip(w, features(q, pb))) + b
        records.append((q, pb, bool(rng.random() < 1 / (1 + math.exp(-z)))))
    cal = fit(records, l2=0.0, source="synthetic")
    assert cal.weights == pytest.approx(w, abs=0.1) and cal.bias == pytest.approx(b, abs=0.1)
    assert cal.fitted_on.startswith("synthetic: 20000 targets")


def test_fit_needs_both_classes():
    cal = fit([(0.9, 0.9, True), (0.2, 0.5, True)], source="val")
    assert (cal.weights, cal.bias) == ((1.0, 0.0), 0.0) and "one class" in cal.fitted_on


def test_overconfident_scores_are_pulled_down():
    """Hits at half the predicted IoU's rate: the fitted map lowers the scores."""
    rng = np.random.default_rng(1)
    records = [(q, 1.0, bool(rng.random() < q / 2)) for q in rng.uniform(0.5, 1.0, 5000)]
    cal = fit(records, source="val")
    scores = np.array([cal(q, 1.0) for q, _, _ in records])
    hits = np.array([h for _, _, h in records])
    assert abs(scores.mean() - hits.mean()) < 0.02  # calibrated in the large
    assert scores.mean() < np.mean([q for q, _, _ in records]) - 0.2


def test_save_load_round_trip_and_typed_errors(tmp_path):
    cal = ScoreCalibration((1.2, 0.4), -0.3, "val: 10 targets, 4 hits")
    cal.save(tmp_path)
    assert ScoreCalibration.load(tmp_path) == cal
    assert ScoreCalibration.load(tmp_path / "nowhere") is None
    (tmp_path / FILE_NAME).write_text("{broken")
    with pytest.raises(CheckpointError, match="not a score calibration"):
        ScoreCalibration.load(tmp_path)
    (tmp_path / FILE_NAME).write_text(json.dumps({"weights": [1.0, float("nan")], "bias": 0.0}))
    with pytest.raises(CheckpointError, match="finite"):
        ScoreCalibration.load(tmp_path)


def test_predictor_applies_the_checkpoint_calibration(tiny_model, tmp_path):
    import torch

    from pixellm.predictor import PixelLMPredictor, target_score
    probs, mask = torch.full((4, 4), 0.9), torch.ones(4, 4, dtype=torch.bool)
    cal = ScoreCalibration((1.0, 1.0), 0.0)
    assert target_score(0.8, probs, mask, 0.5, cal, text_prob=0.3) == pytest.approx(cal(0.8, 0.3))
    assert target_score(0.8, probs, mask, 0.5, None) == pytest.approx(0.8)
    tiny_model.save_pretrained(tmp_path)
    assert PixelLMPredictor.from_pretrained(tmp_path).calibration is None
    cal.save(tmp_path)
    assert PixelLMPredictor.from_pretrained(tmp_path).calibration == cal
    assert PixelLMPredictor.from_pretrained(tmp_path, calibration=None).calibration is None


def test_fit_and_save_writes_beside_the_weights_only_with_records(tmp_path):
    from pixellm.train.calibrate import fit_and_save

    assert fit_and_save(tmp_path, [], source="val") is None  # no IoU head: no record
    assert not (tmp_path / FILE_NAME).exists()
    records = [(0.9, 0.9, True), (0.8, 0.7, True), (0.7, 0.2, False), (0.3, 0.9, False)] * 5
    cal = fit_and_save(tmp_path, records, source="val")
    assert ScoreCalibration.load(tmp_path) == cal and cal.fitted_on == "val: 20 targets, 10 hits"
    assert cal(0.9, 0.9) > 0.5 > cal(0.3, 0.9)
