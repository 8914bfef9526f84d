"""Greedy decoding with a KV cache, one mask per complete codebook block.

The published PixelLM code turned the KV cache off and re-ran the whole sequence (and CLIP)
at every step; here CLIP runs once and each step feeds one token.
"""
from __future__ import annotations

import torch

from .codebook import gather_blocks, parse_blocks
from .model import Generation, PixelLM


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
def greedy_generate(model: PixelLM, pixels: torch.Tensor, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, *, max_new_tokens: int, eos_id: int, pad_id: int,
                    constrain_blocks: bool = True) -> Generation:
    """Greedy decoding for a left-padded batch; CLIP and the prompt run once.

    Args:
        pixels: (B, 3, S, S). input_ids / attention_mask: (B, T) LEFT-padded prompts.
        max_new_tokens: generation budget; a block cut by it is reported as malformed.
        constrain_blocks: once a block starts, force its remaining tokens in order.
    Returns:
        :class:`pixellm.model.Generation`.
    """
    feats, img_tok = model.encode_images(pixels)
    hidden, past = model.run_llm(model.embed(input_ids, img_tok), attention_mask, use_cache=True)
    head, embed = model.base_llm.lm_head, model.base_llm.get_input_embeddings()
    logits = head(hidden[:, -1]).float()  # (B, V)
    b = input_ids.shape[0]
    pos = attention_mask.long().sum(1)  # next position of each row (B,)
    prev = input_ids[:, -1]
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    toks, probs, hid = [], [], []
    for _ in range(max_new_tokens):
        if constrain_blocks:
            logits = _block_constraint(logits, prev, model._codebook)
        p = logits.softmax(-1)
        tok = torch.where(done, torch.full_like(prev, pad_id), p.argmax(-1))
        toks.append(tok)
        probs.append(p.gather(1, tok[:, None])[:, 0])
        done |= tok == eos_id
        if bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, (~done | (tok == eos_id)).long()[:, None]], 1)
        h, past = model.run_llm(embed(tok)[:, None], attention_mask, position_ids=pos[:, None],
                                past_key_values=past, use_cache=True)
        hid.append(h[:, 0])  # hidden state of the token just fed
        logits, prev, pos = head(h[:, 0]).float(), tok, pos + 1
    return _collect(model, feats, toks, probs, hid, eos_id)


def _collect(model: PixelLM, feats, toks, probs, hid, eos_id: int) -> Generation:
    """Cut at EOS, parse blocks, gather their hidden states and decode all masks in one pass."""
    b = feats[0].shape[0]
    tok_mat = torch.stack(toks, 1) if toks else torch.zeros(b, 0, dtype=torch.long)
    prob_mat = torch.stack(probs, 1) if probs else torch.zeros(b, 0)
    d = model.base_llm.config.hidden_size
    h_mat = torch.stack(hid, 1) if hid else feats[0].new_zeros(b, 0, d)
    if h_mat.shape[1] < tok_mat.shape[1]:  # the final (EOS) token was never fed
        h_mat = torch.cat([h_mat, h_mat.new_zeros(b, tok_mat.shape[1] - h_mat.shape[1], d)], 1)
    tokens, token_probs, starts, malformed = [], [], [], []
    for row, prow in zip(tok_mat.tolist(), prob_mat.tolist()):
        n = row.index(eos_id) if eos_id in row else len(row)
        tokens.append(row[:n])
        token_probs.append(prow[:n])
        parse = parse_blocks(row[:n], model.codebook_ids)
        starts.append(parse.starts)
        malformed.append(parse.malformed)
    block_hidden, batch_index = gather_blocks(h_mat, starts, len(model.codebook_ids))
    logits = model.decode_masks(feats, block_hidden, batch_index)  # (K, h, w)
    per_image = [logits[batch_index == i] for i in range(b)]
    return Generation(tokens, token_probs, per_image, starts, malformed)
