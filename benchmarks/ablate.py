"""``pixellm-ablate``: the LSeg, LTS and DynRefer ablations, each variant trained with the same
command and budget, then scored on the same splits.

- ``--family lseg``: spatial regularisation depth 0 / 1 / 2 / 4 (the paper's unexplained
  collapse at 4 blocks), scored as seen / unseen-composition / unseen-word mIoU with binary
  ``["other", label]`` sets (:mod:`pixellm.lseg.evaluate`);
- ``--family lts``: with and without the position prior (the paper's central claim), scored on
  the multi-referring split: order-aligned and set gIoU / cIoU (:mod:`pixellm.lts.evaluate`);
- ``--family dynrefer``: random multi-view vs a fixed single view, and multi-task vs
  captioning alone (the paper's lines 1-13 in miniature), and without the box token; each
  multi-view model read with its configured, pHash-selected and random views at inference;
  scored on the regions files
  (:mod:`pixellm.dynrefer.evaluate`).

Variants are the family's tiny config with some fields changed, written as JSON beside their run
(``RUNS/<variant>/``); an existing run is reused. Writes
``ablation_<family>_<device>_<dtype>_torch<ver>.{json,md}`` under ``--out``.

Usage::

    pixellm-ablate --family lseg --time-budget 5     # 4 runs of 5 minutes, then scoring
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from pixellm.checkpoint import from_pretrained
from pixellm.config import add_model_config, get_model_config
from pixellm.errors import CheckpointError, ConfigError, InputError

from .machine import device_name

# family -> (default base config, what varies, [(variant suffix, config overrides)])
VARIANTS = {
    "lseg": ("lseg-tiny", "reg_blocks", [(f"reg-blocks-{v}", {"reg_blocks": v}) for v in (0, 1, 2, 4)]),
    "lts": ("lts-tiny", "use_prior", [(f"use-prior-{str(v).lower()}", {"use_prior": v}) for v in (True, False)]),
    "dynrefer": ("dynrefer-tiny", "views and tasks", [
        ("multi-view-multi-task", {}),
        ("single-view", {"views": {"num_views": 1, "fixed": []}}),
        ("single-task", {"loss": {"tasks": ["caption"]}}),
        ("no-box-token", {"box_embedding": False})]),
}
SPLITS = {"lseg": ["val", "test"], "lts": ["multi_ref"], "dynrefer": ["val"]}
# a fresh-seed dataset has test images only
FRESH_SPLITS = {"lseg": ["test"], "lts": ["multi_ref"], "dynrefer": ["test"]}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-ablate", description=__doc__.split("\n")[0])
    p.add_argument("--family", choices=sorted(VARIANTS), required=True)
    p.add_argument("--base", default=None, help="the config varied: a registered name or a JSON path "
                                                "(default: lseg-tiny / lts-tiny / dynrefer-tiny)")
    p.add_argument("--runs", type=Path, default=Path("checkpoints/ablation"))
    p.add_argument("--data", type=Path, default=Path("data/shapes"))
    p.add_argument("--fresh-data", type=Path, default=None, help="fresh-seed dataset, scored too")
    p.add_argument("--splits", nargs="+", default=None, help="default: lseg val test; lts multi_ref; dynrefer val")
    p.add_argument("--time-budget", type=float, default=5.0, help="training minutes per variant")
    p.add_argument("--steps", type=int, default=8000, help="step cap per variant")
    p.add_argument("--train-args", default="", help="more pixellm-train arguments, the same for every variant")
    p.add_argument("--limit", type=int, default=0, help="images (lseg) / questions (lts) per split (0: all)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--no-progress", action="store_true")
    return p


def variant_configs(family: str, runs: Path, base: str | None = None) -> dict[str, Path]:
    """variant name -> its config JSON (written under ``runs``): ``base`` (default the
    family's tiny config) with each variant's overrides (nested sections updated)."""
    default, _, variants = VARIANTS[family]
    base = base or default
    if base.endswith(".json"):
        base = add_model_config(base)
    if get_model_config(base).family != family:
        raise ConfigError(f"--base {base} is not a {family} config")
    out = {}
    for suffix, overrides in variants:
        d = get_model_config(base).to_dict()
        for key, value in overrides.items():
            d[key] = {**d[key], **value} if isinstance(value, dict) else value
        name = f"{base}-{suffix}"
        d["name"] = name
        path = runs / name / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(d, indent=2))
        out[name] = path
    return out


def train_variant(name: str, config: Path, args: argparse.Namespace) -> Path:
    """The final checkpoint of a variant, trained first when missing."""
    run = args.runs / name
    final = run / "final"
    if (final / "config.json").is_file():
        print(f"ablate: reusing {final}", flush=True)
        return final
    from pixellm.train.main import main as train_main

    argv = ["--model", str(config), "--shapes-root", str(args.data), "--out", str(run), "--steps", str(args.steps),
            "--time-budget", str(args.time_budget), "--eval-split", "", *shlex.split(args.train_args),
            *(("--no-progress",) if args.no_progress else ())]
    print(f"ablate: pixellm-train {shlex.join(argv)}", flush=True)
    if train_main(argv) != 0:
        raise RuntimeError(f"training {name} failed")
    return final


def score(family: str, final: Path, root: Path, split: str, args: argparse.Namespace) -> list[dict]:
    """One variant on one split: LSeg's mIoU groups, LTS's aligned / set scores, DynRefer's
    caption / tag / attribute / recognition scores (one row per view mode at inference)."""
    progress = not args.no_progress
    if family == "dynrefer":
        return score_dynrefer(final, root, split, args)
    if family == "lseg":
        from pixellm.lseg.evaluate import evaluate_split

        r = evaluate_split(from_pretrained(final), root, split, limit=args.limit, progress=progress,
                           train_root=args.data)
        out = {g: v["miou"] for g, v in r["groups"].items()}
        seen = r["groups"].get("seen", {}).get("by_kind", {})
        return [out | {f"seen {k}": v for k, v in seen.items()}]
    from pixellm.lts import LTSPredictor
    from pixellm.lts.evaluate import evaluate_expressions
    from pixellm.muse import load_split

    r = evaluate_expressions(LTSPredictor.from_pretrained(final), load_split(root, split), limit=args.limit,
                             progress=progress)
    return [{"aligned gIoU": r["aligned"]["giou"], "aligned cIoU": r["aligned"]["ciou"],
             "set gIoU": r["all"]["giou"], "set cIoU": r["all"]["ciou"], "expressions": r["n_expressions"]}]


def score_dynrefer(final: Path, root: Path, split: str, args: argparse.Namespace) -> list[dict]:
    """The config's view modes, then (multi-view models) pHash-selected and random views at
    inference for both captions and attributes (a mode the config already uses is not repeated)."""
    from pixellm.dynrefer import DynReferPredictor
    from pixellm.dynrefer.evaluate import COLUMNS, evaluate_regions

    model = from_pretrained(final)
    modes = [None] + (["phash", "random"] if model.config.views.num_views > 1 else [])
    rows, seen = [], set()
    for mode in modes:
        pred = DynReferPredictor(model, caption_views=mode, attribute_views=mode)
        key = tuple(pred.modes.values())
        if key in seen:
            continue
        seen.add(key)
        r = evaluate_regions(pred, root / f"regions_{split}.json", limit=args.limit or 600,
                             progress=not args.no_progress)
        rows.append({"views": f"{pred.modes['caption']} / {pred.modes['attributes']}",
                     **{c: r[c] for c in COLUMNS}, "regions": r["regions"]})
    return rows


def to_markdown(report: dict) -> str:
    from pixellm.evaluate import markdown_table

    m, rows = report["meta"], report["rows"]
    keys = [k for k in rows[0] if k not in ("variant", "split", "data", "steps", "train_seconds")]
    text = [k for k in keys if isinstance(rows[0][k], str)]  # e.g. DynRefer's view modes
    keys = text + [k for k in keys if k not in text]

    def cell(v):
        return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else str(v)

    lines = [f"# {m['family']} ablation: {m['field']}", "",
             f"Each variant: `pixellm-train` with a {m['time_budget']}-minute budget (at most {m['steps']} steps) "
             f"on {m['data']}. Device: {m['device_name']}; torch {m['torch']}; {m['date']}; wall time "
             f"{m['wall_minutes']:.1f} min. Command: `{m['command']}`.", ""]
    lines += markdown_table(["variant", "data", "split", *text, "steps", *keys[len(text):]],
                            [[r["variant"], r["data"], r["split"], *(cell(r[k]) for k in text), r["steps"],
                              *(cell(r[k]) for k in keys[len(text):])] for r in rows], left=3 + len(text))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = args.splits or SPLITS[args.family]
    try:
        configs = variant_configs(args.family, args.runs, args.base)
        finals = {n: train_variant(n, c, args) for n, c in configs.items()}
        rows = []
        for name, final in finals.items():
            hist = json.loads((final.parent / "history.json").read_text())
            for label, root in (("data", args.data), ("fresh", args.fresh_data)):
                if root is None:
                    continue
                for split in splits if label == "data" else FRESH_SPLITS[args.family]:
                    print(f"ablate: {name} on {label} {split}", flush=True)
                    rows += [{"variant": name, "data": label, "split": split, "steps": len(hist), **r}
                             for r in score(args.family, final, root, split, args)]
    except (ConfigError, InputError, CheckpointError) as e:
        print(f"pixellm-ablate: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"pixellm-ablate: {e}", file=sys.stderr)
        return 1
    default, field, _ = VARIANTS[args.family]
    base = args.base or default
    meta = dict(family=args.family, field=field, base=base, time_budget=args.time_budget, steps=args.steps,
                data=str(args.data), device_name=device_name(torch.device("cpu")),
                torch=torch.__version__.split("+")[0], date=time.strftime("%Y-%m-%d %H:%M:%S"),
                wall_minutes=(time.perf_counter() - start) / 60,
                command=" ".join(["pixellm-ablate", *(sys.argv[1:] if argv is None else argv)]))
    report = {"meta": meta, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"ablation_{args.family}_cpu_float32_torch{meta['torch']}"  # no with_suffix: "2.14.1"
    from .report import _clean

    (args.out / f"{stem}.json").write_text(json.dumps(_clean(report), indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"wrote {args.out / stem}.json, {args.out / stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
