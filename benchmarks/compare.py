"""``pixellm-compare``: the model families head to head on the same data, budget, metrics and
FLOP counter.

For each model config (default ``pixellm-tiny``, ``lisa-tiny``, ``lisa-tiny-merged``,
``lseg-tiny``, ``lts-tiny``) it
trains what is missing under ``--runs`` with the same ``pixellm-train`` arguments as
``make train`` (same data, seed, step cap and wall-clock budget), benches every checkpoint on
every split (generation and teacher-forced, the trivial answers scored once per split), counts
TFLOPs per query at K = 1 / 3 / 10 with the flops harness (the tiny config, and the family's
7B / 13B configs on the meta device) and times one query per K on this CPU (random weights,
median). It writes ``compare_<device>_<dtype>_torch<ver>.{json,md,png}`` under ``--out``: one
row per model and split, and a verdict in words.

Usage::

    pixellm-compare                                  # trains what is missing, ~1.3 h on 2 cores
    pixellm-compare --limit 50 --splits val          # quick look at existing runs
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from pixellm.config import add_model_config, get_model_config
from pixellm.errors import CheckpointError, ConfigError, InputError
from pixellm.evaluate import markdown_table
from pixellm.families import get_family

from .baselines import evaluate_baselines
from .machine import device_name
from .runs import training_stats
from .sources import SHAPES_SPLITS, EvalSet, fresh_sets, muse_sets

DEFAULT_MODELS = ("pixellm-tiny", "lisa-tiny", "lisa-tiny-merged", "lseg-tiny", "lts-tiny")
KS = (1, 3, 10)
CLAIM_SPLITS = ("shapes-test_many", "shapes-multi_ref")  # PixelLM's claim is about many targets
TIE = 0.01  # gIoU points within which two models count as level
# the real-scale config of each family without a 7B / 13B one (counted in a note)
REAL_SCALE = {"lseg": "lseg-vitl16", "lts": "lts-darknet53"}
# pixellm-train arguments of one family's models only (e.g. "lisa=--vision-warmup 400" adds the
# SAM pretraining stage of pixellm.lisa.warmup inside the same budget); none by default: every
# model trains with make train's command.
FAMILY_ARGS: dict[str, str] = {}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-compare", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="registered model configs")
    p.add_argument("--runs", type=Path, default=Path("checkpoints"), help="run directories: RUNS/<model>")
    p.add_argument("--data", type=Path, default=Path("data/shapes"), help="generated dataset (train + splits)")
    p.add_argument("--splits", nargs="+", default=list(SHAPES_SPLITS))
    p.add_argument("--fresh-data", type=Path, default=None, help="fresh-seed dataset, benched too")
    p.add_argument("--time-budget", type=float, default=14.0, help="training minutes per model (as make train)")
    p.add_argument("--steps", type=int, default=8000, help="training step cap per model (as make train)")
    p.add_argument("--train-args", default="", help="more pixellm-train arguments, the same for every model")
    p.add_argument("--family-args", action="append", default=None, metavar="FAMILY=ARGS",
                   help="pixellm-train arguments of one family's models, after --train-args (repeatable; "
                        f"default: {'; '.join(f'{k}={v}' for k, v in FAMILY_ARGS.items())})")
    p.add_argument("--retrain", action="store_true", help="train again even if a run exists")
    p.add_argument("--limit", type=int, default=0, help="questions per split (0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--sizes", nargs="*", default=["7b", "13b"],
                   help="real-scale configs counted per family (none: the tiny configs only)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per K (median)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--no-progress", action="store_true")
    return p


# -- training -------------------------------------------------------------------------------
def family_args(specs: list[str] | None) -> dict[str, str]:
    """``FAMILY=ARGS`` strings -> {family: args}; None: :data:`FAMILY_ARGS`. InputError on a
    string without ``=``."""
    if specs is None:
        return dict(FAMILY_ARGS)
    out = {}
    for spec in specs:
        family, sep, rest = spec.partition("=")
        if not sep or not family.strip():
            raise InputError(f"--family-args {spec!r}: expected FAMILY=ARGS, e.g. 'lisa=--vision-warmup 400'")
        out[family.strip()] = rest
    return out


def train_argv(model: str, run: Path, args: argparse.Namespace, extra: str = "") -> list[str]:
    """``pixellm-train`` arguments of one model: ``make train``'s, the model and run changed,
    then ``--train-args`` and the family's ``extra``."""
    return ["--model", model, "--shapes-root", str(args.data), "--out", str(run), "--steps", str(args.steps),
            "--time-budget", str(args.time_budget), *shlex.split(args.train_args), *shlex.split(extra),
            *(("--no-progress",) if args.no_progress else ())]


