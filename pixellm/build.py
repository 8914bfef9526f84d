"""Builders: a :class:`~pixellm.config.PixelLMConfig` (or its name) -> an assembled :class:`PixelLM`."""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .codebook import (
    CodebookFusion,
    PhraseHead,
    RegionWordHead,
    add_codebook_tokens,
)
from .config import PixelLMConfig, get_model_config
from .decoder import PixelDecoder
from .errors import ConfigError
from .llm import IMAGE_TOKEN, ImageProjector, apply_lora, build_causal_lm, load_tokenizer
from .model import PixelLM
from .vision import VisionTower, create_open_clip_visual


def _resolve(config: PixelLMConfig | str) -> PixelLMConfig:
    return get_model_config(config) if isinstance(config, str) else config.validate()


def build_llm(cfg, tokenizer: PreTrainedTokenizerBase | None, *, new_tokens, n_new: int,
              load_weights: bool, dtype) -> tuple[nn.Module, int, list[int]]:
    """The causal LM of any family's config, with ``<image>`` and the family's new tokens.

    Args:
        cfg: a family config with ``name`` and ``llm`` (:class:`~pixellm.config.LLMConfig`).
        tokenizer: the tokenizer the new tokens are added to; None (meta / FLOP builds): their
            ids follow the base vocabulary (``<image>`` first, then ``n_new`` tokens).
        new_tokens: ``tokenizer -> ids`` of the family's tokens, added to it (codebook, [SEG]).
        load_weights: load ``llm.name_or_path``; False: random weights of ``llm.config`` (or of
            the directory's config).
    Returns:
        (LLM, resized and optionally LoRA-wrapped, ``<image>`` id, new token ids).
    """
    c = cfg.llm
    if c.name_or_path is not None and load_weights:
        llm = build_causal_lm(name_or_path=c.name_or_path, config=None, torch_dtype=dtype)
    elif c.config is not None:
        llm = build_causal_lm(name_or_path=None, config=c.config, torch_dtype=dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(c.name_or_path), dtype=dtype)
    if tokenizer is None:
        base = llm.config.vocab_size
        image_id, ids, vocab = base, list(range(base + 1, base + 1 + n_new)), base + 1 + n_new
    else:
        ids = new_tokens(tokenizer)
        image_id, vocab = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), len(tokenizer)
    if vocab != llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(vocab, mean_resizing=False)
    if c.lora is not None:
        llm = apply_lora(llm, r=c.lora.r, alpha=c.lora.alpha, dropout=c.lora.dropout,
                         target_modules=c.lora.target_modules)
    if c.train_embeddings:  # the new rows must learn (LISA and PixelLM train both)
        base_llm = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        base_llm.get_input_embeddings().weight.requires_grad_(True)
        base_llm.get_output_embeddings().weight.requires_grad_(True)
    return llm, image_id, ids


def build_vision(cfg, tokenizer: PreTrainedTokenizerBase | None, *, load_weights: bool
                 ) -> tuple[PreTrainedTokenizerBase | None, VisionTower]:
    """(the tokenizer: given, else ``llm.tokenizer`` / ``llm.name_or_path`` when loading
    weights, else None; the CLIP :class:`VisionTower` of ``cfg.vision``)."""
    if tokenizer is None and (cfg.llm.tokenizer or cfg.llm.name_or_path) and load_weights:
        tokenizer = load_tokenizer(cfg.llm.tokenizer or cfg.llm.name_or_path)
    v = cfg.vision
    visual = create_open_clip_visual(model_name=v.model_name, image_size=v.image_size,
                                     pretrained=v.pretrained if load_weights else None,
                                     open_clip_config=v.open_clip_config)
    vision = VisionTower(visual=visual, layers=v.layers, freeze=v.freeze)
    if v.image_size % vision.patch_size:
        raise ConfigError(f"{cfg.name}: image_size {v.image_size} is not a multiple of patch {vision.patch_size}")
    return tokenizer, vision


