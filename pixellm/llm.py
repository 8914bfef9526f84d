"""The language model side: building the causal LM, the tiny word-level tokenizer, LoRA and the image projector."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def build_causal_lm(*, name_or_path: str | None, config: dict | None,
                    torch_dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A transformers causal LM from a local dir / hub id (weights) or a config dict (random init).

    Random init honours the ambient device, so ``with torch.device("meta"):`` builds without memory.
    """
    if name_or_path is not None:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype)
    cfg = dict(config)
    cfg_obj = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModelForCausalLM.from_config(cfg_obj, dtype=torch_dtype)


def train_word_tokenizer(texts: Iterable[str], *, extra_tokens: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Train a lower-cased word-level tokenizer (the tiny default has no pretrained tokenizer).

    Args:
        texts: questions and answers of the training data (``{seg}`` placeholders are stripped).
        extra_tokens: further special tokens, e.g. the segmentation codebook.
    Returns:
        A ``PreTrainedTokenizerFast`` with <pad>, <s>, </s>, <unk> and <image>.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = list(SPECIAL_TOKENS.values()) + [IMAGE_TOKEN]
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tok.train_from_iterator((t.replace("{seg}", " ") for t in texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, *extra_tokens]})
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by ``save_pretrained`` (or a real LLM's) and make sure <image> exists."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:  # LLaMA ships none; padding is masked anyway
        tok.pad_token = tok.unk_token or tok.eos_token
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def apply_lora(llm: PreTrainedModel, *, r: int, alpha: int, dropout: float,
               target_modules: list[str], modules_to_save: list[str] | None = None) -> nn.Module:
    """Wrap ``llm`` with peft LoRA adapters; base weights freeze, adapters train."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                     modules_to_save=modules_to_save, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(llm, cfg)


class ImageProjector(nn.Module):
    """LLaVA-style MLP mapping pooled CLIP patch features to LLM width.

    Args:
        in_dim: CLIP width C. out_dim: LLM width D. pool: output grid side p (adaptive average pool).
    """

    def __init__(self, *, in_dim: int, out_dim: int, pool: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.num_tokens = pool * pool

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, C, g, g) -> image tokens (B, p*p, D)."""
        x = self.pool(feats).flatten(2).transpose(1, 2)  # (B, p*p, C)
        return self.mlp(x)
