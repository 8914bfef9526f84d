"""Phrase reconstruction: an auxiliary loss that makes each fused target embedding name its target.

The pixel decoder can only segment the object a block refers to if the fused target embedding
(:class:`~pixellm.codebook.CodebookFusion`) carries *which* object that is. In PixelLM that
identity reaches the embedding only through the mask loss, and a decoder trained from scratch
first learns to ignore the embedding (it predicts the masks a question's *kind* implies), so
the mask loss pushes little identity into it. This head asks the embedding to predict the
words of the phrase written just before its block (a bag of words, soft cross-entropy over
the vocabulary), so the identity is there from the first steps and the decoder learns to use
it. The head is used in training only; generation and inference never call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PhraseHead", "block_phrases"]


def block_phrases(
    token_ids: Sequence[int], scored: Sequence[bool], starts: Sequence[int], codebook_ids: Sequence[int]
) -> list[list[int]]:
    """The phrase token ids of each block: the scored tokens right before it.

    Walking back from a block's first token, the phrase is the run of *scored* (answer) tokens
    that are not codebook tokens: it stops at the previous block, at the prompt or question
    (unscored), or at the sequence start. So "red circle" + block + ", blue square" + block
    gives ``[red, circle]`` and ``[",", blue, square]``, and the block of a later turn of a
    conversation stops at its own question.

    Args:
        token_ids: (T,) ids of one sequence (list or 1-D tensor).
        scored: (T,) True where the token is an answer token (``labels != -100``).
        starts: start positions of the sequence's blocks (``parse_blocks(...).starts``).
        codebook_ids: the block's ids; never part of a phrase.

    Returns:
        one list of token ids per block, in phrase order; empty when nothing scored precedes
        a block.
    """
    ids = token_ids.tolist() if hasattr(token_ids, "tolist") else list(token_ids)
    ok = scored.tolist() if hasattr(scored, "tolist") else list(scored)
    if len(ok) != len(ids):
        raise ValueError(f"scored has {len(ok)} entries for {len(ids)} tokens")
    codebook = set(int(i) for i in codebook_ids)
    out = []
    for s in starts:
        p = int(s) - 1
        while p >= 0 and ok[p] and ids[p] not in codebook:
            p -= 1
        out.append(ids[p + 1:int(s)])
    return out


class PhraseHead(nn.Module):
    """Linear read-out of the bag of phrase words from the fused target embeddings.

    Args:
        in_dim: L * C, the concatenated per-scale target embeddings.
        vocab_size: V, the LLM vocabulary (phrase token ids are < V).
    """

    def __init__(self, *, in_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, targets: Tensor) -> Tensor:
        """targets (K, L, C) fused embeddings -> (K, V) word logits."""
        return self.proj(targets.flatten(1))

    def loss(self, targets: Tensor, phrases: Sequence[Sequence[int]]) -> Tensor:
        """Soft cross-entropy between the predicted word distribution and each phrase's bag.

        Args:
            targets: (K, L, C) fused target embeddings (with graph).
            phrases: K lists of token ids (:func:`block_phrases`); repeats count once.

        Returns:
            float32 scalar: ``mean_k -sum_v q_k[v] log softmax(z_k)[v]`` with ``q_k`` uniform
            over the distinct words of phrase k, over the blocks with a non-empty phrase; 0
            (attached to the graph) when there are none.
        """
        if targets.shape[0] != len(phrases):
            raise ValueError(f"{targets.shape[0]} target embeddings but {len(phrases)} phrases")
        keep = [k for k, p in enumerate(phrases) if p]
        logits = self(targets).float()  # (K, V)
        if not keep:
            return logits.sum() * 0.0
        bag = torch.zeros(len(keep), logits.shape[1], device=logits.device)  # (K', V)
        for row, k in enumerate(keep):
            bag[row, sorted(set(int(t) for t in phrases[k]))] = 1.0
        bag = bag / bag.sum(1, keepdim=True)
        return -(bag * F.log_softmax(logits[keep], dim=-1)).sum(1).mean()