def ensure_trained(model: str, args: argparse.Namespace, extra: str = "") -> Path:
    """The final checkpoint of ``model``'s run, training it first when it is missing.

    Raises:
        RuntimeError: training failed (pixellm-train printed why).
    """
    run = args.runs / model
    final = run / "final"
    if (final / "config.json").is_file() and not args.retrain:
        print(f"compare: reusing {final} (--retrain to train again)", flush=True)
        return final
    from pixellm.train.main import main as train_main

    argv = train_argv(model, run, args, extra)
    print(f"compare: pixellm-train {shlex.join(argv)}", flush=True)
    if train_main(argv) != 0:
        raise RuntimeError(f"training {model} failed")
    return final


# -- quality --------------------------------------------------------------------------------
def quality_row(predictor, es: EvalSet, args: argparse.Namespace) -> dict:
    """Generated and teacher-forced scores of one model on one split (flat). A model without
    an answer to teacher-force (LSeg labels pixels) gets None there and a ``notes`` entry."""
    from pixellm.evaluate import evaluate_generation, evaluate_teacher_forced

    if hasattr(predictor, "predict_expressions"):  # a referring model (LTS)
        return referring_row(predictor, es, args)
    kw = dict(batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress)
    gen = evaluate_generation(predictor, es.samples, **kw)
    notes = {}
    if hasattr(predictor, "formatter"):
        tf = evaluate_teacher_forced(predictor.model, es.samples, formatter=predictor.formatter, **kw)
    else:
        tf = {"giou": None, "ciou": None}
        notes["tf_giou"] = notes["tf_ciou"] = ("no answer text to teacher-force: it labels the pixels "
                                              "of the question as one query label")
    a = gen["all"]
    return dict(split=es.name, n=gen["n"], giou=a["giou"], ciou=a["ciou"], count_acc=a["count_acc"],
                precision50=a["precision50"], recall50=a["recall50"], tf_giou=tf["giou"], tf_ciou=tf["ciou"],
                zero_target_rate=gen["zero_target_rate"], n_zero_target=gen["n_zero_target"],
                queries_per_s=gen["queries_per_s"], notes=notes)


REFERRING_SPLITS = ("multi_ref",)  # splits whose questions join referring expressions
QUALITY = ("n", "giou", "ciou", "count_acc", "precision50", "recall50", "tf_giou", "tf_ciou",
           "zero_target_rate", "n_zero_target", "queries_per_s")


def referring_row(predictor, es: EvalSet, args: argparse.Namespace) -> dict:
    """A referring model's row: on a multi-referring split each expression is run alone and
    the set scored (gIoU, cIoU...), and each expression's mask against its own target (the
    teacher-forced columns: order-aligned, as the LLM families' true answers are fed); other
    splits ask reasoning questions it cannot answer: None there, the reason in ``notes``."""
    from pixellm.lts.evaluate import evaluate_expressions

    if not es.name.endswith(REFERRING_SPLITS):
        why = "a referring model: this split asks reasoning questions, not referring expressions"
        return dict(split=es.name, **{k: None for k in QUALITY}, notes={"giou": why})
    r = evaluate_expressions(predictor, es.samples, limit=args.limit, progress=not args.no_progress)
    a = r["all"]
    return dict(split=es.name, n=r["n"], giou=a["giou"], ciou=a["ciou"], count_acc=a["count_acc"],
                precision50=a["precision50"], recall50=a["recall50"], tf_giou=r["aligned"]["giou"],
                tf_ciou=r["aligned"]["ciou"], zero_target_rate=None, n_zero_target=0,
                queries_per_s=r["queries_per_s"],
                notes={"zero_target_rate": "a referring split has no zero-target question"})


