"""``pixellm-calibrate``: fit a checkpoint's score calibration on a held-out split.

``pixellm-train`` does this on its evaluation split at the end of every run; this command
does it again, or for a checkpoint trained before score calibrations existed. Usage::

    pixellm-calibrate --checkpoint checkpoints/pixellm-tiny/final --data data/shapes --split val
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..calibration import ScoreCalibration, fit


def fit_and_save(directory: str | Path, records: Sequence[tuple[float, float, bool]], *,
                 source: str) -> ScoreCalibration | None:
    """Fit on ``records`` (:func:`pixellm.evaluate.evaluate_generation`'s ``score_records``)
    and save beside the weights in ``directory``; None (nothing written) when the model has no
    IoU head, so no record."""
    if not records:
        return None
    calibration = fit(records, source=source)
    calibration.save(directory)
    return calibration


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="pixellm-calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="model directory (save_pretrained)")
    p.add_argument("--data", type=Path, default=Path("data/shapes"), help="generated dataset")
    p.add_argument("--split", default="val", help="held-out split to fit on (never a test split)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = p.parse_args(argv)
    import torch

    from ..checkpoint import load_predictor
    from ..errors import CheckpointError, InputError
    from ..evaluate import evaluate_generation
    from .mixture import load_source

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        samples = load_source("shapes", root=str(args.data), split=args.split)
        predictor = load_predictor(args.checkpoint, calibration=None)
    except (InputError, CheckpointError) as e:
        print(f"pixellm-calibrate: error: {e}", file=sys.stderr)
        return 2
    m = evaluate_generation(predictor, samples, progress=False)
    calibration = fit_and_save(args.checkpoint, m["score_records"], source=args.split)
    if calibration is None:
        print("pixellm-calibrate: error: the model has no IoU head, nothing to calibrate", file=sys.stderr)
        return 2
    print(f"{args.checkpoint}: score calibration {calibration}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
