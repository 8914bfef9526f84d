"""Per-target confidence as a probability: a logistic map fitted on held-out predictions.

The decoder's IoU head predicts how well a mask covers *the object its block was asked for*:
it is trained with teacher forcing, where every block names a true target. At inference the
answer can also name a wrong object, whose mask may be sharp. So the score a user reads,
"the probability that this target matches a true one at IoU >= 0.5" (the bench's hit), is
fitted on a held-out split from two features of each kept target:

- ``logit(predicted IoU)``: how good the mask looks;
- ``log p(text)``: the lowest probability the LLM gave a token it wrote for this target (the
  words since the previous block and the block's first token), i.e. how sure the text is.

``p(hit) = sigmoid(w . features + b)``, fitted by L2-regularised logistic regression
(``scipy.optimize.minimize``). The identity map (w = (1, 0), b = 0) gives back the predicted
IoU. ``pixellm-train`` fits it on its evaluation split and writes it beside the weights
(:data:`FILE_NAME`); :class:`pixellm.predictor.PixelLMPredictor` applies it when present.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError

FILE_NAME = "score_calibration.json"
EPS = 1e-4  # features clip probabilities to [EPS, 1 - EPS]


def features(predicted_iou: float, text_prob: float) -> tuple[float, float]:
    """(logit of the predicted IoU, log of the text probability), both clipped finite."""
    q = min(max(float(predicted_iou), EPS), 1.0 - EPS)
    return math.log(q / (1.0 - q)), math.log(min(max(float(text_prob), EPS), 1.0))


@dataclass(frozen=True)
class ScoreCalibration:
    """``p(hit) = sigmoid(weights . features(iou, text_prob) + bias)``.

    Attributes:
        weights: (w_iou, w_text).
        bias: b.
        fitted_on: what it was fitted on (for the record), e.g. "val: 1894 targets, 783 hits".
    """

    weights: tuple[float, float] = (1.0, 0.0)
    bias: float = 0.0
    fitted_on: str = "identity"

    def __call__(self, predicted_iou: float, text_prob: float) -> float:
        """The calibrated probability in (0, 1)."""
        z = sum(w * f for w, f in zip(self.weights, features(predicted_iou, text_prob), strict=True))
        return 1.0 / (1.0 + math.exp(-(z + self.bias)))

    def save(self, directory: str | Path) -> Path:
        """Write :data:`FILE_NAME` into ``directory``; returns its path."""
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ScoreCalibration | None:
        """The calibration saved in ``directory``; None when there is none.

        Raises:
            CheckpointError: the file exists but is not a valid calibration.
        """
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            weights = tuple(float(w) for w in raw["weights"])
            bias = float(raw["bias"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a score calibration ({type(e).__name__}: {e})") from None
        if len(weights) != 2 or not all(map(math.isfinite, (*weights, bias))):
            raise CheckpointError(f"{path}: needs 2 finite weights and a finite bias, got {raw}")
        return cls(weights, bias, str(raw.get("fitted_on", "")))


def fit(records: Sequence[tuple[float, float, bool]], *, l2: float = 1e-3,
        source: str = "") -> ScoreCalibration:
    """Fit the logistic map on (predicted IoU, text probability, hit) records.

    Args:
        records: one per kept predicted target.
        l2: ridge penalty on the weights (not the bias), per record.
        source: what the records are, for ``fitted_on``.

    Returns:
        the fitted calibration; the identity when the records hold no hit or no miss (nothing
        to fit).
    """
    from scipy.optimize import minimize

    hits = np.array([bool(r[2]) for r in records], dtype=np.float64)  # (N,)
    if hits.size == 0 or hits.min() == hits.max():
        return ScoreCalibration(fitted_on=f"{source}: identity ({hits.size} targets, one class)")
    x = np.array([features(r[0], r[1]) for r in records], dtype=np.float64)  # (N, 2)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ theta[:2] + theta[2]
        nll = np.logaddexp(0.0, z) - hits * z  # -log likelihood per record
        p = 1.0 / (1.0 + np.exp(-z))
        grad = np.concatenate([x.T @ (p - hits), [np.sum(p - hits)]]) / len(hits)
        grad[:2] += 2 * l2 * theta[:2]
        return float(nll.mean() + l2 * theta[:2] @ theta[:2]), grad

    theta = minimize(loss, np.array([1.0, 0.0, 0.0]), jac=True, method="L-BFGS-B").x
    return ScoreCalibration((float(theta[0]), float(theta[1])), float(theta[2]),
                            f"{source}: {hits.size} targets, {int(hits.sum())} hits")


__all__ = ["FILE_NAME", "ScoreCalibration", "features", "fit"]