def trivial_scores(sets: list[EvalSet], args: argparse.Namespace) -> dict[str, dict]:
    """Per split, the best trivial answer by gIoU and by cIoU (names and values)."""
    out = {}
    for es in sets:
        base = evaluate_baselines(es.samples, es.instances, limit=args.limit, seed=args.seed,
                                  progress=not args.no_progress)
        best = {}
        for m in ("giou", "ciou"):
            vals = {k: v["all"][m] for k, v in base.items() if not math.isnan(v["all"][m])}
            name = max(vals, key=vals.get)
            best[f"trivial_{m}"], best[f"trivial_{m}_answer"] = vals[name], name
        out[es.name] = best
    return out


# -- compute --------------------------------------------------------------------------------
def compute_costs(model: str, sizes: list[str], *, repeats: int) -> dict:
    """TFLOPs per query at each K for the tiny config and the family's real-scale configs, and
    this CPU's median latency per query (the tiny config, random weights)."""
    from .flop_utils import QueryBudget, time_query
    from .flops import build_pipeline, config_pipeline, count_query

    cfg = get_model_config(model)
    if get_family(cfg.family).train_data is not None:  # no LLM: the dense harness
        return _dense_costs(model, cfg, sizes, repeats=repeats)
    merged = bool(getattr(cfg, "merge_targets", False))
    budget, out = QueryBudget(), {}
    out["tflops"] = {"tiny": {r["k"]: r["total"] / 1e12 for r in count_query(config_pipeline(model), budget, list(KS))}}
    for size in sizes:
        pipe = build_pipeline(cfg.family, size, merged=merged)
        out["tflops"][size] = {r["k"]: r["total"] / 1e12 for r in count_query(pipe, budget, list(KS))}
    pipe = config_pipeline(model, device="cpu")
    out["latency_ms"] = {k: time_query(pipe, budget, k, device=torch.device("cpu"), repeats=repeats,
                                       warmup=1)["total_ms"] for k in KS}
    return out


def _dense_costs(model: str, cfg, sizes: list[str], *, repeats: int) -> dict:
    """:func:`compute_costs` for a family without an LLM: its tiny config, its own real-scale
    config in a note (it has no 7B / 13B), and the latency of its query passes."""
    from .dense import query_flops, query_ms

    out = {"tflops": {"tiny": {k: f / 1e12 for k, f in query_flops(model, list(KS)).items()}}, "notes": {}}
    real = REAL_SCALE.get(cfg.family)
    real_text = "" if not real or not sizes else (
        f"; its real-scale config {real} costs "
        + " / ".join(f"{f / 1e12:.2f}" for f in query_flops(real, list(KS)).values())
        + f" TFLOPs per query at K = {' / '.join(map(str, KS))}")
    for size in sizes:
        out["tflops"][size] = None
        out["notes"][f"tflops_{size}"] = f"no {size.upper()} config{real_text}"
    out["latency_ms"] = query_ms(model, list(KS), device=torch.device("cpu"), repeats=repeats)
    return out


def flat_row(model: str, q: dict, trivial: dict, train: dict | None, cost: dict) -> dict:
    """One JSON row: model, split, quality, the split's trivial answers, training, compute;
    ``notes``: why a field is None (e.g. a split or a scale the family cannot answer)."""
    row = {"model": model, **q, **trivial,
           "train_seconds": train and train.get("train_seconds"), "train_steps": train and train.get("steps")}
    row["notes"] = {**q.get("notes", {}), **cost.get("notes", {})}
    for size, by_k in cost["tflops"].items():
        prefix = "tflops" if size == "tiny" else f"tflops_{size}"
        if by_k is None:
            row.update({f"{prefix}_k{k}": None for k in KS})
            continue
        row.update({f"{prefix}_k{k}": v for k, v in by_k.items()})
    row.update({f"latency_ms_k{k}": v for k, v in cost["latency_ms"].items()})
    return row


