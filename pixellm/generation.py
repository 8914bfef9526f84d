"""Greedy decoding with a KV cache, one mask per complete codebook block.

The published PixelLM code turned the KV cache off and re-ran the whole sequence (and CLIP)
at every step; here CLIP runs once, each step feeds one token, and a codebook block (whose
tokens are determined once it starts) is fed in one step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .codebook import gather_blocks, parse_blocks

if TYPE_CHECKING:  # for annotations only: segmenter imports this module
    from .segmenter import LLMSegmenter


@dataclass
class Generation:
    """Greedy decoding result for a batch.

    tokens: per image, generated ids (without the prompt, up to and excluding EOS).
    token_probs: per image, the probability of each generated token.
    mask_logits: per image, (K_b, h, w) decoder logits, one per complete block in order.
    block_starts: per image, position in ``tokens`` of each complete block.
    malformed: per image, descriptions of dropped broken/truncated blocks.
    iou: per image, (K_b,) the decoder's predicted IoU of each mask, in [0, 1]; None for a
        model without an IoU head.
    """

    tokens: list[list[int]]
    token_probs: list[list[float]]
    mask_logits: list[torch.Tensor]
    block_starts: list[list[int]]
    malformed: list[list[str]] = field(default_factory=list)
    iou: list[torch.Tensor] | None = None


def _block_constraint(logits: torch.Tensor, prev: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Inside a block force its next token; outside, only the block's first token may start one.

    logits (B, V); prev (B,) last token; codebook (L*N,) ids in block order.
    """
    logits = logits.clone()
    pos = (prev[:, None] == codebook[None]).float().argmax(1)  # index in block (0 if not a block id)
    inside = (prev[:, None] == codebook[None]).any(1) & (pos < len(codebook) - 1)
    logits[:, codebook[1:]] = float("-inf")  # no block starts mid-way
    if inside.any():
        forced = codebook[(pos + 1).clamp(max=len(codebook) - 1)]
        rows = inside.nonzero(as_tuple=True)[0]
        logits[rows] = float("-inf")
        logits[rows, forced[rows]] = 0.0
    return logits


@torch.no_grad()
def greedy_generate(model: LLMSegmenter, pixels: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, *, max_new_tokens: int, eos_id: int, pad_id: int,
                    constrain_blocks: bool = True, chunk_blocks: bool = True) -> Generation:
    """Greedy decoding for a left-padded batch; CLIP and the prompt run once.

    Args:
        pixels: (B, 3, S, S). input_ids / attention_mask: (B, T) LEFT-padded prompts.
        max_new_tokens: generation budget per row; a block cut by it is reported as malformed.
        constrain_blocks: once a block starts, force its remaining tokens in order.
        chunk_blocks: with the constraint, a row that starts a block feeds all L*N block
            tokens in ONE forward step (they are determined), instead of L*N steps; other rows
            of that step feed their one token plus masked padding. Same tokens, fewer steps.
    Returns:
        :class:`Generation`.
    """
    feats, img_tok = model.encode_images(pixels)
    hidden, past = model.run_llm(model.embed(input_ids, img_tok), attention_mask, use_cache=True)
    head, embed = model.base_llm.lm_head, model.base_llm.get_input_embeddings()
    cb, b, dev = model._codebook, input_ids.shape[0], input_ids.device
    logits = head(hidden[:, -1]).float()  # (B, V)
    pos = attention_mask.long().sum(1)  # next position of each row (B,)
    prev = input_ids[:, -1]
    done = torch.full((b,), max_new_tokens <= 0, dtype=torch.bool, device=dev)
    chunk = constrain_blocks and chunk_blocks
    toks, probs, hid = [[] for _ in range(b)], [[] for _ in range(b)], [[] for _ in range(b)]
    while not bool(done.all()):
        if constrain_blocks:
            logits = _block_constraint(logits, prev, cb)
        p = logits.softmax(-1)
        tok = torch.where(done, torch.full_like(prev, pad_id), p.argmax(-1))
        live = ~done  # rows that emit a token this step
        for r in live.nonzero(as_tuple=True)[0].tolist():
            toks[r].append(int(tok[r]))
            probs[r].append(float(p[r, tok[r]]))
        n = torch.tensor([len(t) for t in toks], device=dev)
        block = live & (tok == cb[0]) & (n - 1 + len(cb) <= max_new_tokens) & chunk
        done = done | (tok == eos_id) | (n >= max_new_tokens)
        if bool((~live | (tok == eos_id)).all()):
            break  # nothing left whose hidden state is needed
        feed, mask = _step_inputs(tok, live, block, cb, pad_id)
        for r in block.nonzero(as_tuple=True)[0].tolist():  # the forced rest of the block
            toks[r].extend(cb[1:].tolist())
            probs[r].extend([1.0] * (len(cb) - 1))
        done = done | (block & (n - 1 + len(cb) >= max_new_tokens))
        attention_mask = torch.cat([attention_mask, mask], 1)
        steps = torch.arange(feed.shape[1], device=dev)
        h, past = model.run_llm(embed(feed), attention_mask, position_ids=pos[:, None] + steps,
                                past_key_values=past, use_cache=True)
        fed = mask.sum(1)  # real tokens fed per row
        for r in live.nonzero(as_tuple=True)[0].tolist():
            hid[r].extend(h[r, : int(fed[r])])
        last = (fed - 1).clamp(min=0)
        logits = head(h[torch.arange(b, device=dev), last]).float()
        pos, prev = pos + fed, torch.where(block, cb[-1], tok)
    return _collect(model, feats, toks, probs, hid, eos_id)


def _step_inputs(tok: torch.Tensor, live: torch.Tensor, block: torch.Tensor, cb: torch.Tensor,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids (B, W) and attention (B, W) to feed: a whole block for ``block`` rows, else 1 token."""
    width = len(cb) if bool(block.any()) else 1
    feed = torch.full((tok.shape[0], width), pad_id, dtype=torch.long, device=tok.device)
    mask = torch.zeros_like(feed)
    feed[:, 0], mask[:, 0] = tok, live.long()
    if width > 1:
        feed[block], mask[block] = cb, 1
    return feed, mask


def _collect(model: LLMSegmenter, feats, toks, probs, hid, eos_id: int) -> Generation:
    """Cut at EOS, parse blocks, gather their hidden states and decode all masks in one pass."""
    b = feats[0].shape[0]
    d = model.base_llm.config.hidden_size
    tokens, token_probs, starts, malformed = [], [], [], []
    for row, prow in zip(toks, probs):
        n = row.index(eos_id) if eos_id in row else len(row)
        tokens.append(row[:n])
        token_probs.append(prow[:n])
        parse = parse_blocks(row[:n], model.codebook_ids)
        starts.append(parse.starts)
        malformed.append(parse.malformed)
    t = max([len(r) for r in tokens] + [1])
    h_mat = feats[0].new_zeros(b, t, d)  # hidden state of each generated token (0 if never fed)
    for r, hs in enumerate(hid):
        k = min(len(hs), t)
        if k:
            h_mat[r, :k] = torch.stack(hs[:k]).to(h_mat.dtype)
    block_hidden, batch_index = gather_blocks(h_mat, starts, len(model.codebook_ids))
    dec = model.decode_masks(feats, block_hidden, batch_index)  # logits (K, h, w), iou (K,)
    rows = [batch_index == i for i in range(b)]
    iou = None if dec.iou is None else [dec.iou[r] for r in rows]
    return Generation(tokens, token_probs, [dec.logits[r] for r in rows], starts, malformed, iou)
