"""Shared fixtures: a word tokenizer and tiny PixelLM models built from scratch (CPU, seconds)."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from pixellm.build import build_model
from pixellm.config import get_model_config
from pixellm.llm import train_word_tokenizer

TEXTS = [
    "which shapes are red ?", "find all the stars .", "what are the two largest shapes ?",
    "red circle {seg} , blue square {seg} and green star {seg} .", "no shape matches .",
    "purple triangle {seg} .", "everything except the blue ones .", "which shapes have no corners ?",
]


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tokenizer_texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture
def tokenizer():
    return train_word_tokenizer(TEXTS)


@pytest.fixture
def make_tokenizer():
    return lambda: train_word_tokenizer(TEXTS)


def _small_config(**overrides):
    """pixellm-tiny with a 2-layer LLM: same code paths, faster tests."""
    cfg = get_model_config("pixellm-tiny", **overrides)
    cfg.llm.config = {**cfg.llm.config, "num_hidden_layers": 2}
    return cfg


@pytest.fixture
def small_config():
    return _small_config


@pytest.fixture
def tiny_model(tokenizer):
    torch.manual_seed(0)
    return build_model(_small_config(), tokenizer=tokenizer).eval()


# A micro PixelLM (32 px images, 2-layer 64-wide LLM): real code paths, trains in seconds.
MICRO_CONFIG = {
    "name": "pixellm-micro-test",
    "vision": {"model_name": "pixellm-micro-vit", "image_size": 32, "layers": [1, 0], "freeze": False,
               "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
               "open_clip_config": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                                                                    "head_width": 32, "patch_size": 8},
                                    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 32, "heads": 1,
                                                 "layers": 1}}},
    "llm": {"config": {"model_type": "llama", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                       "max_position_embeddings": 192}, "max_length": 160, "lora": None},
    "codebook": {"num_scales": 2, "tokens_per_scale": 3},
    "decoder": {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64, "num_output_tokens": 1, "upscale": 4},
    "loss": {"phrase_weight": 1.0, "region_weight": 1.0},
    "image_pool": 4,
}


@pytest.fixture(scope="session")
def micro_config() -> dict:
    """A fresh copy of the micro config dict (name "pixellm-micro-test")."""
    return copy.deepcopy(MICRO_CONFIG)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """A tiny generated dataset (24 train images of 32 px) in the MUSE/LVIS layout."""
    from pixellm.muse import GenConfig, generate_dataset
    out = tmp_path_factory.mktemp("shapes")
    generate_dataset(GenConfig(seed=3, train=24, val=6, test=6, image_size=32), out, workers=1)
    return out


@pytest.fixture(scope="session")
def micro_cfg(tmp_path_factory, micro_config):
    """The micro config written to a JSON file (``--model PATH``)."""
    path = tmp_path_factory.mktemp("cfg") / "micro.json"
    path.write_text(json.dumps(micro_config))
    return path


@pytest.fixture(scope="session")
def micro_lisa_cfg(tmp_path_factory, micro_config):
    """A micro LISA as a JSON file: the micro PixelLM's towers (32 px CLIP, 2-layer LLM) and a
    128 px SAM of width 16."""
    cfg = {k: copy.deepcopy(micro_config[k]) for k in ("vision", "llm", "image_pool")}
    cfg["vision"]["layers"] = [1]
    sam = {"vision_config": {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 1, "mlp_dim": 32,
                             "global_attn_indexes": [1], "window_size": 4, "image_size": 128, "patch_size": 16,
                             "output_channels": 16, "num_pos_feats": 8},
           "prompt_encoder_config": {"hidden_size": 16, "image_size": 128, "patch_size": 16},
           "mask_decoder_config": {"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "iou_head_hidden_dim": 16}}
    cfg.update(name="lisa-micro-test", family="lisa", sam={"image_size": 128, "config": sam})
    path = tmp_path_factory.mktemp("lisa_cfg") / "lisa-micro.json"
    path.write_text(json.dumps(cfg))
    return path


# A micro LSeg: a 4-block 32-px ViT, DPT width 8, C = 16, the real MiniLM as its text side.
MICRO_LSEG = {
    "name": "lseg-micro-test", "family": "lseg",
    "vision": {"model_name": "lseg-micro-vit", "image_size": 32, "layers": [0, 1, 2, 3], "freeze": False,
               "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
               "open_clip_config": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 4, "width": 32,
                                                                    "head_width": 16, "patch_size": 8},
                                    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 1,
                                                 "layers": 1}}},
    "text": {"kind": "transformers", "max_length": 8},
    "features": 8, "embed_dim": 16, "temperature": 0.07, "reg_blocks": 2, "reg_kind": "bottleneck",
}


@pytest.fixture(scope="session")
def micro_lseg_cfg(tmp_path_factory):
    """The micro LSeg config as a JSON file."""
    path = tmp_path_factory.mktemp("lseg_cfg") / "lseg-micro.json"
    path.write_text(json.dumps(MICRO_LSEG))
    return path


# A micro LTS: a 3-block 32-px ViT (hooks at 3 depths), C = 16, a 16-wide bi-GRU.
MICRO_LTS = {
    "name": "lts-micro-test", "family": "lts",
    "vision": {"kind": "open_clip", "model_name": "lts-micro-vit", "image_size": 32, "layers": [0, 1, 2],
               "freeze": False, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
               "open_clip_config": {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 3, "width": 32,
                                                                    "head_width": 16, "patch_size": 8},
                                    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 1,
                                                 "layers": 1}}},
    "text": {"embed_dim": 16, "hidden": 8, "max_length": 12},
    "dim": 16, "kernel_size": 3, "locate": "kernel", "use_prior": True, "locate_weight": 1.0,
}


@pytest.fixture(scope="session")
def micro_lts_cfg(tmp_path_factory):
    """The micro LTS config as a JSON file."""
    path = tmp_path_factory.mktemp("lts_cfg") / "lts-micro.json"
    path.write_text(json.dumps(MICRO_LTS))
    return path