# -- words ----------------------------------------------------------------------------------
def split_winners(rows: list[dict]) -> list[dict]:
    """Per split: the model with the highest generated gIoU and its lead over the runner-up."""
    out = []
    for split in dict.fromkeys(r["split"] for r in rows):
        ranked = sorted((r for r in rows if r["split"] == split and r["giou"] is not None),
                        key=lambda r: -_num(r["giou"]))
        if not ranked:
            continue
        first, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        out.append(dict(split=split, winner=first["model"], giou=first["giou"], ciou=first["ciou"],
                        runner_up=second and second["model"],
                        lead_giou=second and first["giou"] - second["giou"],
                        lead_ciou=second and first["ciou"] - second["ciou"]))
    return out


def claim_verdict(rows: list[dict], pixellm: str | None, lisa: str | None) -> str:
    """Does PixelLM (model ``pixellm``) match or beat LISA (``lisa``, one [SEG] per target) on
    the many-target splits, at about half LISA's TFLOPs per query?"""
    if pixellm is None or lisa is None:
        return "PixelLM's claim is not checked: it needs a PixelLM model and a per-target LISA model."
    by = {(r["model"], r["split"]): r for r in rows}
    splits = [s for s in CLAIM_SPLITS if (pixellm, s) in by and (lisa, s) in by]
    if not splits:
        return f"PixelLM's claim is not checked: {pixellm} and {lisa} share no many-target split here."
    gaps = {s: by[pixellm, s]["giou"] - by[lisa, s]["giou"] for s in splits}
    quality = all(g >= -TIE for g in gaps.values())
    any_row = {r["model"]: r for r in rows}
    ratios = {k: any_row[pixellm][k] / any_row[lisa][k] for k in ("tflops_k3", "tflops_7b_k3")
              if k in any_row[pixellm] and k in any_row[lisa]}
    # the claim is about real scale, where SAM ViT-H dominates; the tiny configs are sized to cost alike
    judged = "tflops_7b_k3" if "tflops_7b_k3" in ratios else "tflops_k3"
    cheap = judged in ratios and ratios[judged] <= 0.6
    gap_text = ", ".join(f"{s.removeprefix('shapes-')} {g:+.3f}" for s, g in gaps.items())
    ratio_text = ", ".join(f"{'7B' if '7b' in k else 'tiny'} {v:.2f}x" for k, v in ratios.items())
    holds = "holds" if quality and cheap else "does not hold"
    why = []
    if not quality:
        why.append("PixelLM trails LISA by more than a tie on a many-target split")
    if not cheap:
        why.append(f"PixelLM does not cost about half of LISA's TFLOPs at K = 3 ({'7B' if '7b' in judged else 'tiny'})")
    text = (f"**PixelLM's claim {holds} at this scale.** gIoU of {pixellm} minus {lisa}: {gap_text} "
            f"(a tie is within {TIE}); TFLOPs per query at K = 3, {pixellm} / {lisa}: {ratio_text}"
            + (f". Why not: {'; '.join(why)}." if why else "."))
    return text + "".join(f" {note}" for note in trivial_caveats(rows, [pixellm, lisa], splits))


def trivial_caveats(rows: list[dict], models: list[str], splits: list[str]) -> list[str]:
    """A warning per model that scores below the best trivial answer (gIoU) on these splits:
    a win over such a model says little about the method."""
    by = {(r["model"], r["split"]): r for r in rows}
    notes = []
    for m in models:
        below = [s for s in splits if _num(by[m, s]["giou"]) < _num(by[m, s].get("trivial_giou"))]
        if below:
            tf = max(_num(by[m, s]["tf_giou"]) for s in below)
            notes.append(f"Caveat: {m} scores below the best trivial answer on "
                         f"{', '.join(s.removeprefix('shapes-') for s in below)} (teacher-forced gIoU at most "
                         f"{tf:.3f}), so this budget did not train it to segment.")
    return notes


def claim_pair(configs: dict) -> tuple[str | None, str | None]:
    """(the first PixelLM model, the first LISA model with one [SEG] per target), or None each."""
    pixellm = next((m for m, c in configs.items() if c.family == "pixellm"), None)
    lisa = next((m for m, c in configs.items() if c.family == "lisa" and not c.merge_targets), None)
    return pixellm, lisa


def _num(x) -> float:
    return float("nan") if x is None else x


