"""Compute per query, PixelLM vs LISA (the ``lisa-*`` configs): FLOPs, latency and peak memory.

FLOPs: every stage of one query (1 image, K targets, the answer the template needs; see
:class:`~pixellm.benchmarks.flop_utils.QueryBudget`) runs on the **meta** device under
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; attention is counted,
see :func:`~pixellm.benchmarks.flop_utils.attention_visible`). Decode is KV-cached; its FLOPs
are affine in the context length, so three counted steps give the exact sum over T - 1 steps.

Latency: the same stages on real tensors with random weights; medians after warm-up. On CPU the
tiny configs (float32); on CUDA the 7B configs in bf16 with peak memory and the decode
bandwidth limit (LLM weight bytes / memory bandwidth).

Writes ``flops_<device>_<dtype>_torch<version>.{json,md}`` and one stacked-bar PNG per
pipeline and size under ``--out``. Usage: ``pixellm-flops --sizes 7b 13b --targets 1 3 10``.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, SamModel

from pixellm.build import build_model
from pixellm.config import get_model_config
from pixellm.evaluate import markdown_table
from pixellm.lisa import build_sam
from pixellm.llm import build_causal_lm
from pixellm.vision import create_open_clip_visual

from .flop_utils import (
    LisaPipeline,
    Pipeline,
    PixelLMPipeline,
    QueryBudget,
    affine_sum,
    bandwidth_bytes_per_s,
    count_flops,
    decode_step,
    prefill,
    prompt_embeds,
    time_query,
)
from .machine import device_name

COMPONENTS = ("vision", "llm_prefill", "llm_decode", "target_proj", "mask_encoder", "mask_decoder")
# Independent measurements (docs/design.md, FLOPs), FLOPs with multiply-add = 2.
ANCHORS = {"SAM ViT-H encoder @1024": 5.96e12, "CLIP ViT-L/14 @336": 0.38e12,
           "LLaMA-7B prefill, 640 tokens": 8.67e12}


# -- building -------------------------------------------------------------------------------
PIPELINES = ("pixellm", "lisa")


def build_pipeline(kind: str, size: str, *, device: str | torch.device = "meta",
                   dtype: torch.dtype | None = None, sam_weights: str | None = None,
                   merged: bool | None = None) -> Pipeline:
    """The ``<kind>-<size>`` model config (kind "pixellm" or "lisa") as a pipeline; see
    :func:`config_pipeline`."""
    return config_pipeline(f"{kind}-{size}", device=device, dtype=dtype, sam_weights=sam_weights,
                           merged=merged)


def config_pipeline(name: str, *, device: str | torch.device = "meta",
                    dtype: torch.dtype | None = None, sam_weights: str | None = None,
                    merged: bool | None = None) -> Pipeline:
    """A registered model config as a pipeline in inference mode, random weights ("meta" needs
    no memory); a LISA one takes real SAM weights from a ``SamModel.save_pretrained``
    directory ``sam_weights``, and ``merged`` (None: the config's) counts one mask per answer."""
    cfg = get_model_config(name)
    with torch.device(device):  # "meta": shapes only, no memory, no weights
        model = build_model(cfg, load_weights=False, dtype=dtype)
        if cfg.family == "lisa" and sam_weights is not None:
            real = SamModel.from_pretrained(sam_weights, dtype=dtype)
            model.sam.load_state_dict(real.state_dict(), strict=True)
    # requires_grad off: FlopCounterMode's module tracker trips on grad-less views of params
    model.eval().requires_grad_(False)
    if cfg.family == "lisa":
        suffix = "-merged" if merged and not cfg.merge_targets else ""
        return LisaPipeline(model, name=cfg.name + suffix, merged=merged)
    return PixelLMPipeline(model, name=cfg.name)


# -- FLOPs ----------------------------------------------------------------------------------
def decode_cost(lm: nn.Module, past: DynamicCache, start: int) -> tuple[int, int]:
    """(FLOPs of the first cached decode step, growth per extra context token); ``past`` grows.

    Counts three steps and checks the second difference is 0 (only QK^T and AV grow).
    """
    token = torch.zeros(1, dtype=torch.long)
    f = [count_flops(lambda i=i: decode_step(lm, past, token, start + i))[1] for i in range(3)]
    if f[2] - f[1] != f[1] - f[0]:
        raise RuntimeError(f"decode FLOPs are not affine in the context length: {f}")
    return f[0], f[1] - f[0]


def count_query(pipe: Pipeline, budget: QueryBudget, ks: list[int]) -> list[dict]:
    """Per-component FLOPs of one query for each K in ``ks``, counted on the meta device.

    Returns:
        one row per K: pipeline, k, prompt_tokens, answer_tokens, flops {component: FLOPs}, total.
    """
    with torch.device("meta"):
        pixels = torch.empty(1, 3, pipe.image_size, pipe.image_size)
        (feats, image_tokens), f_vision = count_flops(lambda: pipe.encode_image(pixels))
        lm = pipe.causal_lm
        embeds = prompt_embeds(lm, image_tokens, budget)
        (_, _, past), f_prefill = count_flops(lambda: prefill(lm, embeds))
        first, slope = decode_cost(lm, past, embeds.shape[1])
        f_mask_enc = 0
        if pipe.mask_image_size:
            side = pipe.mask_image_size
            mask_pixels = torch.empty(1, 3, side, side)
            feats, f_mask_enc = count_flops(lambda: pipe.encode_mask_image(mask_pixels))
        rows = []
        for k in ks:
            t = budget.answer_tokens(k, pipe.block_len, merged=pipe.merged)
            masks = min(k, 1) if pipe.merged else k
            hidden = torch.empty(masks, pipe.block_len, lm.config.hidden_size)
            targets, f_proj = count_flops(partial(pipe.project_targets, hidden))
            _, f_dec = count_flops(partial(pipe.decode_masks, feats, targets))
            flops = dict(vision=f_vision, llm_prefill=f_prefill,
                         llm_decode=affine_sum(first, slope, t - 1),  # EOS is never fed back
                         target_proj=f_proj, mask_encoder=f_mask_enc, mask_decoder=f_dec)
            rows.append(dict(pipeline=pipe.name, k=k, prompt_tokens=embeds.shape[1],
                             block_len=pipe.block_len, answer_tokens=t, flops=flops,
                             total=sum(flops.values())))
    return rows


def flop_matrix(sizes: list[str], ks: list[int], budget: QueryBudget
                ) -> tuple[list[dict], list[dict]]:
    """(rows for both families x sizes x K, ratio rows PixelLM / LISA per size and K)."""
    rows, ratios = [], []
    for size in sizes:
        pixellm, lisa = (count_query(build_pipeline(kind, size), budget, ks) for kind in PIPELINES)
        rows += pixellm + lisa
        for a, b in zip(pixellm, lisa, strict=True):
            ratios.append(dict(size=size, k=a["k"], pixellm=a["total"], lisa=b["total"],
                               ratio=a["total"] / b["total"]))
    return rows, ratios


def anchor_flops() -> dict[str, int]:
    """FLOPs of the :data:`ANCHORS`, counted on meta (whole towers, as measured there)."""
    with torch.device("meta"):
        sam = build_sam(get_model_config("lisa-7b").sam, load_weights=False).eval().requires_grad_(False)
        clip = create_open_clip_visual(model_name="ViT-L-14-336", image_size=336).eval()
        llm_config = get_model_config("pixellm-7b").llm.config
        llama = build_causal_lm(name_or_path=None, config=llm_config).eval().requires_grad_(False)
        sam_pixels, clip_pixels = torch.empty(1, 3, 1024, 1024), torch.empty(1, 3, 336, 336)
        ids = torch.zeros(1, 640, dtype=torch.long)
        return {
            "SAM ViT-H encoder @1024": count_flops(lambda: sam.vision_encoder(sam_pixels))[1],
            "CLIP ViT-L/14 @336": count_flops(lambda: clip(clip_pixels))[1],
            # a full forward: logits for all 640 positions, as a plain prefill benchmark computes
            "LLaMA-7B prefill, 640 tokens": count_flops(lambda: llama(input_ids=ids).logits)[1],
        }


def check_anchors() -> list[dict]:
    """Each anchor: counted, reference, relative deviation."""
    return [dict(anchor=name, counted=f, reference=ANCHORS[name], deviation=f / ANCHORS[name] - 1)
            for name, f in anchor_flops().items()]


# -- latency --------------------------------------------------------------------------------
def latency(sizes: list[str], ks: list[int], budget: QueryBudget, *, device: torch.device,
            dtype: torch.dtype, repeats: int, warmup: int, bandwidth_tbs: float | None = None,
            sam_weights: str | None = None) -> list[dict]:
    """Latency rows per pipeline, size and K; on CUDA also peak memory and the decode bound.

    One pipeline is resident at a time, so each peak holds only its own weights.
    """
    rows, bw, cuda = [], bandwidth_bytes_per_s(device, bandwidth_tbs), device.type == "cuda"
    for size, kind in itertools.product(sizes, PIPELINES):
        weights = sam_weights if size != "tiny" else None  # real SAM weights are ViT-H shaped
        pipe = build_pipeline(kind, size, device=device, dtype=dtype, sam_weights=weights)
        weight_bytes = sum(p.numel() * p.element_size() for p in pipe.causal_lm.parameters())
        for k in ks:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            row = time_query(pipe, budget, k, device=device, repeats=repeats, warmup=warmup)
            row.update(pipeline=pipe.name, k=k, llm_weight_bytes=weight_bytes,
                       decode_bound_ms_per_token=weight_bytes / bw * 1e3 if bw else None,
                       peak_memory_bytes=torch.cuda.max_memory_allocated(device) if cuda else None)
            rows.append(row)
        del pipe
        gc.collect()  # drop this pipeline before the next one is built
        if cuda:
            torch.cuda.empty_cache()
    return rows


# -- outputs --------------------------------------------------------------------------------
def _tf(x: float) -> str:
    return f"{x / 1e12:.4f}"


def _budget_note(report: dict) -> str:
    b = report["budget"]
    return (f"FLOPs counted on the meta device with FlopCounterMode (multiply-add = 2), torch "
            f"{report['meta']['torch']}. One query: 1 image, K targets. Prompt = "
            f"{b['template_before']} + image tokens + {b['question']} question + "
            f"{b['template_after']} template tokens. Answer T = K x ({b['phrase']} phrase + block "
            f"+ {b['separator']} separator) + EOS; block = the L x N codebook tokens (PixelLM) or "
            "one [SEG] (LISA); T - 1 tokens are fed back with a KV cache (for latency, a codebook "
            "block is fed in one step, as pixellm.generation does). Values in TFLOPs.")


def to_markdown(report: dict) -> str:
    """The report as Markdown tables (FLOPs in TFLOPs, times in ms)."""
    flops = [[r["pipeline"], r["k"], r["prompt_tokens"], r["block_len"], r["answer_tokens"],
              *(_tf(r["flops"][c]) for c in COMPONENTS), _tf(r["total"])] for r in report["flops"]]
    ratios = [[r["size"], r["k"], _tf(r["pixellm"]), _tf(r["lisa"]), f"{r['ratio']:.3f}"]
              for r in report["ratios"]]
    anchors = [[a["anchor"], _tf(a["counted"]), _tf(a["reference"]), f"{a['deviation']:+.2%}"]
               for a in report["anchors"]]
    lines = ["# Compute per query: PixelLM vs LISA (SAM ViT-H at real scale)", "", _budget_note(report), "",
             *markdown_table(["pipeline", "K", "prompt", "block", "T", *COMPONENTS, "total"], flops), "",
             "## PixelLM / LISA, TFLOPs per query", "",
             *markdown_table(["size", "K", "PixelLM", "LISA", "ratio"], ratios), "",
             "## Anchors (docs/design.md, FLOPs), TFLOPs", "",
             *markdown_table(["anchor", "counted", "reference", "deviation"], anchors)]
    if report["latency"]:
        lines += ["", *_latency_markdown(report)]
    return "\n".join(lines) + "\n"


def _latency_markdown(report: dict) -> list[str]:
    """Latency table: medians in ms, decode bound and peak memory where known."""
    rows = []
    for r in report["latency"]:
        bound, peak = r["decode_bound_ms_per_token"], r["peak_memory_bytes"]
        rows.append([r["pipeline"], r["k"], *(f"{r['ms'][c]:.2f}" for c in COMPONENTS),
                     f"{r['total_ms']:.2f}", f"{r['decode_ms_per_token']:.3f}",
                     "-" if bound is None else f"{bound:.3f}",
                     "-" if peak is None else f"{peak / 2**20:.0f}"])
    meta = report["meta"]
    header = ["pipeline", "K", *COMPONENTS, "total", "decode ms/token", "bound ms/token",
              "peak MiB"]
    return [f"## Latency, {meta['device_name']} ({meta['dtype']}), median ms", "",
            *markdown_table(header, rows)]


def plot_stacked(rows: list[dict], path: Path, *, ymax: float) -> None:
    """Stacked TFLOPs per component (bars: K) for one pipeline."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels, bottom = [str(r["k"]) for r in rows], [0.0] * len(rows)
    for comp in COMPONENTS:
        vals = [r["flops"][comp] / 1e12 for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=comp)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set(title=f"{rows[0]['pipeline']}: TFLOPs per query", xlabel="targets K",
           ylabel="TFLOPs", ylim=(0, ymax * 1.05))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside the bars
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(report: dict, out: Path, stem: str) -> list[Path]:
    """JSON, Markdown and one PNG per pipeline (same y scale per size) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(to_markdown(report))
    for name in dict.fromkeys(r["pipeline"] for r in report["flops"]):
        rows = [r for r in report["flops"] if r["pipeline"] == name]
        size = name.split("-")[-1]
        ymax = max(r["total"] for r in report["flops"] if r["pipeline"].endswith(f"-{size}"))
        paths.append(out / f"{stem}_{name}.png")
        plot_stacked(rows, paths[-1], ymax=ymax / 1e12)
    return paths


# -- CLI ------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-flops", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--sizes", nargs="+", default=["7b", "13b"],
                   help="pixellm-<size> configs to count")
    p.add_argument("--targets", nargs="+", type=int, default=[1, 3, 10], help="K values")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--latency-sizes", nargs="+", default=None,
                   help="configs to time (default: 7b on CUDA in bf16, tiny on CPU in float32)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--bandwidth-tbs", type=float, default=None,
                   help="memory bandwidth for the decode bound, TB/s (default: from the device)")
    p.add_argument("--sam-weights", default=None,
                   help="SamModel.save_pretrained directory (ViT-H) for the timed LISA pipeline")
    return p


