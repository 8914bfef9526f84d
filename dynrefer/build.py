"""Builders: a :class:`~pixellm.dynrefer.config.DynReferConfig` (or its name) -> an assembled
:class:`~pixellm.dynrefer.model.DynRefer`, its training data, its evaluation, and the family's
entry."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from pixellm.config import get_model_config
from pixellm.errors import CheckpointError, InputError
from pixellm.families import Family, TrainData
from pixellm.llm import apply_lora, build_causal_lm, train_word_tokenizer
from pixellm.text_encoder import FrozenTextEncoder
from pixellm.vision import VisionTower, create_open_clip_visual

from .config import DynReferConfig
from .data import RegionDataset, collate_regions
from .model import CONTROL_END, DynRefer
from .predictor import DynReferPredictor

VISION_PREFIX = "vision.visual."  # a PixelLM checkpoint's keys of its open_clip tower


def load_tower_from_checkpoint(visual: torch.nn.Module, directory: str | Path) -> None:
    """Copy a PixelLM checkpoint's vision tower into ``visual`` (strict: same architecture).

    Raises:
        CheckpointError: no such checkpoint, or its tower does not match (naming the keys).
    """
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"vision.from_checkpoint: {path} not found (train pixellm-tiny first: make train)")
    sd = {k[len(VISION_PREFIX):]: v for k, v in load_file(str(path)).items() if k.startswith(VISION_PREFIX)}
    missing, unexpected = visual.load_state_dict(sd, strict=False)
    if missing or unexpected or not sd:
        raise CheckpointError(f"{path}: its vision tower does not match {type(visual).__name__} "
                              f"(missing {missing[:4]}, unexpected {unexpected[:4]})")


def build_dynrefer(config: DynReferConfig | str, *, tokenizer=None, load_weights: bool = True,
                   dtype: torch.dtype | None = None) -> DynRefer:
    """Assemble DynRefer from its config.

    Args:
        config: a :class:`DynReferConfig` or a registered name (``dynrefer-tiny``, ``dynrefer-vitg``).
        tokenizer: the captioner's tokenizer (its size sets the LLM vocabulary); None keeps the
            config's vocabulary (enough for FLOP counting).
        load_weights: read the pretrained vision tower (open_clip tag or a PixelLM checkpoint),
            text encoder and LLM named in the config; False: random weights (a checkpoint's
            weights are loaded over them).
        dtype: parameter dtype; None keeps float32.
    """
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    cfg = get_model_config(config) if isinstance(config, str) else config.validate()
    v = cfg.vision
    visual = create_open_clip_visual(model_name=v.model_name, image_size=v.image_size,
                                     pretrained=v.pretrained if load_weights else None,
                                     open_clip_config=v.open_clip_config)
    if load_weights and v.from_checkpoint:
        load_tower_from_checkpoint(visual, v.from_checkpoint)
    vision = VisionTower(visual=visual, layers=[v.layer], freeze=True)
    q = cfg.qformer
    qformer = Blip2QFormerModel(Blip2QFormerConfig(
        hidden_size=q.hidden_size, num_hidden_layers=q.num_layers, num_attention_heads=q.num_heads,
        intermediate_size=q.intermediate_size, encoder_hidden_size=cfg.fuse_dim, cross_attention_frequency=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, vocab_size=2))
    text = FrozenTextEncoder(cfg.text, load_weights=load_weights)
    llm = build_causal_lm(name_or_path=cfg.llm.name_or_path if load_weights else None,
                          config=cfg.llm.config, torch_dtype=dtype)
    if tokenizer is not None and len(tokenizer) != llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if cfg.llm.lora is not None:
        lo = cfg.llm.lora
        llm = apply_lora(llm, r=lo.r, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules)
    model = DynRefer(config=cfg, vision=vision, qformer=qformer, text=text, llm=llm, tokenizer=tokenizer)
    if dtype is not None:
        model.to(dtype)
    return model


def caption_tokenizer(captions, tags):
    """A word tokenizer over the training captions, the tag words and the control separator."""
    return train_word_tokenizer([*captions, " ".join(tags), CONTROL_END])


def train_data(cfg: DynReferConfig, *, roots: dict, mix: dict, seed: int, strict: bool = True) -> TrainData:
    """Every region of each source's ``regions_train.json`` (its root's, written by
    ``pixellm-data``) and a caption tokenizer trained on their captions."""
    from pixellm.muse.regions import load_regions

    del seed, strict  # a malformed regions record always raises (DatasetFormatError)
    sets, captions = [], []
    for name in mix:
        root = roots.get(name)
        path = Path(root or "") / "regions_train.json"
        if root is None or not path.is_file():
            raise InputError(f"data source {name!r}: the DynRefer family reads {path} (regenerate the data "
                             "with pixellm-data, data format 4 or later)")
        regions = load_regions(path, tags=cfg.tags)
        captions += [r.caption for r in regions.records]
        sets.append(RegionDataset(regions, Path(root) / "images", tags=cfg.tags, num_views=cfg.views.num_views,
                                  candidates=cfg.views.candidates, random_views=cfg.views.random,
                                  control_keep=cfg.control_keep if cfg.tag_control else 0.0,
                                  mean=cfg.vision.mean, std=cfg.vision.std))
    tok = caption_tokenizer(captions, cfg.tags) if cfg.llm.name_or_path is None else _llm_tokenizer(cfg)
    return TrainData(dataset=ConcatDataset(sets), collate=collate_regions, sizes=[len(s) for s in sets],
                     unit="regions", tokenizer=tok)


def _llm_tokenizer(cfg: DynReferConfig):
    from pixellm.llm import load_tokenizer

    return load_tokenizer(cfg.llm.tokenizer or cfg.llm.name_or_path)


def evaluate(checkpoint, *, root, split: str, limit: int = 0, progress: bool = False) -> tuple[dict, str]:
    """Caption, tag, attribute and recognition scores on ``root``'s ``regions_<split>.json``
    (``val`` when asked for a MUSE split name it has no regions file for)."""
    from .evaluate import evaluate_regions, table

    path = Path(root) / f"regions_{split}.json"
    if not path.is_file():
        path = Path(root) / "regions_val.json"
    pred = DynReferPredictor.from_pretrained(checkpoint)
    result = evaluate_regions(pred, path, limit=limit or 600, progress=progress)
    return result, table(path.stem.removeprefix("regions_"), result)


FAMILY = Family(name="dynrefer", config_class=DynReferConfig, build=build_dynrefer,
                predictor_class=DynReferPredictor, train_data=train_data, evaluate=evaluate)

__all__ = ["FAMILY", "build_dynrefer", "caption_tokenizer", "load_tower_from_checkpoint", "train_data"]