# -- outputs --------------------------------------------------------------------------------
def _f(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def to_markdown(report: dict) -> str:
    """The report as Markdown: quality per model and split, compute per model, the verdict."""
    meta, rows = report["meta"], report["rows"]
    q = [[r["model"], r["split"].removeprefix("shapes-"), "-" if r["n"] is None else r["n"], _f(r["giou"]), _f(r["ciou"]),
          _f(r["count_acc"]), _f(r["precision50"]), _f(r["recall50"]), _f(r["tf_giou"]), _f(r["tf_ciou"]),
          _f(r["zero_target_rate"]), f"{_f(r['trivial_giou'])} / {_f(r['trivial_ciou'])}"] for r in rows]
    models = list(dict.fromkeys(r["model"] for r in rows))
    first = {r["model"]: r for r in reversed(rows)}
    sizes = [s for s in report["sizes"]]
    c = []
    for m in models:
        r = first[m]
        c.append([m, _f(r["train_seconds"] and r["train_seconds"] / 60, 1), r["train_steps"],
                  *(_f(r[f"tflops_k{k}"] * 1e3, 2) for k in KS),
                  *(_f(r[f"tflops_{s}_k{k}"], 2) for s in sizes for k in KS),
                  *(_f(r[f"latency_ms_k{k}"], 1) for k in KS)])
    wins = [f"- {w['split'].removeprefix('shapes-')}: **{w['winner']}** (gIoU {_f(w['giou'])}, cIoU "
            f"{_f(w['ciou'])})" + (f", ahead of {w['runner_up']} by {_f(w['lead_giou'])} gIoU and "
                                   f"{_f(w['lead_ciou'])} cIoU" if w["runner_up"] else "")
            for w in report["winners"]]
    size_cols = [f"{s.upper()} K={k}" for s in sizes for k in KS]
    lines = [
        "# The model families, head to head", "",
        f"Same data ({meta['data']}), same training command and wall-clock budget "
        f"({meta['time_budget']} min, at most {meta['steps']} steps; each family's own stage inside it: "
        f"{_family_text(meta.get('family_args') or {})}), same metrics, same FLOP counter. "
        f"Device: {meta['device_name']}; {meta['dtype']}; torch {meta['torch']}; commit {meta['commit']}; "
        f"{meta['date']}; wall time {meta['wall_minutes']:.1f} min. Command: `{meta['command']}`.", "",
        report["verdict"], "", "Who wins each split (generated answers, gIoU):", "", *wins, "",
        "## Quality", "",
        "Generated answers scored with Hungarian matching (gIoU, cIoU, count accuracy, P/R at IoU 0.5); "
        "teacher-forced: the true answer fed, masks aligned by order (LISA protocol); zero-target rate: "
        "share of 0-target questions answered with no mask; trivial: the best trivial answer "
        "(gIoU / cIoU).", "",
        *markdown_table(["model", "split", "n", "gIoU", "cIoU", "count acc", "P@0.5", "R@0.5", "TF gIoU", "TF cIoU",
                 "zero-target rate", "trivial"], q, left=2), "",
        "## Training and compute", "",
        "FLOPs per query (1 image, K targets, the flops harness's answer budget) for the tiny config "
        "(GFLOPs) and its family's real-scale configs (TFLOPs; meta device, multiply-add = 2); "
        "train min: the optimizer steps' wall time; latency: median ms "
        "per query of the tiny config on this CPU, random weights.", "",
        *markdown_table(["model", "train min", "steps", *(f"tiny GFLOPs K={k}" for k in KS), *size_cols,
                 *(f"ms K={k}" for k in KS)], c, left=1)]
    notes = _notes(rows)
    if notes:
        lines += ["", "Fields marked - above, and why:", "", *notes]
    return "\n".join(lines) + "\n"


def _notes(rows: list[dict]) -> list[str]:
    """One line per model and reason: the fields a model leaves empty, and why."""
    by: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        for field, why in (r.get("notes") or {}).items():
            fields = by.setdefault((r["model"], why), [])
            if field not in fields:
                fields.append(field)
    return [f"- {m}, {', '.join(fields)}: {why}." for (m, why), fields in by.items()]


def _family_text(extra: dict[str, str]) -> str:
    return "; ".join(f"{k} `{v}`" for k, v in extra.items() if v.strip()) or "none"


def plot(report: dict, path: Path) -> None:
    """Generated gIoU per split and model (trivial answer as a tick), and 7B TFLOPs per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    w = 0.8 / len(models)
    by = {(r["model"], r["split"]): r for r in rows}
    for i, m in enumerate(models):
        ax.bar([j + i * w for j in range(len(splits))], [_num(by[m, s]["giou"]) for s in splits], w, label=m)
    for j, s in enumerate(splits):
        t = by[models[0], s]["trivial_giou"]
        ax.hlines(t, j - w / 2, j + 0.8 - w / 2, colors="k", linestyles="--",
                  label="best trivial answer" if j == 0 else None)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(splits))], [s.removeprefix("shapes-") for s in splits])
    ax.set(ylabel="generated gIoU", title="quality per split", ylim=(0, 1))
    ax.legend(fontsize=7)
    size = report["sizes"][0] if report["sizes"] else "tiny"
    prefix = "tflops" if size == "tiny" else f"tflops_{size}"
    first = {r["model"]: r for r in rows}
    for i, m in enumerate(models):
        bx.bar([j + i * w for j in range(len(KS))], [_num(first[m][f"{prefix}_k{k}"]) for k in KS], w, label=m)
    bx.set_xticks([j + 0.4 - w / 2 for j in range(len(KS))], [f"K={k}" for k in KS])
    bx.set(ylabel="TFLOPs per query", title=f"compute at {size.upper()}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    meta = report["meta"]
    stem = f"compare_{meta['device']}_{meta['dtype']}_torch{meta['torch']}"  # not with_suffix: "2.14.1"
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    from .report import _clean

    paths[0].write_text(json.dumps(_clean(report), indent=2) + "\n")
    paths[1].write_text(to_markdown(report))
    plot(report, paths[2])
    return paths


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- CLI ------------------------------------------------------------------------------------
def _sets(args: argparse.Namespace) -> list[EvalSet]:
    sets = muse_sets("shapes", args.data, args.splits)
    if args.fresh_data:
        sets += fresh_sets(args.fresh_data)[1]
    return sets


def main(argv: list[str] | None = None) -> int:
    """Train what is missing, bench, count, time, write JSON/Markdown/PNG, print the Markdown.

    Returns:
        0; 2 on bad input (unknown model, missing data); 1 if a model failed to train.
    """
    from pixellm.checkpoint import load_predictor

    args = _parser().parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.models = [add_model_config(m) if m.endswith(".json") else m for m in args.models]
        configs = {m: get_model_config(m) for m in args.models}
        extra = family_args(args.family_args)
        sets = _sets(args)
    except (ConfigError, InputError) as e:
        print(f"pixellm-compare: error: {e}", file=sys.stderr)
        return 2
    try:
        finals = {m: ensure_trained(m, args, extra.get(configs[m].family, "")) for m in args.models}
    except RuntimeError as e:
        print(f"pixellm-compare: {e}", file=sys.stderr)
        return 1
    trivial = trivial_scores(sets, args)
    rows = []
    for m, final in finals.items():
        try:
            predictor = load_predictor(final)
        except CheckpointError as e:
            print(f"pixellm-compare: error: {e}", file=sys.stderr)
            return 2
        cost = compute_costs(m, args.sizes, repeats=args.repeats)
        train = training_stats(final.parent)
        for es in sets:
            print(f"compare: {m} on {es.name}", flush=True)
            rows.append(flat_row(m, quality_row(predictor, es, args), trivial[es.name], train, cost))
    meta = dict(device="cpu", dtype="float32", torch=torch.__version__.split("+")[0],
                device_name=device_name(torch.device("cpu")), commit=_commit(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"), data=str(args.data), time_budget=args.time_budget,
                family_args=extra,
                steps=args.steps, limit=args.limit, wall_minutes=(time.perf_counter() - start) / 60,
                command=" ".join(["pixellm-compare", *(sys.argv[1:] if argv is None else argv)]))
    report = dict(meta=meta, sizes=args.sizes, models=args.models, rows=rows, winners=split_winners(rows),
                  verdict=claim_verdict(rows, *claim_pair(configs)))
    paths = write_outputs(report, args.out)
    print(to_markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
