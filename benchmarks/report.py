"""``pixellm-bench`` outputs: JSON per split, a summary JSON, Markdown, and PNG plots.

File names carry model, split, device, dtype and torch version, e.g.
``bench_pixellm-tiny_shapes-val_cpu_float32_torch2.14.1.json``.
"""
from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

from pixellm.evaluate import markdown_table

from .baselines import LABELS

METRICS = ("giou", "ciou", "count_acc", "precision50", "recall50")
HEADER = ["gIoU", "cIoU", "count acc", "P@0.5", "R@0.5"]
GEN_LABEL = "PixelLM, generated answer"
TF_LABEL = "PixelLM, teacher-forced (LISA: per mask, order-aligned)"


# -- names and numbers ----------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def stems(meta: dict) -> tuple[str, str]:
    """(model part, device/dtype/torch part) of every output file name."""
    return _safe(meta["model"]), f"{meta['device']}_{meta['dtype']}_torch{meta['torch']}"


def _f(x, digits: int = 3) -> str:
    """A number for a table; "–" for missing or undefined (NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _clean(obj):
    """NaN -> None recursively, so the JSON is strict (jq, browsers)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


# -- Markdown -------------------------------------------------------------------------------
def all_sets(report: dict) -> list[dict]:
    """The split results of the report, the fresh-seed ones last."""
    return report["sets"] + (report["fresh"]["sets"] if report.get("fresh") else [])


def verdict(report: dict) -> str:
    """The one statement of the wide-margin rule: on how many splits the model (generated
    answers) beats the best trivial answer by the margin in both gIoU and cIoU."""
    sets, margin = report["sets"], report["meta"]["margin"]
    misses = [r["name"] for r in sets if not r["comparison"]["beats_all_by_margin"]]
    text = (f"**The model beats the best trivial answer by >= {margin:.2f} gIoU and cIoU on "
            f"{len(sets) - len(misses)} of {len(sets)} splits**")
    if report.get("fresh"):
        fresh = report["fresh"]["sets"]
        wins = sum(r["comparison"]["beats_all_by_margin"] for r in fresh)
        text += f" (and on {wins} of {len(fresh)} fresh-seed {report['fresh']['seed']} splits)"
    return text + (f"; not on: {', '.join(misses)}." if misses else ".")


def _summary_rows(report: dict) -> list[list]:
    rows = []
    for r in report["sets"]:
        g, c, tf = r["generation"]["all"], r["comparison"], r["teacher_forced"] or {}
        rows.append([r["name"], r["n"], _f(g["giou"]), _f(g["ciou"]), _f(tf.get("giou")),
                     _f(tf.get("ciou")), f"{_f(c['best_giou'])} ({c['best_giou_baseline']})",
                     f"{_f(c['best_ciou'])} ({c['best_ciou_baseline']})", _f(c["lead_giou"]),
                     _f(c["lead_ciou"]), "yes" if c["beats_all_by_margin"] else "**no**"])
    return rows


def _method_rows(r: dict, part: str) -> list[tuple[str, dict | None]]:
    """(label, metrics) of the model and each baseline on "all" or "zero_target" questions."""
    rows = [(GEN_LABEL, r["generation"][part])]
    if part == "all" and r["teacher_forced"]:
        rows.append((TF_LABEL, r["teacher_forced"]))
    return rows + [(LABELS[k], v[part]) for k, v in r["baselines"].items()]


def _metric_table(r: dict, part: str) -> list[str]:
    rows = [[label, *(_f(m.get(k)) for k in METRICS)] for label, m in _method_rows(r, part) if m]
    return markdown_table(["method", *HEADER], rows)


def _by_k_table(r: dict) -> list[str]:
    n_by_k = r["generation"]["all"]["n_by_k"]
    ks = list(n_by_k)
    rows = [["questions", *(n_by_k[k] for k in ks)]]
    for label, m in _method_rows(r, "all"):
        rows.append([label, *(_f(m["giou_by_k"].get(k)) for k in ks)])
    return markdown_table(["gIoU by number of targets K", *(f"K={k}" for k in ks)], rows)


