"""Command-line arguments of ``pixellm-train``."""
from __future__ import annotations

import argparse

from .mixture import ENV_MUSE, ENV_REFCOCO


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-train", description="Train a PixelLM model (runs under accelerate launch / torchrun).")
    p.add_argument("--model", default="pixellm-tiny", help="registered config name or a config JSON path")
    p.add_argument("--out", default="checkpoints/pixellm-tiny", help="run directory (checkpoints, logs, final model)")
    p.add_argument("--mix", default="shapes=1", help='sources and rates, e.g. "shapes=2,refcoco=9,muse=4"')
    p.add_argument("--shapes-root", default="data/shapes", help="generated dataset (pixellm-data --out)")
    p.add_argument("--muse-root", default=None, help=f"real MUSE root (or ${ENV_MUSE})")
    p.add_argument("--refcoco-root", default=None, help=f"refCOCO root (or ${ENV_REFCOCO})")
    p.add_argument("--multiref-root", default=None, help=f"refCOCO root for multi-referring (or ${ENV_REFCOCO})")
    p.add_argument("--lenient-data", action="store_true", help="skip malformed records (counted and reported)")
    p.add_argument("--steps", type=int, default=3500, help="optimizer steps; with --time-budget an upper bound, the run being sized from its measured pace")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MIN",
                   help="wall-clock minutes for the optimizer steps (0: off); if --steps would not fit at "
                        "the pace timed from warm-up on (checked again as the run goes), the run is "
                        "shortened and its lr decay ends at the new end (see pixellm.train.budget)")
    p.add_argument("--vision-warmup", type=int, default=0, metavar="STEPS",
                   help="first train the vision tower alone to name the objects under the training "
                        "targets' masks, for STEPS steps (needs a region-words head; counts against "
                        "--time-budget; see pixellm.train.warmup and the README). 0: off")
    p.add_argument("--vision-warmup-batch", type=int, default=16, help="images per process per warm-up step")
    p.add_argument("--vision-warmup-lr", type=float, default=2e-3, help="peak learning rate of the warm-up")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch per process (sequences; each holds up to --turns questions)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--turns", type=int, default=3,
                   help="pack up to N questions of one image into one multi-turn sequence (1: one question per sequence)")
    p.add_argument("--bucket-batches", type=int, default=8,
                   help="sort each run of N global batches by length to cut padding (1: off)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head-lr-mult", type=float, default=1.0,
                   help="learning-rate multiplier of the mask head (codebook fusion + pixel decoder)")
    p.add_argument("--vision-lr-mult", type=float, default=1.0,
                   help="learning-rate multiplier of the vision tower")
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.95))
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-lr-ratio", type=float, default=0.05, help="final lr as a fraction of --lr (linear decay)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--save-every", type=int, default=250, help="checkpoint every K steps (and at the end)")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--eval-split", default="val", help="split evaluated after training ('' to skip)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate at most N questions (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")
    # variants (ablations)
    p.add_argument("--no-refine", action="store_true", help="disable the target-refinement loss")
    p.add_argument("--tokens-per-scale", type=int, default=None, help="override codebook N")
    p.add_argument("--fusion", choices=["linear", "mean"], default=None, help="override codebook fusion")
    p.add_argument("--phrase-weight", type=float, default=None,
                   help="override the phrase-reconstruction loss weight (0: off; see codebook.PhraseHead)")
    p.add_argument("--region-weight", type=float, default=None,
                   help="override the region-words loss weight (0: off; see codebook.RegionWordHead)")
    p.add_argument("--block-ce", choices=["first", "all"], default=None,
                   help="override which codebook tokens the text CE scores (see LossConfig.block_ce)")
    return p
