"""LTS on MUSE-format questions: each target's expression run alone.

- *aligned* (the LISA protocol, teacher-forced in the harness's terms): every target phrase of
  every question is an expression; its mask is compared with that target's (gIoU: the mean
  IoU over expressions; cIoU: summed intersections over summed unions);
- *set*: a question's expressions are run one by one and the masks scored as one answer with
  the harness's multi-target metric (Hungarian matching), as ``multi_ref`` asks.

Questions without a target refer to nothing a referring model could be asked about; they
are counted (``n_skipped``), not scored.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from pixellm.evaluate import GenerationScores


def evaluate_expressions(predictor, samples: Sequence, *, limit: int = 0, progress: bool = False) -> dict:
    """Aligned and set scores of ``predictor`` (an :class:`~pixellm.lts.LTSPredictor`).

    Returns:
        {"n" (questions scored), "n_skipped", "n_expressions", "aligned": {"giou", "ciou"},
        "all": the set metrics of :func:`pixellm.evaluate.evaluate_generation`'s "all",
        "queries_per_s"}.
    """
    n = len(samples) if not limit else min(limit, len(samples))
    tally, ious, inter, union, skipped = GenerationScores(), [], 0, 0, 0
    t0 = time.perf_counter()
    for i in tqdm(range(n), disable=not progress, desc="lts eval"):
        s = samples[i]
        if not s.phrases:
            skipped += 1
            continue
        targets = predictor.segment_expressions([s.image_path] * len(s.phrases), list(s.phrases))
        gt = s.masks()
        for t, g in zip(targets, gt, strict=True):
            a, b = int(np.logical_and(t.mask, g).sum()), int(np.logical_or(t.mask, g).sum())
            ious.append(a / b if b else 1.0)
            inter, union = inter + a, union + b
        tally.update(s, predictor.prediction(targets))
    secs = time.perf_counter() - t0
    scored = n - skipped
    return {"n": scored, "n_skipped": skipped, "n_expressions": len(ious),
            "aligned": {"giou": float(np.mean(ious)) if ious else math.nan,
                        "ciou": inter / union if union else math.nan},
            "all": tally.compute()["all"] if scored else None,
            "queries_per_s": scored / secs if secs else math.nan}


def table(split: str, r: dict) -> str:
    """A Markdown table of :func:`evaluate_expressions`."""
    a, s = r["aligned"], r["all"] or {}
    return "\n".join([
        "| split | questions | expressions | aligned gIoU | aligned cIoU | set gIoU | set cIoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| {split} | {r['n']} | {r['n_expressions']} | {a['giou']:.3f} | {a['ciou']:.3f} | "
        f"{s.get('giou', math.nan):.3f} | {s.get('ciou', math.nan):.3f} |"])