def _confidence_line(gen: dict) -> str:
    """Score AUROC / ECE and the zero-target rate of one split, in words."""
    sc, rate = gen["score"], gen["zero_target_rate"]
    text = (f"Target scores vs hits (a kept target Hungarian-matched at IoU >= 0.5): AUROC "
            f"{_f(sc['auroc'])}, ECE {_f(sc['ece'])} (10 bins) over {sc['n']} kept targets, "
            f"{sc['n_hits']} hits" + (f" ({sc['note']})" if sc.get("note") else ""))
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return text + "; no zero-target question."
    return text + (f"; {_f(rate)} of the {gen['n_zero_target']} zero-target questions are "
                   "answered with no mask.")


def _confidence_table(report: dict) -> list[str]:
    """Per split: score AUROC / ECE over the kept targets and the zero-target rate."""
    rows = [[r["name"], g["score"]["n"], g["score"]["n_hits"], _f(g["score"]["auroc"]),
             _f(g["score"]["ece"]), f"{_f(g['zero_target_rate'])} ({g['n_zero_target']})"]
            for r in all_sets(report) for g in [r["generation"]]]
    header = ["split", "kept targets", "hits", "score AUROC", "score ECE", "zero-target rate (n)"]
    fitted = report["meta"].get("score_calibration")
    where = (f" The scores are calibrated on {fitted}: ECE on that split is in-sample, the other "
             "splits measure it." if fitted else " The scores are the raw predicted IoU (no "
             "score calibration in the checkpoint).")
    return ["Per-target confidence (the predictor's score; a hit is a kept target matched to a "
            "true one at IoU >= 0.5; AUROC – when all are hits or all misses) and the share of "
            "zero-target questions answered with no mask." + where, "", *markdown_table(header, rows)]


def fresh_markdown(report: dict) -> list[str]:
    """The fresh-seed table: scores, the gap to val and the wide-margin test per split."""
    fresh = report["fresh"]
    rows = []
    for r in fresh["sets"]:
        g, c, gap = r["generation"]["all"], r["comparison"], r["gap_to_val"] or {}
        rows.append([r["name"], r["n"], _f(g["giou"]), _f(g["ciou"]), _f(gap.get("giou")),
                     _f(gap.get("ciou")), _f(c["lead_giou"]), _f(c["lead_ciou"]),
                     "yes" if c["beats_all_by_margin"] else "**no**"])
    ref = fresh["val"] or "no val split benched"
    header = ["split", "n", "gIoU", "cIoU", "gIoU − val", "cIoU − val", "lead gIoU", "lead cIoU",
              "wide margin"]
    return [f"## Fresh seed {fresh['seed']}", "",
            f"Scenes generated with seed {fresh['seed']} (`{fresh['data']}`), never trained on nor "
            f"used to pick the checkpoint; gaps are to {ref}, generated answers.", "",
            *markdown_table(header, rows), ""]


def _set_section(r: dict, files: dict[str, str]) -> list[str]:
    gen, tf = r["generation"], r["teacher_forced"]
    named, text = gen.get("target_phrase_acc"), gen.get("phrase_giou")
    lines = [f"## {r['name']}", "", f"{r['n']} questions; generation {_f(gen['queries_per_s'], 1)} "
             f"queries/s" + (f"; {_f(named)} of the answers name exactly the true targets" if named is not None
                             else "")
             + (f"; the answers' text alone, each named phrase taken as a perfect mask of its object, "
                f"scores gIoU {_f(text)} (phrase gIoU)" if text is not None else "") + ".",
             "", *_metric_table(r, "all"), "", *_by_k_table(r), "", _confidence_line(gen), ""]
    notes = []
    if gen["n_failed"]:
        notes.append(f"{gen['n_failed']} question(s) rejected by the predictor, scored as empty "
                     f"answers (first: {gen['failures'][0]})")
    if gen.get("duplicate_iou") is not None and gen.get("with_duplicates"):
        raw = gen["with_duplicates"]
        notes.append(f"duplicate suppression dropped {gen['n_duplicates']} mask(s) that repeated a "
                     f"higher-scoring target's (IoU > {_f(gen.get('duplicate_iou'), 2)}); keeping every block's mask "
                     f"scores gIoU {_f(raw['giou'])} / cIoU {_f(raw['ciou'])}")
    if gen["n_malformed"]:
        notes.append(f"{gen['n_malformed']} generated answer(s) had a broken codebook block (dropped)")
    if tf:
        notes.append(f"teacher-forced: {tf['n_questions']} questions / {tf['n_masks']} masks scored; "
                     f"{tf['n_zero_target']} zero-target questions have no mask to align; "
                     f"{tf['n_skipped']} skipped (too long for the context)")
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    zero = gen["zero_target"]
    if zero:
        lines += [f"Zero-target questions only ({zero['n_questions']}; gIoU = share answered with "
                  "no mask; the teacher-forced pass has nothing to align here):", "",
                  *_metric_table(r, "zero_target"), ""]
    alt = {"giou_by_k": "gIoU by number of targets", "examples": "example overlays"}
    return lines + [f"![{alt[kind]}]({name})" for kind, name in files.items()] + [""]


