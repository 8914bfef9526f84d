"""Builders: a :class:`~pixellm.config.PixelLMConfig` (or its name) -> an assembled :class:`PixelLM`."""
from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from .codebook import (
    CodebookFusion,
    PhraseHead,
    RegionWordHead,
    add_codebook_tokens,
    codebook_token_names,
)
from .config import PixelLMConfig, get_model_config
from .decoder import PixelDecoder
from .errors import ConfigError
from .llm import IMAGE_TOKEN, ImageProjector, apply_lora, build_causal_lm, load_tokenizer
from .model import PixelLM
from .vision import VisionTower, create_open_clip_visual


def _resolve(config: PixelLMConfig | str) -> PixelLMConfig:
    return get_model_config(config) if isinstance(config, str) else config.validate()


def _token_ids(cfg: PixelLMConfig, tokenizer: PreTrainedTokenizerBase | None, base_vocab: int
               ) -> tuple[int, list[int], int]:
    """(image id, codebook ids, vocab size) from the tokenizer, or appended after the base vocab."""
    if tokenizer is None:  # meta / FLOP builds: ids follow the base vocabulary
        n = cfg.block_len
        return base_vocab, list(range(base_vocab + 1, base_vocab + 1 + n)), base_vocab + 1 + n
    ids = add_codebook_tokens(tokenizer, num_scales=cfg.codebook.num_scales,
                              tokens_per_scale=cfg.codebook.tokens_per_scale)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), ids, len(tokenizer)


def _build_llm(cfg: PixelLMConfig, tokenizer, load_weights: bool, dtype):
    llm_cfg = cfg.llm
    if llm_cfg.name_or_path is not None and load_weights:
        llm = build_causal_lm(name_or_path=llm_cfg.name_or_path, config=None, torch_dtype=dtype)
    elif llm_cfg.config is not None:
        llm = build_causal_lm(name_or_path=None, config=llm_cfg.config, torch_dtype=dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm_cfg.name_or_path), dtype=dtype)
    image_id, codebook_ids, vocab = _token_ids(cfg, tokenizer, llm.config.vocab_size)
    if vocab != llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(vocab, mean_resizing=False)
    if llm_cfg.lora is not None:
        lora = llm_cfg.lora
        llm = apply_lora(llm, r=lora.r, alpha=lora.alpha, dropout=lora.dropout,
                         target_modules=lora.target_modules)
    if llm_cfg.train_embeddings:  # new codebook rows must learn (LISA/PixelLM train both)
        base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
        base.get_input_embeddings().weight.requires_grad_(True)
        base.get_output_embeddings().weight.requires_grad_(True)
    return llm, image_id, codebook_ids


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
    if tokenizer is None and (cfg.llm.tokenizer or cfg.llm.name_or_path) and load_weights:
        tokenizer = load_tokenizer(cfg.llm.tokenizer or cfg.llm.name_or_path)
    v = cfg.vision
    visual = create_open_clip_visual(model_name=v.model_name, image_size=v.image_size,
                                     pretrained=v.pretrained if load_weights else None,
                                     open_clip_config=v.open_clip_config)
    vision = VisionTower(visual=visual, layers=v.layers, freeze=v.freeze)
    if v.image_size % vision.patch_size:
        raise ConfigError(f"{cfg.name}: image_size {v.image_size} is not a multiple of patch {vision.patch_size}")
    llm, image_id, codebook_ids = _build_llm(cfg, tokenizer, load_weights, dtype)
    d_llm = llm.config.hidden_size if not hasattr(llm, "get_base_model") else llm.get_base_model().config.hidden_size
    cb, dec, loss = cfg.codebook, cfg.decoder, cfg.loss
    vocab = llm.get_input_embeddings().num_embeddings
    model = PixelLM(
        vision=vision,
        projector=ImageProjector(in_dim=vision.width, out_dim=d_llm, pool=cfg.image_pool),
        llm=llm,
        fusion=CodebookFusion(llm_dim=d_llm, out_dim=dec.dim, num_scales=cb.num_scales,
                              tokens_per_scale=cb.tokens_per_scale, fusion=cb.fusion,
                              projection=cb.projection),
        decoder=PixelDecoder(in_dims=[vision.width] * cb.num_scales, dim=dec.dim,
                             num_scales=cb.num_scales, depth=dec.depth, heads=dec.heads,
                             mlp_dim=dec.mlp_dim, num_output_tokens=dec.num_output_tokens,
                             upscale=dec.upscale, iou_head=loss.iou_weight > 0),
        image_token_id=image_id, codebook_ids=codebook_ids, ce_weight=loss.ce_weight,
        bce_weight=loss.bce_weight, dice_weight=loss.dice_weight, refine=loss.refine,
        refine_alpha=loss.refine_alpha, block_ce=loss.block_ce,
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


def codebook_tokens(cfg: PixelLMConfig) -> list[str]:
    """The codebook token strings of ``cfg`` in block order."""
    return codebook_token_names(num_scales=cfg.codebook.num_scales,
                                tokens_per_scale=cfg.codebook.tokens_per_scale)


def _family():
    from .families import Family
    from .predictor import PixelLMPredictor

    return Family(name="pixellm", config_class=PixelLMConfig, build=build_pixellm,
                  predictor_class=PixelLMPredictor)


FAMILY = _family()
