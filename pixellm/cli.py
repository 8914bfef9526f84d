"""``pixellm-predict IMAGE "QUESTION" --checkpoint DIR [--out DIR] [--describe --describer DIR]``
(any family), ``pixellm-predict IMAGE --labels "other,red,ring" --checkpoint DIR`` (a label-map
model), or ``pixellm-predict IMAGE --boxes "x0,y0,x1,y1;..." --checkpoint DIR`` (a region
describer)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _iou(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"an IoU in (0, 1], got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-predict", description="Answer a question about an image with one mask per target.")
    p.add_argument("image", help="image file")
    p.add_argument("question", nargs="?", default="", help="free-form question (not needed with --labels)")
    p.add_argument("--checkpoint", required=True, help="directory written by save_pretrained / pixellm-train")
    p.add_argument("--out", default=None, help="write prediction.json and overlay.png here")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--duplicate-iou", type=_iou, default=0.5,
                   help="drop a target whose mask overlaps a higher-scoring one's with IoU above this")
    p.add_argument("--keep-duplicates", action="store_true", help="keep every block's mask (no suppression)")
    p.add_argument("--min-score", type=float, default=None,
                   help="reject targets scored below this (default: the predictor's, 0 without a score calibration)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="label the image with this comma-separated label set instead (a label-map model: "
                        "the lseg family); the question is then ignored, include 'other' for the background")
    p.add_argument("--describe", action="store_true",
                   help="describe each target's mask (caption, tags, attributes) with --describer")
    p.add_argument("--describer", default=None, metavar="DIR", help="a DynRefer checkpoint (for --describe)")
    p.add_argument("--boxes", default=None, metavar="X0,Y0,X1,Y1;...",
                   help="describe these XYXY boxes instead (a region describer: the dynrefer family)")
    return p


def _boxes(pred, args: argparse.Namespace) -> int:
    from .errors import InputError

    if not hasattr(pred, "describe"):
        raise InputError("--boxes needs a region describer (the dynrefer family); this checkpoint segments")
    try:
        boxes = [[float(v) for v in b.split(",")] for b in args.boxes.split(";") if b.strip()]
    except ValueError as e:
        raise InputError(f"--boxes: expected 'x0,y0,x1,y1;...', got {args.boxes!r}") from e
    descs = pred.describe(args.image, boxes)
    for i, d in enumerate(descs):
        print(f"  {i + 1}: {d.caption}  (tags: {', '.join(d.predicted_tags) or '-'}; views t = {d.views})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "descriptions.json").write_text(json.dumps(
            {"image": str(args.image), "descriptions": [d.to_dict() for d in descs]}, indent=2))
        print(f"wrote {out / 'descriptions.json'}")
    return 0


def _options(checkpoint: str, args: argparse.Namespace) -> dict:
    """The predictor options given on the command line that the checkpoint's family takes."""
    import inspect

    from .checkpoint import check_checkpoint_dir, read_config

    family = read_config(check_checkpoint_dir(checkpoint))[1]
    accepted = inspect.signature(family.predictor_class.__init__).parameters
    given = {"max_new_tokens": args.max_new_tokens,
             "duplicate_iou": None if args.keep_duplicates else args.duplicate_iou,
             **({} if args.min_score is None else {"min_score": args.min_score})}
    return {k: v for k, v in given.items() if k in accepted}


def _label_map(pred, args: argparse.Namespace) -> int:
    from .errors import InputError

    if not hasattr(pred, "segment_labels"):
        raise InputError("--labels needs a label-map model (the lseg family); this checkpoint answers questions")
    lm = pred.segment_labels(args.image, [s.strip() for s in args.labels.split(",")])
    total = lm.index.size
    for k, label in enumerate(lm.labels):
        print(f"  - {label!r}: {100 * (lm.index == k).sum() / total:.1f}% of the pixels")
    if args.out:
        from .image_io import load_image
        from .overlay import draw_overlay
        from .predictor import mask_rle

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        masks = [lm.index == k for k in range(len(lm.labels))]
        (out / "labels.json").write_text(json.dumps({"image": str(args.image), "labels": lm.labels,
                                                     "rle": [mask_rle(m) for m in masks]}, indent=2))
        draw_overlay(load_image(args.image), masks, lm.labels).save(out / "label_map.png")
        print(f"wrote {out / 'labels.json'} and {out / 'label_map.png'}")
    return 0


def _target_json(t) -> dict:
    d = {"phrase": t.phrase, "index": t.index, "score": t.score, "bbox_xyxy": list(t.bbox), "rle": t.rle}
    if t.description is not None:
        d["description"] = t.description.to_dict()
    return d


def main(argv: Sequence[str] | None = None) -> int:
    """Print the answer; with --out, write the per-target JSON and an overlay PNG. Exit 2 on bad input."""
    args = _parser().parse_args(argv)
    from .checkpoint import load_predictor
    from .errors import CheckpointError, InputError
    from .image_io import load_image
    from .overlay import draw_overlay

    try:
        if args.describe and not args.describer:
            raise InputError("--describe needs --describer DIR (a DynRefer checkpoint)")
        pred = load_predictor(args.checkpoint, device=args.device, describer=args.describer,
                              **_options(args.checkpoint, args))
        if args.labels is not None:
            return _label_map(pred, args)
        if args.boxes is not None:
            return _boxes(pred, args)
        result = pred.predict(args.image, args.question, describe=args.describe)
    except (InputError, CheckpointError, ValueError) as e:  # ValueError: an option out of range
        print(f"pixellm-predict: error: {e}", file=sys.stderr)
        return 2
    print(result.answer)
    for t in result.targets:
        print(f"  - {t.phrase!r}: score {t.score:.3f}, bbox {t.bbox}, area {int(t.mask.sum())}")
        if t.description is not None:
            print(f"      {t.description.caption}  (tags: {', '.join(t.description.predicted_tags) or '-'})")
    for t in result.duplicates:
        print(f"  = dropped {t.phrase!r}: its mask repeats a higher-scoring target's")
    for t in result.rejected:
        print(f"  ? rejected {t.phrase!r}: score {t.score:.3f}" + (
            f" below {pred.min_score:.2f}" if hasattr(pred, "min_score") else " (too small or empty)"))
    for m in result.malformed:
        print(f"  ! dropped {m}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {"image": str(args.image), "question": args.question, "answer": result.answer,
                  "targets": [_target_json(t) for t in result.targets],
                  "duplicates": [_target_json(t) for t in result.duplicates],
                  "rejected": [_target_json(t) for t in result.rejected],
                  "malformed_blocks": result.malformed}
        (out / "prediction.json").write_text(json.dumps(record, indent=2))
        legend = ([f"{i + 1}: {t.description.caption if t.description else t.phrase}"
                   for i, t in enumerate(result.targets)] if args.describe else None)
        draw_overlay(load_image(args.image), [t.mask for t in result.targets],
                     [f"{i + 1}: {t.phrase}" for i, t in enumerate(result.targets)],
                     legend=legend).save(out / "overlay.png")
        print(f"wrote {out / 'prediction.json'} and {out / 'overlay.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