def ablation_markdown(ab: dict) -> list[str]:
    """The ablation table: one row per variant, gIoU/cIoU leads over the default."""
    rows = []
    for r in ab["rows"]:
        t = r["train"] or {}
        rows.append([r["variant"], r["description"], " ".join(r["flags"]) or "–",
                     *(_f(r["all"][k]) for k in METRICS), _f(r.get("delta_giou")),
                     _f(r.get("delta_ciou")), _f(t.get("train_samples_per_s"), 1),
                     t.get("steps") or "–"])
    header = ["variant", "what", "flags", *HEADER, "Δ gIoU", "Δ cIoU", "train samples/s", "steps"]
    lines = [f"## Ablation ({ab['split']}, generated answers, same seed and budget)", "",
             f"Training arguments: `{' '.join(ab['train_args']) or '(pixellm-train defaults)'}`; "
             f"runs in `{ab['runs']}`.", "", *markdown_table(header, rows, left=3)]
    return lines + (["", f"**Warning:** {ab['note']}"] if ab["note"] else [])


def _throughput(report: dict) -> list[str]:
    t, meta = report["training"], report["meta"]
    train = ("training: no history.json / eval.json next to the checkpoint" if not t else
             f"training: {_f(t['train_samples_per_s'], 1)} samples/s"
             + (f" ({_f(t['train_questions_per_s'], 1)} questions/s)" if t.get("train_questions_per_s") else "")
             + f" over {t['steps']} steps"
             + (f" ({t['train_seconds'] / 60:.1f} min)" if t.get("train_seconds") else "")
             + f" (from {', '.join(Path(s).name for s in t['source'])})")
    rows = [[r["name"], _f(r["generation"]["queries_per_s"], 1),
             _f((r["teacher_forced"] or {}).get("queries_per_s"), 1)] for r in all_sets(report)]
    return ["## Throughput", "", f"- {train}",
            f"- evaluation on {meta['device_name']} ({meta['dtype']}, batch {meta['batch_size']}):",
            "", *markdown_table(["split", "generation queries/s", "teacher-forced queries/s"], rows)]


def to_markdown(report: dict, files: dict[str, dict[str, str]] | None = None) -> str:
    """The whole report (``files``: split -> {kind: PNG file name} to embed)."""
    meta, files = report["meta"], files or {}
    header = ["split", "n", "gIoU", "cIoU", "TF gIoU", "TF cIoU", "best baseline gIoU",
              "best baseline cIoU", "lead gIoU", "lead cIoU", "wide margin"]
    lines = [f"# Benchmark: {meta['model']}", "",
             f"Checkpoint `{meta['checkpoint']}`; {meta['device_name']}, {meta['dtype']}, torch "
             f"{meta['torch']}; limit {meta['limit'] or 'none'}; baseline seed {meta['seed']}; "
             f"{meta['date']}. Command: `{meta['command']}`.", "", verdict(report), "",
             "Generated answers (docs/design.md, Metrics: Hungarian matching, unmatched masks count) vs the best "
             "trivial baseline per metric; TF = teacher-forced (LISA protocol), for reference.", "",
             *markdown_table(header, _summary_rows(report)), ""]
    if report.get("fresh"):
        lines += fresh_markdown(report)
    lines += [*_confidence_table(report), "", *_throughput(report), ""]
    for r in all_sets(report):
        lines += _set_section(r, files.get(r["name"], {}))
    if report["ablation"]:
        lines += ablation_markdown(report["ablation"])
    return "\n".join(lines) + "\n"


