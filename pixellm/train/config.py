"""The training config: :class:`TrainConfig`, read from a JSON recipe, overridden by flags.

A recipe (``pixellm/train_recipes/NAME.json``, or any JSON file) holds TrainConfig fields and
an optional ``description``; the fields it leaves out keep their defaults, a key that is not a
field is refused. Each family's
default model has one (``pixellm-tiny``, ``lisa-tiny``, ``lseg-tiny``, ``lts-tiny``,
``dynrefer-tiny``), which ``pixellm-train --model NAME`` reads unless ``--recipe`` names
another; the command line's flags override its fields. The resolved config is written beside
the run (``RUN/train_config.json``), in each checkpoint and in ``final/``: a recipe itself, so
``--recipe RUN/train_config.json`` trains the same run again.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError

RECIPE_DIR = Path(__file__).resolve().parent.parent / "train_recipes"
CONFIG_NAME = "train_config.json"


def _field(default: Any, help: str, **cli: Any) -> Any:
    """A field with its ``--flag``'s help and argparse options (``type`` for a None default,
    ``choices``, ``metavar``)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """What one ``pixellm-train`` run does (one field per ``--flag``, same defaults)."""

    recipe: str | None = _field(None, "the recipe it was read from (a name or a JSON path; None: the defaults)",
                                type=str)
    model: str = _field("pixellm-tiny", "registered config name or a config JSON path")
    out: str = _field("checkpoints/pixellm-tiny", "run directory (checkpoints, logs, final model)")
    # data
    mix: str = _field("shapes=1", 'sources and rates, e.g. "shapes=2,refcoco=9,muse=4"')
    shapes_root: str = _field("data/shapes", "generated dataset (pixellm-data --out)")
    muse_root: str | None = _field(None, "real MUSE root (or $PIXELLM_MUSE_ROOT)", type=str)
    refcoco_root: str | None = _field(None, "refCOCO root (or $PIXELLM_REFCOCO_ROOT)", type=str)
    multiref_root: str | None = _field(None, "refCOCO root for multi-referring (or $PIXELLM_REFCOCO_ROOT)",
                                       type=str)
    lenient_data: bool = _field(False, "skip malformed records (counted and reported)")
    # length and budget
    steps: int = _field(3500, "optimizer steps; with --time-budget an upper bound, the run being sized "
                              "from its measured pace")
    time_budget: float = _field(0.0, "wall-clock minutes for the optimizer steps (0: off); if --steps would "
                                     "not fit at the pace timed from warm-up on (checked again as the run "
                                     "goes), the run is shortened and its lr decay ends at the new end (see "
                                     "pixellm.train.budget)", metavar="MIN")
    # the family's warm-up stage (PixelLM: the vision tower on object words; LISA: SAM on points)
    vision_warmup: int = _field(0, "first train the vision tower alone to name the objects under the "
                                   "training targets' masks (LISA: SAM on point prompts), for STEPS steps "
                                   "(counts against --time-budget; see pixellm.train.warmup). 0: off",
                                metavar="STEPS")
    vision_warmup_batch: int = _field(16, "images per process per warm-up step")
    vision_warmup_lr: float = _field(2e-3, "peak learning rate of the warm-up")
    # batches
    batch_size: int = _field(8, "micro-batch per process (sequences; each holds up to --turns questions)")
    grad_accum: int = _field(1, "micro-batches per optimizer step")
    turns: int = _field(3, "pack up to N questions of one image into one multi-turn sequence (1: one "
                           "question per sequence)")
    bucket_batches: int = _field(8, "sort each run of N global batches by length to cut padding (1: off)")
    # optimizer and schedule
    lr: float = _field(1e-3, "peak learning rate")
    betas: tuple[float, float] = _field((0.9, 0.95), "AdamW betas", nargs=2, type=float)
    weight_decay: float = _field(0.0, "AdamW weight decay")
    warmup: int = _field(100, "linear learning-rate warm-up steps")
    min_lr_ratio: float = _field(0.05, "final lr as a fraction of --lr (linear decay)")
    clip: float = _field(1.0, "gradient-norm clipping (0: off)")
    seed: int = _field(0, "seed of the model, the data order and the packing")
    mixed_precision: str = _field("no", "autocast dtype", choices=["no", "bf16", "fp16"])
    # checkpoints, logs, evaluation
    save_every: int = _field(250, "checkpoint every K steps (and at the end)")
    keep: int = _field(2, "checkpoints kept (Accelerate's ProjectConfiguration.total_limit)")
    resume: bool = _field(False, "continue from the latest checkpoint in --out")
    log_every: int = _field(10, "tracker (TensorBoard) record every K steps")
    workers: int = _field(0, "DataLoader workers")
    eval_split: str = _field("val", "split evaluated after training ('' to skip)")
    eval_limit: int = _field(0, "evaluate at most N questions (0: all)")
    threads: int = _field(0, "torch CPU threads (0: torch default)")
    no_progress: bool = _field(False, "no progress bars")
    # model-config overrides (ablations; PixelLM's, another family's config refuses them)
    no_refine: bool = _field(False, "disable the target-refinement loss")
    tokens_per_scale: int | None = _field(None, "override codebook N", type=int)
    fusion: str | None = _field(None, "override codebook fusion", type=str, choices=["linear", "mean"])
    phrase_weight: float | None = _field(None, "override the phrase-reconstruction loss weight (0: off; see "
                                               "codebook.PhraseHead)", type=float)
    region_weight: float | None = _field(None, "override the region-words loss weight (0: off; see "
                                               "codebook.RegionWordHead)", type=float)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "a train config") -> TrainConfig:
        """Fields from ``d`` (the others keep their defaults), type-checked and validated.

        Raises:
            ConfigError: ``d`` is not an object, has a key that is not a field, or a value of
                the wrong type or out of range.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: a train config must be a JSON object, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown train config field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(known)}")
        return cls(**{k: _checked(known[k], v, source) for k, v in d.items()}).validate(source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``betas`` as a list)."""
        return {**asdict(self), "betas": list(self.betas)}

    def validate(self, source: str = "the train config") -> TrainConfig:
        """Raise :class:`ConfigError` for a value no run can use; returns self."""
        positive = ("steps", "batch_size", "grad_accum", "turns", "bucket_batches", "save_every", "keep",
                    "log_every", "vision_warmup_batch")
        bad = [f"{k} must be >= 1, got {getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k} must be >= 0, got {getattr(self, k)}"
                for k in ("time_budget", "vision_warmup", "warmup", "weight_decay", "clip", "workers",
                          "eval_limit", "threads") if getattr(self, k) < 0]
        if self.lr <= 0 or self.vision_warmup_lr <= 0:
            bad.append(f"lr and vision_warmup_lr must be > 0, got {self.lr} and {self.vision_warmup_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad.append(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) is not None and getattr(self, f.name) not in choices:
                bad.append(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if bad:
            raise ConfigError(f"{source}: " + "; ".join(bad))
        return self

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/train_config.json``; returns its path."""
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _checked(f, value: Any, source: str) -> Any:
    """``value`` for field ``f`` if its JSON type fits (an int where a float goes; a list of 2
    numbers for ``betas``), else ConfigError."""
    default = f.default
    kind = f.metadata.get("type") or type(default)
    if value is None and default is None:
        return None
    if isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        want = "a list of 2 numbers" if isinstance(default, tuple) else kind.__name__
        raise ConfigError(f"{source}: {f.name} must be {want}, got {value!r}")
    return value


def list_recipes() -> list[str]:
    """Names of the built-in recipes, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe_for_model(model: str) -> str | None:
    """The built-in recipe named like ``model`` (a registered config name), or None."""
    return model if (RECIPE_DIR / f"{model}.json").is_file() else None


def load_recipe(name_or_path: str | Path) -> TrainConfig:
    """The TrainConfig of a built-in recipe (by name) or a recipe JSON file (by path).

    Raises:
        ConfigError: no such recipe, unreadable JSON, or a bad field.
    """
    text = str(name_or_path)
    path = Path(text) if text.endswith(".json") or Path(text).is_file() else RECIPE_DIR / f"{text}.json"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {text!r}: no file {path}; built-in: {', '.join(list_recipes())}")
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from e
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k != "description"} | {"recipe": text}
    return TrainConfig.from_dict(d, source=f"recipe {path}")


def default_config(model: str | None = None) -> TrainConfig:
    """The starting point of a run of ``model`` without ``--recipe``: the recipe named like the
    model if there is one, else the TrainConfig defaults (with ``model`` set)."""
    model = model or TrainConfig.model
    name = recipe_for_model(model)
    if name is not None:
        return load_recipe(name)
    return TrainConfig(model=model)


__all__ = ["CONFIG_NAME", "RECIPE_DIR", "TrainConfig", "default_config", "list_recipes", "load_recipe",
           "recipe_for_model"]
