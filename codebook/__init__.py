"""Segmentation codebook: the block tokens, finding blocks in text, per-scale fusion, and the
phrase-supervision heads that train the fused embeddings (and the vision patches under each
target) to name their targets."""

from .fusion import FUSION_MODES, CodebookFusion, gather_blocks
from .phrase import PhraseHead, RegionWordHead, block_phrases, phrase_bags
from .tokens import (
    BlockParse,
    add_codebook_tokens,
    add_special_tokens,
    block_text,
    codebook_token_names,
    parse_blocks,
)

__all__ = [
    "FUSION_MODES",
    "BlockParse",
    "CodebookFusion",
    "PhraseHead",
    "RegionWordHead",
    "add_codebook_tokens",
    "add_special_tokens",
    "block_phrases",
    "block_text",
    "codebook_token_names",
    "gather_blocks",
    "parse_blocks",
    "phrase_bags",
]
