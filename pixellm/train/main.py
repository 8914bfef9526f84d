"""``pixellm-train``: train, then evaluate the final model on a held-out split and print a table."""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .args import parse_config


def _table(name: str, m: dict) -> str:
    a = m["all"]
    rows = ["| split | n | gIoU | cIoU | count acc | target phrases right | phrase gIoU | P@0.5 | R@0.5 |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {name} | {m['n']} | {a['giou']:.3f} | {a['ciou']:.3f} | {a['count_acc']:.3f} | "
            f"{m['target_phrase_acc']:.3f} | {m['phrase_giou']:.3f} | {a['precision50']:.3f} | "
            f"{a['recall50']:.3f} |"]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None, *, clock: Callable[[], float] | None = None,
         on_step: Callable[[dict], None] | None = None) -> int:
    """Train per the command line (a recipe and the flags over it); evaluate on --eval-split
    with generated answers. ``clock`` and ``on_step``: see :func:`pixellm.train.loop.train`."""
    from ..errors import ConfigError, InputError

    try:
        cfg = parse_config(argv)
    except ConfigError as e:
        print(f"pixellm-train: error: {e}", file=sys.stderr)
        return 2
    from .loop import TrainingDivergedError, train

    t0 = time.perf_counter()
    try:
        result = train(cfg, **({"clock": clock} if clock else {}), on_step=on_step)
    except (ConfigError, InputError, TrainingDivergedError) as e:
        print(f"pixellm-train: error: {e}", file=sys.stderr)
        return 2
    train_secs = time.perf_counter() - t0
    if not cfg.eval_split or not result["accelerator"].is_main_process:
        return 0
    from ..checkpoint import read_config

    family = read_config(result["final"])[1]
    if family.evaluate is not None:  # a family without an LLM reports its own metrics
        return _own_eval(cfg, family, result, time.perf_counter() - t0)
    return _generation_eval(cfg, result, train_secs)


def _generation_eval(cfg, result: dict, train_secs: float) -> int:
    """The LLM families' evaluation: generated answers on --eval-split, the score calibration
    fitted there, ``RUN/eval.json`` and the printed table."""
    from ..checkpoint import load_predictor
    from ..evaluate import evaluate_generation
    from .calibrate import fit_and_save
    from .mixture import load_source

    samples = load_source("shapes", root=cfg.shapes_root, split=cfg.eval_split)
    pred = load_predictor(result["final"])
    m = evaluate_generation(pred, samples, limit=cfg.eval_limit, progress=not cfg.no_progress)
    calibration = fit_and_save(result["final"], m["score_records"], source=cfg.eval_split)
    hist = result["history"]
    summary = {"train_seconds": train_secs, "steps": result["steps"], "planned_steps": result["planned_steps"],
               "train_samples_per_s": hist[-1]["samples_per_s"] if hist else None,
               "train_questions_per_s": hist[-1]["questions_per_s"] if hist else None,
               "eval_split": cfg.eval_split, "eval": m["all"], "zero_target": m["zero_target"],
               "target_phrase_acc": m["target_phrase_acc"], "phrase_giou": m["phrase_giou"],
               "with_duplicates": m["with_duplicates"], "n_duplicates": m["n_duplicates"],
               "eval_queries_per_s": m["queries_per_s"], "final_checkpoint": result["final"],
               "score_uncalibrated": m["score"], "zero_target_rate": m["zero_target_rate"],
               "score_calibration": None if calibration is None else vars(calibration),
               "vision_warmup_steps": len(result["vision_warmup"]),
               "vision_warmup_seconds": result["vision_warmup"][-1]["seconds"] if result["vision_warmup"] else 0.0}
    Path(cfg.out, "eval.json").write_text(json.dumps(summary, indent=2, default=str))
    print(_table(cfg.eval_split, m))
    raw = m["with_duplicates"]
    print(f"duplicate masks dropped: {m['n_duplicates']}; with them kept: gIoU {raw['giou']:.3f}, "
          f"cIoU {raw['ciou']:.3f}")
    if calibration is not None:
        sq = m["score"]
        print(f"target scores before calibration: AUROC {sq['auroc']:.3f}, ECE {sq['ece']:.3f}; "
              f"score calibration fitted on {calibration.fitted_on} (pixellm.calibration)")
    if result["steps"] < result["planned_steps"]:
        print(f"the time budget sized the run to {result['steps']} steps (at most {result['planned_steps']}): "
              f"the step count follows the machine's pace")
    print(f"train {train_secs / 60:.1f} min, {summary['train_samples_per_s']:.1f} sequences/s "
          f"({summary['train_questions_per_s']:.1f} questions/s); "
          f"eval {m['queries_per_s']:.1f} queries/s; model: {result['final']}")
    return 0


def _own_eval(cfg, family, result: dict, train_secs: float) -> int:
    m, text = family.evaluate(result["final"], root=cfg.shapes_root, split=cfg.eval_split,
                              limit=cfg.eval_limit, progress=not cfg.no_progress)
    hist = result["history"]
    summary = {"train_seconds": train_secs, "steps": result["steps"], "planned_steps": result["planned_steps"],
               "train_samples_per_s": hist[-1]["samples_per_s"] if hist else None,
               "eval_split": cfg.eval_split, "eval": m, "final_checkpoint": result["final"]}
    Path(cfg.out, "eval.json").write_text(json.dumps(summary, indent=2, default=str))
    print(text)
    print(f"train {train_secs / 60:.1f} min, {result['steps']} steps; model: {result['final']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