def build_model(config, *, tokenizer: PreTrainedTokenizerBase | None = None,
                load_weights: bool = True, dtype: torch.dtype | None = None):
    """Assemble the model of any family from its config or registered name.

    Same arguments as :func:`build_pixellm`; the config's ``family`` picks the builder
    (:mod:`pixellm.families`).
    """
    from .families import family_of

    cfg = get_model_config(config) if isinstance(config, str) else config.validate()
    return family_of(cfg).build(cfg, tokenizer=tokenizer, load_weights=load_weights, dtype=dtype)


def build_pixellm(config: PixelLMConfig | str, *, tokenizer: PreTrainedTokenizerBase | None = None,
                  load_weights: bool = True, dtype: torch.dtype | None = None) -> PixelLM:
    """Assemble a PixelLM from its config.

    Args:
        config: a config or a registered name (see :func:`pixellm.list_models`).
        tokenizer: the LLM tokenizer; codebook tokens are added to it. None: use
            ``llm.tokenizer`` / ``llm.name_or_path`` if set, else append ids after the base
            vocabulary (enough for meta-device FLOP counting).
        load_weights: load pretrained CLIP/LLM weights named in the config. False gives random
            weights; wrap the call in ``with torch.device("meta"):`` to build without memory.
        dtype: parameter dtype (e.g. torch.bfloat16); None keeps float32.
    Returns:
        :class:`PixelLM` with ``.config`` and ``.tokenizer`` attached.
    """
    cfg = _resolve(config)
    tokenizer, vision = build_vision(cfg, tokenizer, load_weights=load_weights)
    cb = cfg.codebook
    llm, image_id, codebook_ids = build_llm(
        cfg, tokenizer, n_new=cfg.block_len, load_weights=load_weights, dtype=dtype,
        new_tokens=lambda tok: add_codebook_tokens(tok, num_scales=cb.num_scales, tokens_per_scale=cb.tokens_per_scale))
    d_llm = llm.config.hidden_size if not hasattr(llm, "get_base_model") else llm.get_base_model().config.hidden_size
    cb, dec, loss = cfg.codebook, cfg.decoder, cfg.loss
    vocab = llm.get_input_embeddings().num_embeddings
    model = PixelLM(
        vision=vision,
        projector=ImageProjector(in_dim=vision.width, out_dim=d_llm, pool=cfg.image_pool),
        llm=llm,
        fusion=CodebookFusion(llm_dim=d_llm, out_dim=dec.dim, num_scales=cb.num_scales,
                              tokens_per_scale=cb.tokens_per_scale, fusion=cb.fusion),
        decoder=PixelDecoder(in_dims=[vision.width] * cb.num_scales, dim=dec.dim,
                             num_scales=cb.num_scales, depth=dec.depth, heads=dec.heads,
                             mlp_dim=dec.mlp_dim, num_output_tokens=dec.num_output_tokens,
                             upscale=dec.upscale, iou_head=loss.iou_weight > 0),
        image_token_id=image_id, codebook_ids=codebook_ids, ce_weight=loss.ce_weight,
        bce_weight=loss.bce_weight, dice_weight=loss.dice_weight, refine=loss.refine,
        refine_alpha=loss.refine_alpha,
        phrase_head=PhraseHead(in_dim=dec.dim * cb.num_scales, vocab_size=vocab)
        if loss.phrase_weight > 0 else None,
        phrase_weight=loss.phrase_weight,
        region_head=RegionWordHead(in_dim=vision.width, vocab_size=vocab) if loss.region_weight > 0 else None,
        region_weight=loss.region_weight, iou_weight=loss.iou_weight,
    )
    if dtype is not None:
        model.to(dtype)
    model.config, model.tokenizer = cfg, tokenizer
    return model


def _family():
    from .families import Family
    from .predictor import PixelLMPredictor

    return Family(name="pixellm", config_class=PixelLMConfig, build=build_pixellm,
                  predictor_class=PixelLMPredictor)


FAMILY = _family()
