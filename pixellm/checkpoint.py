"""save_pretrained / from_pretrained: config JSON + safetensors weights + tokenizer, loaded strictly.

Layout of a checkpoint directory::

    config.json         the model config, naming its family (the LLM's and SAM's full
                        transformers configs inlined, so the directory is self-contained)
    model.safetensors   every parameter and persistent buffer
    tokenizer/          the tokenizer, codebook tokens included (families whose model brings
                        its own, as LSeg's text encoder, have none)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"


def save_pretrained(model, directory: str | Path) -> Path:
    """Write ``model`` (a built model of any family, with ``.config``/``.tokenizer``) to ``directory``.

    The write goes to a temporary sibling first and is renamed into place, so an interrupted
    save never leaves a directory that looks complete.
    """
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(model.checkpoint_config(), indent=2))
        seen: dict[int, str] = {}
        tensors = {}
        for k, v in model.state_dict().items():  # safetensors refuses shared storage: copy aliases
            ptr = v.data_ptr()
            tensors[k] = v.detach().clone().contiguous() if ptr in seen else v.detach().contiguous()
            seen[ptr] = k
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
    """Load a safetensors file into ``model``; any missing/unexpected key or shape mismatch raises."""
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        def show(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 f"shape mismatch: {show(wrong)}" if wrong else ""]
        raise CheckpointError(f"{path} does not match the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=True)


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
