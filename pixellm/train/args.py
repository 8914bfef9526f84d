"""Command-line arguments of ``pixellm-train``: one ``--flag`` per :class:`TrainConfig` field.

The flags' defaults are the recipe's fields (:func:`parse_config`), so a flag given on the
command line overrides the recipe and the others keep it.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields

from .config import TrainConfig, default_config, list_recipes, load_recipe


def build_parser(defaults: TrainConfig | None = None) -> argparse.ArgumentParser:
    """The ``pixellm-train`` parser, its defaults taken from ``defaults`` (None: TrainConfig's)."""
    d = defaults or TrainConfig()
    p = argparse.ArgumentParser(prog="pixellm-train",
                                description="Train a model of any family (runs under accelerate launch / "
                                            "torchrun). A recipe gives the defaults, the flags override them.")
    for f in fields(TrainConfig):
        flag, meta, default = "--" + f.name.replace("_", "-"), f.metadata, getattr(d, f.name)
        if f.name == "recipe":
            p.add_argument(flag, default=default, metavar="NAME_OR_PATH",
                           help=f"a built-in recipe ({', '.join(list_recipes())}) or a recipe JSON path; "
                                "default: the recipe named like --model if there is one, else the defaults")
        elif isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", default=default, help=meta["help"])
        else:
            kind = meta.get("type") or type(f.default)
            extra = {k: meta[k] for k in ("choices", "metavar", "nargs") if k in meta}
            p.add_argument(flag, type=kind, default=default, help=f"{meta['help']} (default: %(default)s)",
                           **extra)
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The run's :class:`TrainConfig`: ``--recipe`` (or the recipe named like ``--model``, or
    the defaults), then every flag given on the command line.

    Raises:
        ConfigError: an unknown or malformed recipe, or a value out of range.
        SystemExit: argparse's usage errors and ``--help``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe")
    pre.add_argument("--model")
    known, _ = pre.parse_known_args(argv)
    base = load_recipe(known.recipe) if known.recipe else default_config(known.model)
    ns = build_parser(base).parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**{**values, "betas": tuple(values["betas"])}).validate("pixellm-train")


__all__ = ["build_parser", "parse_config"]
