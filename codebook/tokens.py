"""Segmentation-codebook tokens: their names, adding them to a tokenizer, and finding blocks.

A *block* is the ``L * N`` codebook tokens written, consecutively and in order, after each
target phrase of an answer. Block order is scale-major: the ``N`` tokens of scale 0 (the
deepest CLIP layer) first, then the ``N`` tokens of scale 1, and so on. The number of complete
blocks in an answer is its number of targets (zero blocks = zero targets).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "BlockParse",
    "add_codebook_tokens",
    "add_special_tokens",
    "block_text",
    "codebook_token_names",
    "parse_blocks",
]


def codebook_token_names(*, num_scales: int, tokens_per_scale: int) -> list[str]:
    """Names of the codebook tokens in block order.

    Args:
        num_scales: L, the number of feature scales (scale 0 = deepest CLIP layer).
        tokens_per_scale: N, the codebook tokens per scale.

    Returns:
        ``L * N`` names, scale-major: ``["<seg_s0_t0>", ..., "<seg_s0_t{N-1}>", "<seg_s1_t0>", ...]``.
    """
    if num_scales < 1 or tokens_per_scale < 1:
        raise ValueError(
            f"num_scales and tokens_per_scale must be >= 1, got {num_scales}, {tokens_per_scale}"
        )
    return [f"<seg_s{s}_t{t}>" for s in range(num_scales) for t in range(tokens_per_scale)]


def block_text(*, num_scales: int, tokens_per_scale: int) -> str:
    """The text of one block, to write after a target phrase.

    The names are joined with no separator. They are special tokens, so any tokenizer splits
    them without help, and no space sits between them: a SentencePiece tokenizer (LLaMA) would
    otherwise emit a ``"▁"`` token between two codebook tokens, and the block would no longer
    be consecutive for :func:`parse_blocks`.

    Args:
        num_scales: L, the number of feature scales.
        tokens_per_scale: N, the codebook tokens per scale.

    Returns:
        e.g. ``"<seg_s0_t0><seg_s0_t1><seg_s1_t0><seg_s1_t1>"`` for L = N = 2.
    """
    return "".join(codebook_token_names(num_scales=num_scales, tokens_per_scale=tokens_per_scale))


def add_codebook_tokens(tokenizer, *, num_scales: int, tokens_per_scale: int) -> list[int]:
    """Add the codebook tokens to a Hugging Face tokenizer as additional special tokens.

    Idempotent: tokens already in the vocabulary are not added again, and the special tokens
    the tokenizer already had are kept. The caller resizes the LLM's embeddings afterwards
    (``model.resize_token_embeddings(len(tokenizer))``).

    Args:
        tokenizer: a ``transformers`` tokenizer (e.g. ``PreTrainedTokenizerFast``); modified
            in place.
        num_scales: L, the number of feature scales.
        tokens_per_scale: N, the codebook tokens per scale.

    Returns:
        The ``L * N`` token ids, in block order.
    """
    names = codebook_token_names(num_scales=num_scales, tokens_per_scale=tokens_per_scale)
    return add_special_tokens(tokenizer, names)


def add_special_tokens(tokenizer, names: Sequence[str]) -> list[int]:
    """Add ``names`` to a Hugging Face tokenizer as additional special tokens (idempotent,
    keeping its other special tokens); any block token set, e.g. LISA's ``[SEG]``.

    Returns:
        their ids, in the order of ``names``.
    Raises:
        RuntimeError: the tokens did not get distinct, known ids.
    """
    names = list(names)
    missing = [name for name in names if name not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, **{_replace_keyword(tokenizer): False}
        )
    ids = tokenizer.convert_tokens_to_ids(names)
    if len(set(ids)) != len(ids) or tokenizer.unk_token_id in ids:
        raise RuntimeError(f"block tokens did not get distinct ids: {dict(zip(names, ids, strict=True))}")
    return list(ids)


def _replace_keyword(tokenizer) -> str:
    """The keyword that keeps existing extra special tokens (renamed in transformers 5)."""
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    if "replace_extra_special_tokens" in params:
        return "replace_extra_special_tokens"
    return "replace_additional_special_tokens"


@dataclass
class BlockParse:
    """Where the complete codebook blocks of a token sequence start.

    Attributes:
        starts: position of the first token of each complete block, increasing. Its length is
            the number of targets.
        malformed: one human-readable line per broken run of codebook tokens (truncated,
            out of order, stray); these runs give no target.
    """

    starts: list[int] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)

    @property
    def num_targets(self) -> int:
        """Number of complete blocks."""
        return len(self.starts)


def parse_blocks(token_ids: Sequence[int], codebook_ids: Sequence[int]) -> BlockParse:
    """Find the complete codebook blocks of a token sequence.

    A complete block is exactly ``codebook_ids`` (all ``L * N`` ids, consecutive, in order).
    Any other run of codebook ids is reported in ``malformed`` and skipped; the complete blocks
    around it are kept. Never raises for any ``token_ids``.

    Args:
        token_ids: the token ids (a list, tuple or 1-D tensor of ints), e.g. a generated answer.
        codebook_ids: the block's ids in order, as returned by :func:`add_codebook_tokens`.

    Returns:
        A :class:`BlockParse`; ``starts`` index into ``token_ids``.

    Raises:
        ValueError: if ``codebook_ids`` is empty or has repeated ids.
    """
    block = [int(i) for i in codebook_ids]
    if not block or len(set(block)) != len(block):
        raise ValueError(f"codebook_ids must be non-empty and distinct, got {block}")
    tokens = token_ids.tolist() if hasattr(token_ids, "tolist") else [int(t) for t in token_ids]
    codebook = set(block)
    pos = 0
    result = BlockParse()
    while pos < len(tokens):
        if tokens[pos] not in codebook:
            pos += 1
        elif tokens[pos] == block[0]:
            pos = _take_block(tokens, pos, block, result)
        else:
            pos = _take_stray(tokens, pos, block, codebook, result)
    return result


def _take_block(tokens: list[int], pos: int, block: list[int], result: BlockParse) -> int:
    """Consume the in-order prefix of a block starting at ``pos``; return the next position."""
    size, n = len(block), 0
    while n < size and pos + n < len(tokens) and tokens[pos + n] == block[n]:
        n += 1
    if n == size:
        result.starts.append(pos)
    else:
        where = "at end of sequence" if pos + n == len(tokens) else f"interrupted at {pos + n}"
        result.malformed.append(
            f"truncated block at position {pos} ({n} of {size} tokens, {where})"
        )
    return pos + n


def _take_stray(
    tokens: list[int], pos: int, block: list[int], codebook: set[int], result: BlockParse
) -> int:
    """Consume codebook ids up to the next block start or text token; report them."""
    end = pos + 1
    while end < len(tokens) and tokens[end] in codebook and tokens[end] != block[0]:
        end += 1
    result.malformed.append(
        f"out-of-order codebook tokens at positions {pos}-{end - 1} ({end - pos} tokens, "
        f"not starting with the block's first token; a block has {len(block)})"
    )
    return end
