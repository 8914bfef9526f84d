"""Training runs seen from the benchmark: their throughput, and the ablation variants.

The ablation trains each variant with ``pixellm.train.main.main`` in-process, on the default
model's own config (``<checkpoint>/config.json``) and the same training arguments (seed,
steps, batch...), changing one thing each:

- ``no_refine``: no target-refinement loss (``--no-refine``);
- ``n1``: N = 1 codebook token per scale instead of 3 (``--tokens-per-scale 1``);
- ``fusion_mean``: the learned per-scale fusion replaced by a plain mean (``--fusion mean``);
- ``no_phrase``: no phrase-reconstruction loss on the fused embeddings (``--phrase-weight 0``);
- ``no_region``: no region-words loss on the vision patches, and so no vision warm-up
  (which trains that loss's head) if the default run had one (``--region-weight 0
  --vision-warmup 0``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

VARIANTS: dict[str, tuple[str, ...]] = {
    "no_refine": ("--no-refine",),
    "n1": ("--tokens-per-scale", "1"),
    "fusion_mean": ("--fusion", "mean"),
    "no_phrase": ("--phrase-weight", "0"),
    "no_region": ("--region-weight", "0", "--vision-warmup", "0"),
}
DESCRIPTIONS = {
    "default": "default (refinement loss, N = 3, learned fusion, phrase and region-words losses, 3-turn sequences)",
    "no_refine": "without the target-refinement loss",
    "n1": "N = 1 codebook token per scale (instead of 3)",
    "fusion_mean": "token fusion replaced by a mean",
    "no_phrase": "without the phrase-reconstruction loss",
    "no_region": "without the region-words loss (and without a vision warm-up)",
}


def training_stats(run_dir: str | Path) -> dict | None:
    """Throughput of the run that wrote ``run_dir`` (``history.json``, ``eval.json``).

    Returns:
        {"train_samples_per_s" (sequences), "train_questions_per_s", "steps", "train_seconds"
        (None without eval.json), "source"},
        or None when the run left neither file.
    """
    run_dir = Path(run_dir)
    hist_path, eval_path = run_dir / "history.json", run_dir / "eval.json"
    stats: dict = {"train_samples_per_s": None, "train_questions_per_s": None, "steps": None,
                   "train_seconds": None, "source": []}
    if hist_path.is_file():
        hist = json.loads(hist_path.read_text())
        if hist:
            stats.update(train_samples_per_s=hist[-1].get("samples_per_s"),
                         train_questions_per_s=hist[-1].get("questions_per_s"), steps=len(hist))
        stats["source"].append(str(hist_path))
    if eval_path.is_file():
        ev = json.loads(eval_path.read_text())
        for key in ("train_samples_per_s", "steps", "train_seconds"):
            # eval.json's "steps" is the run's whole length (history.json holds only what the
            # last process ran, after a --resume)
            if ev.get(key) is not None and (stats[key] is None or key == "steps"):
                stats[key] = ev[key]
        stats["source"].append(str(eval_path))
    return stats if stats["source"] else None


def with_default_steps(train_args: Sequence[str], default: dict | None) -> list[str]:
    """``train_args`` plus ``--steps N``, N the default run's recorded length, unless they set
    ``--steps`` themselves: a default run that ``--time-budget`` shortened on a slow machine
    is then compared with variants of its own length, not of the planned one."""
    args = list(train_args)
    steps = default and default.get("steps")
    if steps and not any(a == "--steps" or a.startswith("--steps=") for a in args):
        args += ["--steps", str(steps)]
    return args


def variant_argv(name: str, *, checkpoint: str | Path, shapes_root: str | Path,
                 run_dir: str | Path, train_args: Sequence[str] = (), progress: bool = True) -> list[str]:
    """``pixellm-train`` arguments of one ablation variant.

    Args:
        name: a key of :data:`VARIANTS`.
        checkpoint: the default model's final checkpoint; its ``config.json`` is the model.
        shapes_root: the training data of the default run.
        run_dir: where the variant's run goes.
        train_args: the default run's training arguments (seed, steps, batch size...); they
            may override ``--model`` / ``--shapes-root`` but never the variant, ``--out`` or
            the evaluation (the benchmark evaluates).
        progress: False adds ``--no-progress`` (``pixellm-bench --no-progress`` passes it on,
            so a logged ablation holds no progress bars).
    Returns:
        argv for :func:`pixellm.train.main.main`.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; known: {', '.join(VARIANTS)}")
    return ["--model", str(Path(checkpoint) / "config.json"), "--shapes-root", str(shapes_root),
            *train_args, *VARIANTS[name], "--out", str(run_dir), "--eval-split", "",
            *(() if progress else ("--no-progress",))]


def train_variant(name: str, run_dir: Path, argv: list[str], *, retrain: bool = False) -> Path:
    """Train one variant (skipped when ``run_dir/final`` exists and not ``retrain``).

    Returns:
        the variant's final checkpoint directory.
    Raises:
        RuntimeError: training failed (its error was printed by ``pixellm-train``).
    """
    final = run_dir / "final"
    if (final / "config.json").is_file() and not retrain:
        print(f"ablation {name}: reusing {final} (--retrain to train again)")
        return final
    from pixellm.train.main import main as train_main

    print(f"ablation {name}: pixellm-train {' '.join(argv)}")
    if train_main(argv) != 0:
        raise RuntimeError(f"ablation variant {name!r} failed to train")
    return final


def budget_note(default: dict | None, variants: dict[str, dict | None]) -> str | None:
    """A warning when a variant ran a different number of steps than the default run."""
    steps = default and default.get("steps")
    odd = {k: v["steps"] for k, v in variants.items() if v and steps and v["steps"] != steps}
    if not odd:
        return None
    return (f"budget differs from the default run ({steps} steps): "
            + ", ".join(f"{k} {s} steps" for k, s in odd.items())
            + "; pass the default run's arguments with --train-args")
