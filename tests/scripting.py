"""A scripted LM head for tests: makes an untrained model write a chosen answer, so the
predictor's parsing, mask decoding and bookkeeping can be checked on exact token sequences."""
from __future__ import annotations

import torch

from pixellm.predictor import PixelLMPredictor


class ScriptedHead(torch.nn.Module):
    """Replaces the LM head: emits ``script[n]`` where n counts the generated tokens fed so far
    (a pre-hook on the input embedding counts them; the first call is the prompt), then EOS.
    Works for one row whether tokens are fed one by one or a block at a time."""

    def __init__(self, script, vocab, eos, embedding):
        super().__init__()
        self.script, self.vocab, self.eos, self.fed = script, vocab, eos, -1
        self.out_features = vocab  # so a test can script the same model again
        embedding.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.fed = 0 if self.fed < 0 else self.fed + args[0].shape[-1]

    def forward(self, h):
        tok = self.script[self.fed] if self.fed < len(self.script) else self.eos
        out = torch.full((*h.shape[:-1], self.vocab), -10.0)
        out[..., tok] = 10.0
        return out


def scripted(model, words_and_blocks, *, max_new_tokens=64, duplicate_iou=None, predictor_class=PixelLMPredictor,
             **kw):
    """Predictor whose LLM emits the script: words, ints (the first n block tokens), lists (raw ids).
    An untrained decoder gives look-alike masks, so duplicate suppression is off unless asked for."""
    tok = model.tokenizer
    ids = []
    for w in words_and_blocks:
        if isinstance(w, int):
            ids.extend(model.codebook_ids[:w])
        elif isinstance(w, list):
            ids.extend(w)
        else:
            ids.extend(tok.convert_tokens_to_ids([w]))
    base = model.base_llm
    base.lm_head = ScriptedHead(ids, base.lm_head.out_features, tok.eos_token_id, base.get_input_embeddings())
    return predictor_class(model, max_new_tokens=max_new_tokens, duplicate_iou=duplicate_iou, **kw)
