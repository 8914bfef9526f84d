"""Builders: an :class:`~pixellm.lts.config.LTSConfig` (or its name) -> an assembled
:class:`~pixellm.lts.model.LTS`, its training data, its evaluation, and the family's entry."""
from __future__ import annotations

from functools import partial

import torch
from torch.utils.data import ConcatDataset

from pixellm.config import get_model_config
from pixellm.families import Family, TrainData
from pixellm.llm import train_word_tokenizer

from .config import LTSConfig
from .data import ExpressionDataset, collate_expressions
from .encoders import build_encoder
from .model import LTS, GRUText, scaled_dilations
from .predictor import LTSPredictor

# vocabulary of a model built without a tokenizer (meta-device FLOP counts): about refCOCO's
META_VOCAB = 10000


def build_lts(config: LTSConfig | str, *, tokenizer=None, load_weights: bool = True,
              dtype: torch.dtype | None = None) -> LTS:
    """Assemble LTS from its config.

    Args:
        config: an :class:`LTSConfig` or a registered name (``lts-tiny``, ``lts-darknet53``).
        tokenizer: the word tokenizer (its size sets the embedding table); None: a
            :data:`META_VOCAB`-word table and no tokenizer (enough for FLOP counting).
        load_weights: load the pretrained visual encoder named in the config.
        dtype: parameter dtype; None keeps float32.
    """
    cfg = get_model_config(config) if isinstance(config, str) else config.validate()
    encoder = build_encoder(cfg.vision, load_weights=load_weights)
    encoder.frozen = cfg.vision.freeze
    vocab = len(tokenizer) if tokenizer is not None else META_VOCAB
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    text = GRUText(vocab, cfg.text.embed_dim, cfg.text.hidden, pad)
    # the fused features live at the finest scale; the ASPP dilations follow its side
    finest = int(cfg.input_size // encoder.strides[0])
    model = LTS(encoder=encoder, text=text, dim=cfg.dim, kernel_size=cfg.kernel_size, locate=cfg.locate,
                use_prior=cfg.use_prior, locate_weight=cfg.locate_weight,
                dilations=scaled_dilations(cfg.aspp_dilations, finest, cfg.aspp_reference))
    if dtype is not None:
        model.to(dtype)
    model.config, model.tokenizer = cfg, tokenizer
    return model


def train_data(cfg: LTSConfig, *, roots: dict, mix: dict, seed: int, strict: bool = True) -> TrainData:
    """Every distinct (image, target phrase) of the mix's MUSE-format training sources, and a
    word tokenizer trained on their questions and answers."""
    del seed
    from pixellm.train.mixture import load_source

    sources = [load_source(name, root=roots.get(name), strict=strict) for name in mix]
    tok = train_word_tokenizer(t for src in sources for s in src for t in (s.question, s.answer))
    sets = [ExpressionDataset(src, tokenizer=tok, image_size=cfg.input_size, mean=cfg.vision.mean,
                              std=cfg.vision.std, max_length=cfg.text.max_length) for src in sources]
    return TrainData(dataset=ConcatDataset(sets), collate=partial(collate_expressions, pad_id=tok.pad_token_id),
                     sizes=[len(s) for s in sets], unit="expressions", tokenizer=tok)


def evaluate(checkpoint, *, root, split: str, limit: int = 0, progress: bool = False) -> tuple[dict, str]:
    """Order-aligned gIoU / cIoU of each target's expression on ``root``'s ``split`` (what
    ``pixellm-train`` prints)."""
    from pixellm.muse import load_split

    from .evaluate import evaluate_expressions, table

    pred = LTSPredictor.from_pretrained(checkpoint)
    result = evaluate_expressions(pred, load_split(root, split), limit=limit, progress=progress)
    return result, table(split, result)


FAMILY = Family(name="lts", config_class=LTSConfig, build=build_lts, predictor_class=LTSPredictor,
                train_data=train_data, evaluate=evaluate)
