"""Model families: a registry from a config's ``family`` name to what builds, loads and predicts.

Every config JSON names its family (``"family": "pixellm"``; a config without the key is a
PixelLM one, as written before families existed). The shared harness (training loop,
checkpoints, bench, flops, :func:`pixellm.load_predictor`) reaches a family only through its
:class:`Family` entry and the model interface below, so a new family is a package with a
config class and a builder, registered here, plus its JSON configs in
``pixellm/model_configs/`` (one folder for every family, as open_clip keeps one).

The model interface (what :class:`pixellm.segmenter.LLMSegmenter` subclasses provide):

- ``config``, ``tokenizer``; ``codebook_ids`` (the token ids of one target's block, in order:
  PixelLM's L*N codebook tokens, LISA's one ``[SEG]``); ``input_size`` (the padded square side
  the data pipeline feeds it);
- ``forward(pixels, input_ids, attention_mask, labels, gt_masks)`` -> an output with ``loss``,
  ``parts``, ``terms``, ``counts``, ``mask_logits`` and ``iou``;
- ``encode_images`` / ``decode_masks`` (what greedy generation calls), ``generate``;
- ``trainable_components()`` (name -> (module, must it train fully)) and
  ``checkpoint_config()`` (the config dict that rebuilds it without downloads).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from .errors import ConfigError

DEFAULT_FAMILY = "pixellm"


@dataclass(frozen=True)
class Family:
    """What the harness needs to know about one model family.

    Attributes:
        name: the ``family`` value of its configs.
        config_class: dataclass with ``from_dict(d)``, ``validate()``, ``to_dict()``, ``name``,
            ``block_len`` (tokens per target block) and ``input_size``.
        build: ``build(config, *, tokenizer=None, load_weights=True, dtype=None)`` -> model.
        predictor_class: has ``from_pretrained(directory, *, device=None, dtype=None, **kw)``.
        adapt_samples: ``(config, samples) -> samples`` the family trains on (e.g. LISA's
            merged variant joins all targets of a question into one); None: unchanged.
        warm_up: the family's ``--vision-warmup`` stage, with the signature of
            :func:`pixellm.train.warmup.warm_up_vision` over an ``ObjectWordDataset`` at the
            model's input side (LISA: SAM on point prompts); None: PixelLM's vision warm-up.
        train_data: for a family without an LLM: ``(config, *, roots, mix, seed, strict)`` ->
            :class:`TrainData` (``roots``: source name -> data root or None; ``mix``: source
            name -> rate); its model's ``forward(**batch)`` returns ``loss``, ``parts``,
            ``terms`` and ``counts``. None: the LLM families' conversations.
        checkpoint_tokenizer: its checkpoints hold a ``tokenizer/`` directory (False: the
            model brings its own, e.g. LSeg's frozen text encoder's).
        evaluate: ``(checkpoint_dir, *, root, split, limit, progress) -> (summary dict,
            Markdown table)``, what ``pixellm-train`` reports after training; None: the LLM
            families' generation metrics.
    """

    name: str
    config_class: type
    build: Callable[..., Any]
    predictor_class: type
    adapt_samples: Callable[[Any, Sequence], Sequence] | None = None
    warm_up: Callable[..., list[dict]] | None = None
    train_data: Callable[..., TrainData] | None = None
    checkpoint_tokenizer: bool = True
    evaluate: Callable[..., tuple[dict, str]] | None = None


@dataclass
class TrainData:
    """A family's own training data for the shared loop.

    dataset: items by flat index over the sources, in ``mix`` order; collate: items -> batch
    dict (tensors, or lists of them or of strings); sizes: items per source (the mixture
    sampler's); unit: what an item is, for the log ("label maps", "expressions"); tokenizer:
    the one the model is built with, if the family needs one.
    """

    dataset: Any
    collate: Callable[[list], dict]
    sizes: list[int]
    unit: str = "items"
    tokenizer: Any = None  # what the model is built with (LTS: its word vocabulary), or None


# family name -> module defining FAMILY (imported on first use: no family loads another)
_BUILTIN = {"pixellm": "pixellm.build", "lisa": "pixellm.lisa.build", "lseg": "pixellm.lseg.build",
            "lts": "pixellm.lts.build", "dynrefer": "pixellm.dynrefer.build"}
_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Register (or replace) a family under ``family.name``."""
    _FAMILIES[family.name] = family


def family_names() -> list[str]:
    """Names of the known families, sorted."""
    return sorted(set(_BUILTIN) | set(_FAMILIES))


def get_family(name: str) -> Family:
    """The :class:`Family` called ``name``; raises :class:`ConfigError` for an unknown one."""
    if name not in _FAMILIES and name in _BUILTIN:
        register_family(import_module(_BUILTIN[name]).FAMILY)
    if name not in _FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(family_names())}")
    return _FAMILIES[name]


def family_of(config: dict[str, Any] | Any) -> Family:
    """The family of a config dict or config object (no ``family``: PixelLM)."""
    name = config.get("family", DEFAULT_FAMILY) if isinstance(config, dict) else getattr(
        config, "family", DEFAULT_FAMILY)
    return get_family(name)


def config_from_dict(d: dict[str, Any]) -> Any:
    """Parse a config dict with its family's config class (validated)."""
    if not isinstance(d, dict):
        raise ConfigError(f"a model config must be a JSON object, got {type(d).__name__}")
    return family_of(d).config_class.from_dict(d).validate()
