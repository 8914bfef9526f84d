"""``pixellm-bench``: score a checkpoint against trivial baselines, per split, in two modes.

Modes: **generation** (the model writes its own answer; docs/design.md, Metrics multi-target metrics with
Hungarian matching: the honest number) and **teacher-forced** (LISA protocol: the
ground-truth answer is fed, masks are aligned by order; per-mask gIoU/cIoU), side by side.
Baselines ("every object in the scene", "one random object", "the right number of random
objects") are scored on the same questions; the model "wins" a split only if it beats the best
baseline by ``--margin`` (default 0.15) in both gIoU and cIoU.

Splits: the generated dataset's val, test_less, test_many and multi_ref (``--data``); real
MUSE (``--muse-root``) and refCOCO with its multi-referring questions (``--refcoco-root``)
when given. ``--fresh-data`` adds a fresh-seed generated dataset, benched the same way and
reported apart with its gap to val. ``--ablation`` also trains and benches the variants of
:mod:`.runs` on val.

Writes under ``--out`` (default benchmarks/results), named after model, split, device, dtype
and torch version: one JSON per split, a summary JSON, a Markdown report, and PNGs (gIoU by
number of targets; example overlays). Usage::

    pixellm-bench                                   # checkpoints/pixellm-tiny/final on data/shapes
    pixellm-bench --limit 100 --splits val          # quick look
    pixellm-data --seed 1000 --train 0 --val 0 --out data/shapes-fresh
    pixellm-bench --fresh-data data/shapes-fresh    # + scenes of an unseen seed
    pixellm-bench --muse-root /data/muse --refcoco-root /data/refer --skip-shapes
    pixellm-bench --ablation --train-args "--steps 1500 --seed 0"
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from pixellm.errors import CheckpointError, InputError

from .baselines import evaluate_baselines
from .machine import device_name
from .runs import (
    DESCRIPTIONS,
    VARIANTS,
    budget_note,
    train_variant,
    training_stats,
    variant_argv,
    with_default_steps,
)
from .sources import MUSE_SPLITS, SHAPES_SPLITS, EvalSet, fresh_sets, muse_sets, refcoco_sets

WIDE_MARGIN = 0.15  # gIoU and cIoU points over the best baseline that count as "wide"
VAL_SPLIT = "shapes-val"  # what the fresh-seed splits are compared with
DEFAULT_CHECKPOINT = Path("checkpoints/pixellm-tiny/final")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-bench", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="model directory (save_pretrained); default: what `make train` wrote")
    p.add_argument("--data", type=Path, default=Path("data/shapes"), help="generated dataset")
    p.add_argument("--splits", nargs="+", default=list(SHAPES_SPLITS), help="its splits")
    p.add_argument("--skip-shapes", action="store_true", help="only the real data given below")
    p.add_argument("--fresh-data", type=Path, default=None,
                   help="fresh-seed dataset (pixellm-data --seed S --train 0 --val 0 --out DIR): "
                        "its splits are benched too, reported apart with the gap to val")
    p.add_argument("--muse-root", type=Path, default=None, help="real MUSE: DIR/muse_<split>.json + DIR/images/")
    p.add_argument("--muse-splits", nargs="+", default=list(MUSE_SPLITS))
    p.add_argument("--muse-images", type=Path, default=None, help="MUSE image root (default: <muse-root>/images)")
    p.add_argument("--lvis", type=Path, default=None, help="LVIS instances file for the MUSE baselines (default: ann_list)")
    p.add_argument("--refcoco-root", type=Path, default=None, help="refer root: DIR/refcoco/refs(unc).p, instances.json, DIR/images/")
    p.add_argument("--refcoco-dataset", default="refcoco", choices=["refcoco", "refcoco+", "refcocog"])
    p.add_argument("--refcoco-split-by", default="unc")
    p.add_argument("--refcoco-splits", nargs="+", default=["val"])
    p.add_argument("--lenient-data", action="store_true", help="skip malformed records (counted)")
    p.add_argument("--limit", type=int, default=0, help="questions per split (0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: the context left)")
    p.add_argument("--no-teacher-forced", action="store_true", help="skip the LISA-protocol pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines")
    p.add_argument("--margin", type=float, default=WIDE_MARGIN, help="gIoU/cIoU lead over the best baseline that counts as wide")
    p.add_argument("--examples", type=int, default=6, help="overlay examples per split (0: no grid)")
    p.add_argument("--device", default="cpu", help="cpu (the reported CPU throughput) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--name", default=None, help="model name in file names (default: the config's)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ablation", action="store_true", help="train and bench the ablation variants on val")
    p.add_argument("--train-args", default="", help='the default run\'s pixellm-train arguments, e.g. "--steps 1500 --seed 0"')
    p.add_argument("--ablation-out", type=Path, default=None, help="variant runs (default: <checkpoint>/../ablation)")
    p.add_argument("--retrain", action="store_true", help="train variants again even if their runs exist")
    p.add_argument("--targets-from", type=Path, default=None, metavar="SEG_DIR",
                   help="a DynRefer checkpoint: also describe the targets this segmentation model predicts on val")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated ablation variants to train and bench (default: all of {', '.join(VARIANTS)})")
    return p


def check_checkpoint(path: Path) -> Path:
    """``path`` if it holds a saved model, else an InputError that says how to make one."""
    if not (path / "config.json").is_file():
        raise InputError(f"no checkpoint at {path} (config.json missing): run `make train` first, "
                         "or pass --checkpoint DIR")
    return path


def eval_sets(args: argparse.Namespace) -> list[EvalSet]:
    """The splits to bench, in report order (generated data, real MUSE, refCOCO)."""
    strict, sets = not args.lenient_data, []
    if not args.skip_shapes:
        sets += muse_sets("shapes", args.data, args.splits, strict=strict)
    if args.muse_root:
        sets += muse_sets("muse", args.muse_root, args.muse_splits, images=args.muse_images,
                          lvis=args.lvis, strict=strict)
    if args.refcoco_root:
        sets += refcoco_sets(args.refcoco_root, args.refcoco_splits, dataset=args.refcoco_dataset,
                             split_by=args.refcoco_split_by, strict=strict)
    if not sets:
        raise InputError("nothing to bench: --skip-shapes without --muse-root or --refcoco-root")
    return sets


def compare(model: dict, baselines: dict[str, dict], margin: float) -> dict:
    """Model vs the best baseline (chosen per metric) on all questions of a split.

    Args:
        model: metrics of the model ("giou", "ciou", ...).
        baselines: name -> {"all": metrics, ...}.
    Returns:
        {"margin", "best_giou_baseline", "best_giou", "lead_giou", the same for ciou,
         "beats_all_by_margin": both leads >= margin}.
    """
    out: dict = {"margin": margin}
    for m in ("giou", "ciou"):
        vals = {k: v["all"][m] for k, v in baselines.items() if not math.isnan(v["all"][m])}
        best = max(vals, key=vals.get) if vals else None
        out[f"best_{m}_baseline"], out[f"best_{m}"] = best, vals.get(best, float("nan"))
        out[f"lead_{m}"] = model[m] - out[f"best_{m}"]  # NaN stays NaN and never wins
    out["beats_all_by_margin"] = all(out[f"lead_{m}"] >= margin for m in ("giou", "ciou"))
    return out


def bench_set(predictor, es: EvalSet, args: argparse.Namespace) -> tuple[dict, list]:
    """Generation, teacher-forced and baseline scores of one split.

    Returns:
        (JSON-ready result, kept (sample, Prediction) pairs for the overlay grid).
    """
    from pixellm.evaluate import evaluate_generation, evaluate_teacher_forced

    kw = dict(batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress)
    gen = evaluate_generation(predictor, es.samples, keep_predictions=4 * args.examples, **kw)
    examples = gen.pop("examples")
    gen.pop("score_records")  # one row per target: what pixellm-calibrate fits, not a result
    tf = None if args.no_teacher_forced else evaluate_teacher_forced(
        predictor.model, es.samples, formatter=predictor.formatter, **kw)
    base = evaluate_baselines(es.samples, es.instances, limit=args.limit, seed=args.seed,
                              progress=not args.no_progress)
    result = {"name": es.name, "n": gen["n"], "generation": gen, "teacher_forced": tf,
              "baselines": base, "comparison": compare(gen["all"], base, args.margin)}
    return result, examples


def bench_fresh(predictor, seed: int, sets: list[EvalSet], val: dict | None,
                args: argparse.Namespace) -> tuple[dict, dict[str, list]]:
    """Bench the fresh-seed splits like the others.

    Args:
        seed: the fresh dataset's seed. sets: its splits (:func:`~.sources.fresh_sets`).
        val: the generated val split's result (gap reference), or None if not benched.

    Returns:
        ({"seed", "data", "val": the reference split's name or None, "sets": results, each
          with "gap_to_val": {"giou", "ciou"} = its score minus val's, or None},
         split name -> kept (sample, Prediction) pairs).
    """
    ref = val["generation"]["all"] if val else None
    results, examples = [], {}
    for es in sets:
        result, examples[es.name] = bench_set(predictor, es, args)
        result["gap_to_val"] = None if ref is None else {
            m: result["generation"]["all"][m] - ref[m] for m in ("giou", "ciou")}
        results.append(result)
    return ({"seed": seed, "data": str(args.fresh_data), "val": val["name"] if val else None,
             "sets": results}, examples)


def run_ablation(args: argparse.Namespace, checkpoint: Path, predictor,
                 val: EvalSet, default_val: dict | None) -> dict:
    """Train (or reuse) each variant, bench it on ``val`` in generation mode, tabulate.

    Returns:
        {"split", "train_args", "runs", "rows": one per variant (default first) with its
         metrics, zero-target metrics, training stats and lead over the default, "note"}.
    """
    from pixellm.checkpoint import load_predictor
    from pixellm.evaluate import evaluate_generation

    out_dir = args.ablation_out or checkpoint.parent / "ablation"
    kw = dict(batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress)
    default_val = default_val or evaluate_generation(predictor, val.samples, **kw)
    rows = [_ablation_row("default", (), default_val, training_stats(checkpoint.parent))]
    train_args = with_default_steps(shlex.split(args.train_args), rows[0]["train"])
    for name in selected_variants(args.variants):
        run = out_dir / name
        argv = variant_argv(name, checkpoint=checkpoint, shapes_root=args.data, run_dir=run,
                            train_args=train_args, progress=not args.no_progress)
        final = train_variant(name, run, argv, retrain=args.retrain)
        pred = load_predictor(final, device=args.device, dtype=_dtype(args),
                                                max_new_tokens=args.max_new_tokens)
        rows.append(_ablation_row(name, VARIANTS[name], evaluate_generation(pred, val.samples, **kw),
                                  training_stats(run)))
    for r in rows[1:]:
        r["delta_giou"] = r["all"]["giou"] - rows[0]["all"]["giou"]
        r["delta_ciou"] = r["all"]["ciou"] - rows[0]["all"]["ciou"]
    note = budget_note(rows[0]["train"], {r["variant"]: r["train"] for r in rows[1:]})
    return {"split": val.name, "train_args": train_args, "runs": str(out_dir), "rows": rows,
            "note": note}


def selected_variants(spec: str) -> list[str]:
    """The variant names of a ``--variants`` list, in the order given; InputError on an unknown
    or repeated name, or an empty list."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names or len(set(names)) != len(names):
        raise InputError(f"--variants {spec!r}: give distinct names among {', '.join(VARIANTS)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names


def _ablation_row(name: str, flags, gen: dict, train: dict | None) -> dict:
    return {"variant": name, "description": DESCRIPTIONS[name], "flags": list(flags),
            "all": gen["all"], "zero_target": gen["zero_target"], "n": gen["n"],
            "queries_per_s": gen["queries_per_s"], "train": train}


def _dtype(args: argparse.Namespace) -> torch.dtype:
    return getattr(torch, args.dtype)


def _meta(args: argparse.Namespace, predictor, checkpoint: Path, argv: list[str] | None) -> dict:
    """Provenance: model, checkpoint, device, dtype, torch, threads, command, date."""
    device = torch.device(args.device)
    return dict(model=args.name or predictor.cfg.name, checkpoint=str(checkpoint),
                device=device.type, device_name=device_name(device), dtype=args.dtype,
                torch=torch.__version__.split("+")[0], threads=torch.get_num_threads(),
                batch_size=args.batch_size, limit=args.limit, seed=args.seed,
                margin=args.margin, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                score_calibration=(predictor.calibration.fitted_on if predictor.calibration
                                   else None),
                command=" ".join(["pixellm-bench", *(sys.argv[1:] if argv is None else argv)]))


def _setup(args: argparse.Namespace):
    """(checkpoint, splits, fresh (seed, splits) or None, the ablation's val split or None,
    predictor); InputError early."""
    from pixellm.checkpoint import load_predictor

    checkpoint = check_checkpoint(args.checkpoint)
    sets, val = eval_sets(args), None
    fresh = fresh_sets(args.fresh_data, strict=not args.lenient_data) if args.fresh_data else None
    if args.ablation:  # the variants train and bench on the generated data
        selected_variants(args.variants)  # a typo fails now, not after the benchmark
        val = next((es for es in sets if es.name == "shapes-val"), None) or muse_sets(
            "shapes", args.data, ["val"], strict=not args.lenient_data)[0]
    predictor = load_predictor(checkpoint, device=args.device, dtype=_dtype(args),
                                                 max_new_tokens=args.max_new_tokens)
    return checkpoint, sets, fresh, val, predictor


def _family(checkpoint: Path) -> str | None:
    """The family named by a checkpoint's config (None when it has none to read)."""
    try:
        return json.loads((Path(checkpoint) / "config.json").read_text()).get("family")
    except (OSError, ValueError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    """Bench, write JSON/Markdown/PNG, print the Markdown.

    Returns:
        0; 2 on bad input (missing checkpoint or data); 1 if an ablation variant failed.
    """
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if _family(args.checkpoint) == "dynrefer":  # a describer: the region-description report
        from .describe import bench_describer

        return bench_describer(args, argv)
    try:
        checkpoint, sets, fresh, val, predictor = _setup(args)
    except (InputError, CheckpointError) as e:
        print(f"pixellm-bench: error: {e}", file=sys.stderr)
        return 2
    results, examples = [], {}
    for es in sets:
        result, examples[es.name] = bench_set(predictor, es, args)
        results.append(result)
    report = {"meta": _meta(args, predictor, checkpoint, argv),
              "training": training_stats(checkpoint.parent), "sets": results, "fresh": None,
              "ablation": None}
    if fresh:
        val_result = next((r for r in results if r["name"] == VAL_SPLIT), None)
        report["fresh"], more = bench_fresh(predictor, *fresh, val_result, args)
        examples.update(more)
    status = 0
    if val is not None:
        default_val = next((r["generation"] for r in results if r["name"] == val.name), None)
        try:
            report["ablation"] = run_ablation(args, checkpoint, predictor, val, default_val)
        except RuntimeError as e:  # keep the benchmark results written below
            print(f"pixellm-bench: ablation failed: {e}", file=sys.stderr)
            status = 1
    from .report import to_markdown, write_outputs

    paths = write_outputs(report, examples, args.out, n_examples=args.examples)
    print(to_markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
