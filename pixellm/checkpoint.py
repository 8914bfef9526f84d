"""save_pretrained / from_pretrained: config JSON + safetensors weights + tokenizer, loaded strictly.

Layout of a checkpoint directory::

    config.json         the model config, naming its family (the LLM's and SAM's full
                        transformers configs inlined, so the directory is self-contained)
    model.safetensors   every parameter and persistent buffer (a tensor the model holds
                        under several names, once: safetensors' ``load_model`` restores the others)
    tokenizer/          the tokenizer, codebook tokens included (families whose model brings
                        its own, as LSeg's text encoder, have none)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file

from .errors import CheckpointError, ConfigError

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


def save_pretrained(model, directory: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (a built model of any family, with ``.config``/``.tokenizer``) to ``directory``.

    ``state_dict``: the weights to write instead of ``model.state_dict()`` (e.g. the full
    weights an FSDP run gathers; its names are the unwrapped model's).

    The write goes to a temporary sibling first and is renamed into place, so an interrupted
    save never leaves a directory that looks complete.
    """
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(model.checkpoint_config(), indent=2))
        sd = model.state_dict() if state_dict is None else state_dict
        aliases = _aliases(model)
        tensors, seen = {}, set()
        for k, v in sd.items():
            if k in aliases:
                continue
            # storage shared otherwise (not one tensor under two names), which safetensors refuses: copied
            tensors[k] = v.detach().clone().contiguous() if v.data_ptr() in seen else v.detach().contiguous()
            seen.add(v.data_ptr())
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        from .families import family_of

        if family_of(model.config).checkpoint_tokenizer:
            if model.tokenizer is None:
                raise CheckpointError("cannot save a model without a tokenizer (build it with one)")
            model.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


_WRAPPERS = re.compile(r"(_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def _aliases(model: torch.nn.Module) -> set[str]:
    """State-dict names of tensors the model also holds under an earlier name (e.g. LISA's SAM
    positional embedding, shared by two modules): safetensors stores shared storage once, and
    ``load_model`` fills the other names from the one kept. Found by identity, so they are found
    in an FSDP-wrapped model too (wrapper prefixes dropped)."""
    seen: dict[int, str] = {}
    out = set()
    named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, t in named:
        name = _WRAPPERS.sub("", name)
        if id(t) in seen and seen[id(t)] != name:
            out.add(max(name, seen[id(t)]))
            seen[id(t)] = min(name, seen[id(t)])
        else:
            seen.setdefault(id(t), name)
    return out


def check_checkpoint_dir(directory: str | Path) -> Path:
    """Raise :class:`CheckpointError` naming what is missing from a checkpoint directory."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory does not exist: {d}")
    needed = [CONFIG_NAME, WEIGHTS_NAME]
    if (d / CONFIG_NAME).is_file() and read_config(d)[1].checkpoint_tokenizer:
        needed.append(TOKENIZER_DIR)
    missing = [n for n in needed if not (d / n).exists()]
    if missing:
        raise CheckpointError(f"incomplete checkpoint {d}: missing {', '.join(missing)}")
    return d


def load_state_dict_strict(model: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file into ``model`` (``safetensors.torch.load_model``, strict); any
    missing/unexpected key or shape mismatch raises :class:`CheckpointError` naming them."""
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e
    except RuntimeError as e:  # load_model's missing/unexpected keys, torch's size mismatches
        missing, unexpected, wrong = _mismatches(str(e))
        if not (missing or unexpected or wrong):
            raise CheckpointError(f"cannot load weights {path}: {e}") from e
        aliases = _aliases(model)  # a file written before they were stored once holds them all
        unexpected = [k for k in unexpected if k not in aliases]
        if not (missing or unexpected or wrong):
            return  # such a file: loaded
        def show(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 f"shape mismatch: {show(wrong)}" if wrong else ""]
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(p for p in parts if p)) from e


def _mismatches(message: str) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) names in the message of ``load_model`` /
    ``Module.load_state_dict``, sorted."""
    def quoted(label: str) -> list[str]:
        line = re.search(label + r"[^:]*:(.*)", message)
        return sorted(re.findall(r'"([^"]+)"', line.group(1))) if line else []
    return (quoted("Missing key"), quoted("Unexpected key"),
            sorted(re.findall(r"size mismatch for ([^:\s]+):", message)))


def from_pretrained(directory: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None):
    """Build the model described by ``directory/config.json`` and load its weights strictly.

    Returns:
        the config's family's model (:class:`pixellm.PixelLM`, :class:`pixellm.lisa.Lisa`, ...)
        in eval mode with ``.config`` and ``.tokenizer``.
    Raises:
        CheckpointError: missing directory/files, unknown family, unreadable or mismatching
            weights.
    """
    from .llm import load_tokenizer

    d = check_checkpoint_dir(directory)
    cfg, family = read_config(d)
    tokenizer = None
    if family.checkpoint_tokenizer:
        try:
            tokenizer = load_tokenizer(d / TOKENIZER_DIR)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load tokenizer from {d / TOKENIZER_DIR}: {e}") from e
    model = family.build(cfg, tokenizer=tokenizer, load_weights=False)
    load_state_dict_strict(model, d / WEIGHTS_NAME)
    return model.to(device=device, dtype=dtype).eval()


def read_config(directory: str | Path):
    """(config, :class:`~pixellm.families.Family`) of a checkpoint directory's config.json."""
    from .families import config_from_dict, family_of

    path = Path(directory) / CONFIG_NAME
    try:
        d = json.loads(path.read_text())
        return config_from_dict(d), family_of(d)
    except (OSError, json.JSONDecodeError, ValueError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"cannot parse {path}: {e}") from e


def load_predictor(directory, *, device=None, dtype=None, **kw) -> Any:
    """The one entry point: load a checkpoint of any family as that family's predictor.

    Args:
        directory: a checkpoint directory (``save_pretrained`` / ``pixellm-train``'s ``final``).
        device, dtype: where and in what dtype to put the model (None: CPU, float32).
        **kw: the predictor's options (e.g. ``min_score``, ``max_new_tokens``); ``describer``: a
            DynRefer checkpoint directory (or predictor) that describes each target when
            ``predict(..., describe=True)`` is asked.
    Returns:
        e.g. :class:`pixellm.PixelLMPredictor` or :class:`pixellm.lisa.LisaPredictor`; every
        one answers ``predict(image, question)`` / ``predict_batch`` with
        :class:`pixellm.Prediction` holding one :class:`pixellm.Target` per target.
    Raises:
        CheckpointError: missing or incomplete directory, unknown family, bad weights.
    """
    describer = kw.pop("describer", None)
    _, family = read_config(check_checkpoint_dir(directory))
    predictor = family.predictor_class.from_pretrained(directory, device=device, dtype=dtype, **kw)
    if describer is not None:
        if not hasattr(predictor, "attach_describer"):
            raise ConfigError(f"a {family.name} predictor does not segment targets to describe")
        predictor.attach_describer(describer)
    return predictor
