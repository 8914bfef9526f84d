"""Shared fixtures: a word tokenizer and tiny PixelLM models built from scratch (CPU, seconds)."""
from __future__ import annotations

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
    cfg.llm.config = {**cfg.llm.config, "num_hidden_layers": 2, "max_position_embeddings": 256}
    return cfg


@pytest.fixture
def small_config():
    return _small_config


@pytest.fixture
def tiny_model(tokenizer):
    torch.manual_seed(0)
    return build_model(_small_config(), tokenizer=tokenizer).eval()
