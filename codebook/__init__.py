"""Segmentation codebook: the block tokens, finding blocks in text, and per-scale fusion."""

from .fusion import FUSION_MODES, PROJECTIONS, CodebookFusion, gather_blocks
from .tokens import (
    BlockParse,
    add_codebook_tokens,
    block_text,
    codebook_token_names,
    parse_blocks,
)

__all__ = [
    "FUSION_MODES",
    "PROJECTIONS",
    "BlockParse",
    "CodebookFusion",
    "add_codebook_tokens",
    "block_text",
    "codebook_token_names",
    "gather_blocks",
    "parse_blocks",
]