# -- plots ----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_giou_by_k(r: dict, path: Path) -> None:
    """gIoU per number of targets K: model (generated, teacher-forced) vs the baselines."""
    plt = _pyplot()
    ks = list(r["generation"]["all"]["n_by_k"])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, m in _method_rows(r, "all"):
        ys = [m["giou_by_k"].get(k, float("nan")) for k in ks]
        model = label in (GEN_LABEL, TF_LABEL)
        ax.plot(ks, ys, marker="o", lw=2.2 if model else 1.2, ls="--" if label == TF_LABEL else "-",
                label=label.split(" (")[0])
    ax.set(title=f"{r['name']}: gIoU by number of targets", xlabel="targets K", ylabel="gIoU",
           ylim=(0, 1.05))
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pick_examples(examples: list, n: int) -> list:
    """Up to ``n`` (sample, prediction) pairs, one per target count first (variety), then in order."""
    seen, first, rest = set(), [], []
    for s, p in examples:
        (rest if s.num_targets in seen else first).append((s, p))
        seen.add(s.num_targets)
    return (first + rest)[:n]


def _wrap(text: str, width: int = 40) -> str:
    """At most 3 lines of ``width``; placeholders dropped, no space before punctuation."""
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.replace("{seg}", "").split()))
    return "\n".join(textwrap.wrap(text, width)[:3])


def plot_examples(examples: list, path: Path, title: str) -> None:
    """Rows of [image | ground-truth masks | predicted masks] with question and answers."""
    import numpy as np

    from pixellm.overlay import draw_overlay

    plt = _pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.7 * len(examples)), squeeze=False)
    for row, (s, p) in zip(axes, examples, strict=True):
        rgb = s.load_image()
        gt = draw_overlay(rgb, list(s.masks()), [ph[:16] for ph in s.phrases], min_side=128)
        pred = draw_overlay(rgb, [t.mask for t in p.targets], [t.phrase[:16] for t in p.targets],
                            min_side=128)
        texts = [f"Q: {s.question}", f"GT ({s.num_targets}): {s.answer}",
                 f"PixelLM ({len(p.targets)}): {p.answer}"]
        for ax, img, text in zip(row, (rgb, np.asarray(gt), np.asarray(pred)), texts, strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(_wrap(text), fontsize=7)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the suptitle
    fig.savefig(path, dpi=80)
    plt.close(fig)


# -- files ----------------------------------------------------------------------------------
def _write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(_clean(obj), indent=2, default=str) + "\n")
    return path


def _set_files(r: dict, examples: list, out: Path, stem: str, n_examples: int) -> tuple[list, dict]:
    """One split's JSON and PNGs; returns (paths, {kind: PNG name} for the Markdown)."""
    paths, pngs = [], {}
    paths.append(out / f"{stem}_giou_by_k.png")
    plot_giou_by_k(r, paths[-1])
    pngs["giou_by_k"] = paths[-1].name
    chosen = pick_examples(examples, n_examples)
    if chosen:
        paths.append(out / f"{stem}_examples.png")
        plot_examples(chosen, paths[-1], f"{r['name']}: ground truth vs generated answer")
        pngs["examples"] = paths[-1].name
    return paths, pngs


def write_outputs(report: dict, examples: dict[str, list], out: Path,
                  n_examples: int = 6) -> list[Path]:
    """Everything under ``out`` (created); the ablation table also next to its runs.

    Returns:
        the written paths.
    """
    out.mkdir(parents=True, exist_ok=True)
    model, tag = stems(report["meta"])
    paths, files = [], {}
    for r in all_sets(report):
        stem = f"bench_{model}_{_safe(r['name'])}_{tag}"
        paths.append(_write_json(out / f"{stem}.json", {"meta": report["meta"], **r}))
        new, files[r["name"]] = _set_files(r, examples.get(r["name"], []), out, stem, n_examples)
        paths += new
    paths.append(_write_json(out / f"bench_{model}_{tag}.json", report))
    paths.append(out / f"bench_{model}_{tag}.md")
    paths[-1].write_text(to_markdown(report, files))
    if report["ablation"]:
        paths += _write_ablation(report, out / f"ablation_{model}_{_safe(report['ablation']['split'])}_{tag}")
    return paths


def _write_ablation(report: dict, stem: Path) -> list[Path]:
    ab = report["ablation"]
    md = "\n".join([f"# Ablation: {report['meta']['model']}", "", *ablation_markdown(ab)]) + "\n"
    runs = Path(ab["runs"])
    runs.mkdir(parents=True, exist_ok=True)
    paths = []
    for base in (stem, runs / "ablation"):
        paths.append(_write_json(base.with_name(base.name + ".json"), {"meta": report["meta"], **ab}))
        paths.append(base.with_name(base.name + ".md"))
        paths[-1].write_text(md)
    return paths
