"""Builders: an :class:`~pixellm.lseg.config.LSegConfig` (or its name) -> an assembled
:class:`~pixellm.lseg.model.LSeg`, its training data, and the family's registry entry."""
from __future__ import annotations

from pathlib import Path

import torch

from pixellm.config import get_model_config
from pixellm.errors import ConfigError, InputError
from pixellm.families import Family, TrainData
from pixellm.text_encoder import FrozenTextEncoder
from pixellm.vision import VisionTower, create_open_clip_visual

from .config import LSegConfig
from .data import LabelMapDataset, LabelMapSource, collate_label_maps
from .model import LSeg
from .predictor import LSegPredictor


def build_lseg(config: LSegConfig | str, *, tokenizer=None, load_weights: bool = True,
               dtype: torch.dtype | None = None) -> LSeg:
    """Assemble LSeg from its config.

    Args:
        config: an :class:`LSegConfig` or a registered name (``lseg-tiny``, ``lseg-vitl16``).
        tokenizer: unused (the text encoder brings its own); accepted as every family's builder.
        load_weights: load the pretrained ViT and text encoder named in the config (the MiniLM
            of ``lseg-tiny`` always has weights to load); False gives random weights of the
            same shapes (a checkpoint's weights go over them; wrap in ``with
            torch.device("meta"):`` to build without memory).
        dtype: parameter dtype; None keeps float32.
    Returns:
        :class:`LSeg` with ``.config`` attached and ``.tokenizer`` None.
    """
    cfg = get_model_config(config) if isinstance(config, str) else config.validate()
    v = cfg.vision
    visual = create_open_clip_visual(model_name=v.model_name, image_size=v.image_size,
                                     pretrained=v.pretrained if load_weights else None,
                                     open_clip_config=v.open_clip_config)
    vision = VisionTower(visual=visual, layers=v.layers, freeze=v.freeze)
    grid, rem = divmod(v.image_size, vision.patch_size)
    if rem or grid % 2:
        raise ConfigError(f"{cfg.name}: image_size {v.image_size} must be an even multiple of the "
                          f"patch {vision.patch_size} (DPT halves the patch grid)")
    if max(v.layers) >= len(visual.transformer.resblocks):
        raise ConfigError(f"{cfg.name}: hooks {v.layers} exceed the ViT's {len(visual.transformer.resblocks)} blocks")
    text = FrozenTextEncoder(cfg.text, load_weights=load_weights)
    model = LSeg(vision=vision, text=text, features=cfg.features, embed_dim=cfg.embed_dim,
                 temperature=cfg.temperature, reg_kind=cfg.reg_kind, reg_blocks=cfg.reg_blocks)
    if dtype is not None:
        model.to(dtype)
    model.config, model.tokenizer = cfg, None
    return model


def train_data(cfg: LSegConfig, *, roots: dict, mix: dict, seed: int, strict: bool = True) -> TrainData:
    """The dense label maps of the training split's LVIS file (``lvis_instances_train.json``
    under the ``shapes`` root): every image once per label kind.

    Raises:
        InputError: a mix source other than ``shapes`` (LVIS-format files are what LSeg reads),
            or a missing file.
    """
    del strict  # LVIS files are parsed whole by the lvis package
    other = [name for name in mix if name != "shapes"]
    if other:
        raise InputError(f"the lseg family trains on the LVIS instances of the shapes root; "
                         f"--mix sources {other} are not label-map sources")
    root = roots.get("shapes")
    if not root:
        raise InputError("the lseg family needs --shapes-root (its lvis_instances_train.json)")
    source = LabelMapSource(Path(root) / "lvis_instances_train.json")
    data = LabelMapDataset(source, image_size=cfg.input_size, mean=cfg.vision.mean, std=cfg.vision.std, seed=seed)
    return TrainData(dataset=data, collate=collate_label_maps, sizes=[len(data)], unit="label maps")


def evaluate(checkpoint, *, root, split: str, limit: int = 0, progress: bool = False) -> tuple[dict, str]:
    """Seen / unseen mIoU of a checkpoint on ``root``'s ``split`` (what ``pixellm-train`` prints)."""
    from pixellm.checkpoint import from_pretrained

    from .evaluate import evaluate_split, table

    result = evaluate_split(from_pretrained(checkpoint), root, split, limit=limit, progress=progress)
    return result, table(result)


FAMILY = Family(name="lseg", config_class=LSegConfig, build=build_lseg, predictor_class=LSegPredictor,
                train_data=train_data, checkpoint_tokenizer=False, evaluate=evaluate)