def _meta(device: torch.device, dtype: torch.dtype, argv: list[str] | None, flops_s: float) -> dict:
    """Provenance of the report: versions, device, command, FLOP-counting wall time."""
    return dict(torch=torch.__version__.split("+")[0], device=device.type,
                dtype=str(dtype).removeprefix("torch."), device_name=device_name(device),
                flops_wall_s=round(flops_s, 1),
                command=" ".join(["pixellm-flops", *(sys.argv[1:] if argv is None else argv)]))


def main(argv: list[str] | None = None) -> int:
    """Count, time, write JSON/Markdown/PNG and print the Markdown. Returns 0."""
    args = _parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32  # bf16 on GPU as deployed
    budget, start = QueryBudget(), time.perf_counter()
    rows, ratios = flop_matrix(args.sizes, args.targets, budget)
    anchors = check_anchors()
    meta = _meta(device, dtype, argv, time.perf_counter() - start)
    lat = []
    if args.latency:
        lat = latency(args.latency_sizes or (["7b"] if cuda else ["tiny"]), args.targets, budget,
                      device=device, dtype=dtype, repeats=args.repeats, warmup=args.warmup,
                      bandwidth_tbs=args.bandwidth_tbs, sam_weights=args.sam_weights)
    report = dict(meta=meta, budget=budget.to_dict(), flops=rows, ratios=ratios, anchors=anchors,
                  latency=lat)
    stem = f"flops_{meta['device']}_{meta['dtype']}_torch{meta['torch']}"
    paths = write_outputs(report, args.out, stem)
    print(to_markdown(report))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
