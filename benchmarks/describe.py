"""``pixellm-bench --checkpoint <a DynRefer checkpoint>``: the region-description report.

Scores the describer on the generated regions files (val, test, and the fresh-seed test when
``--fresh-data`` is given): captioning (CIDEr, BLEU-4, ROUGE-L, METEOR), tagging mAP, attribute
mAP and region recognition accuracy; then the view selection at inference on val (pHash, random
and fixed views, for captions and for attributes); then, with ``--targets-from SEG_DIR``, the
captions of the targets a segmentation model predicts on val, scored against the ground-truth
object each one matches (:func:`pixellm.dynrefer.evaluate.describe_predicted`).

Writes ``describe_<name>_cpu_float32_torch<ver>.{json,md}`` under ``--out``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from .machine import device_name

VIEW_MODES = ("phash", "random", "fixed")
CAPTION_COLUMNS = ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR")
WORD_COLUMNS = ("words_colour", "words_shape", "words_size", "words_position")


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def to_markdown(report: dict) -> str:
    from pixellm.dynrefer.evaluate import COLUMNS
    from pixellm.evaluate import markdown_table

    m = report["meta"]
    lines = [f"# Region description: {m['name']}", "",
             f"Checkpoint `{m['checkpoint']}`; device {m['device_name']}; torch {m['torch']}; {m['date']}; "
             f"{m['wall_minutes']:.1f} min. Command: `{m['command']}`.", ""]
    lines += markdown_table(["data", "regions", *COLUMNS],
                            [[r["name"], r["regions"], *(_fmt(r.get(c)) for c in COLUMNS)] for r in report["sets"]])
    if any(r.get(c) is not None for r in report["sets"] for c in WORD_COLUMNS):
        lines += ["", "Captions that name the region's own colour / shape / size / position:", ""]
        lines += markdown_table(["data", *(c.removeprefix("words_") for c in WORD_COLUMNS)],
                                [[r["name"], *(_fmt(r.get(c)) for c in WORD_COLUMNS)] for r in report["sets"]])
    lines += ["", "## Views at inference (val)", ""]
    lines += markdown_table(["caption views", "attribute views", *COLUMNS],
                            [[r["caption_views"], r["attribute_views"], *(_fmt(r.get(c)) for c in COLUMNS)]
                             for r in report["views"]], left=2)
    e2e = report.get("predicted_targets")
    if e2e:
        lines += ["", f"## Captions of predicted targets ({e2e['segmenter']}, val)", "",
                  f"{e2e['predicted']} targets predicted on {e2e['questions']} questions; {e2e['matched']} match a "
                  f"ground-truth object at IoU >= 0.5 and are scored against its caption.", ""]
        cols = CAPTION_COLUMNS + WORD_COLUMNS
        lines += markdown_table([c.replace("words_", "names ") for c in cols], [[_fmt(e2e.get(c)) for c in cols]],
                                left=0)
        lines += [""] + [f"- {x['phrase']!r}: generated \"{x['generated']}\"; reference \"{x['reference']}\""
                         for x in e2e["examples"]]
    ex = report["sets"][0].get("examples", []) if report["sets"] else []
    if ex:
        lines += ["", "## Examples (val)", ""] + [f"- generated \"{x['generated']}\"; reference \"{x['reference']}\""
                                                 for x in ex]
    return "\n".join(lines) + "\n"


def bench_describer(args, argv) -> int:
    """Run the report for ``args.checkpoint`` (a DynRefer checkpoint); see the module doc."""
    from pixellm.checkpoint import load_predictor
    from pixellm.dynrefer import DynReferPredictor
    from pixellm.dynrefer.evaluate import describe_predicted, evaluate_regions
    from pixellm.errors import CheckpointError, InputError

    start = time.perf_counter()
    progress = not args.no_progress
    limit = args.limit or 600
    try:
        pred = load_predictor(args.checkpoint)
        seg = load_predictor(args.targets_from) if args.targets_from else None
        files = [("val", args.data / "regions_val.json"), ("test", args.data / "regions_test.json")]
        if args.fresh_data:
            files.append(("fresh test", args.fresh_data / "regions_test.json"))
        for _, path in files:
            if not path.is_file():
                raise InputError(f"{path} not found (pixellm-data writes regions files from data format 4)")
        sets = []
        for name, path in files:
            print(f"bench: describing {name} ({path})", flush=True)
            sets.append({"name": name, **evaluate_regions(pred, path, limit=limit, progress=progress)})
        views = []
        for cap in VIEW_MODES:
            for att in VIEW_MODES:
                if cap != att and att != "fixed":
                    continue
                p = DynReferPredictor(pred.model, caption_views=cap, attribute_views=att)
                r = evaluate_regions(p, files[0][1], limit=limit, progress=progress)
                views.append({"caption_views": cap, "attribute_views": att, **r})
        e2e = None
        if seg is not None:
            print(f"bench: describing the targets {args.targets_from} predicts on val", flush=True)
            e2e = {"segmenter": str(args.targets_from),
                   **describe_predicted(seg, pred, args.data, split="val", limit=args.limit or 300, progress=progress)}
    except (InputError, CheckpointError) as e:
        print(f"pixellm-bench: error: {e}", file=sys.stderr)
        return 2
    name = args.name or pred.cfg.name
    meta = {"name": name, "checkpoint": str(args.checkpoint), "device_name": device_name(torch.device("cpu")),
            "torch": torch.__version__.split("+")[0], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_minutes": (time.perf_counter() - start) / 60,
            "command": " ".join(["pixellm-bench", *(sys.argv[1:] if argv is None else argv)])}
    report = {"meta": meta, "sets": sets, "views": views, "predicted_targets": e2e}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"describe_{name}_cpu_float32_torch{meta['torch']}"
    from .report import _clean

    Path(f"{stem}.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
    Path(f"{stem}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {stem}.json, {stem}.md")
    return 0
